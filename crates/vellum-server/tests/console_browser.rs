//! The web console in a real browser (issue 9): headless Chromium driven by Playwright
//! (`tests/console-e2e/console.e2e.mjs`) against a seeded server on 127.0.0.1. Flows: sign in,
//! a verification run from the dashboard, search, an event verified live, an event whose text
//! holds `<script>` shown as text with no dialog, a PDF report download, the admin pages, a
//! break-glass alert acknowledged from the alerts page, and an organization-bound key that does
//! not see the other organization. No CSP violation may
//! be reported by the browser on any page.
//!
//! Needs `node`, `/usr/bin/chromium` and `npm ci` in `tests/console-e2e` (`.ci/run` installs
//! them). Without them the test says so and passes, unless `VELLUM_REQUIRE_SERVICES=1` (CI),
//! where a missing prerequisite fails it. With `VELLUM_CONSOLE_SCREENSHOTS=1` the script saves
//! a screenshot of each page to `docs/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// What is missing to run the browser test, if anything.
fn missing(e2e: &Path, chromium: &Path) -> Option<String> {
    let node = std::process::Command::new("node").arg("--version").output();
    if !node.is_ok_and(|o| o.status.success()) {
        return Some("`node` is not installed".into());
    }
    if !chromium.exists() {
        return Some(format!(
            "{} is not installed (apt-get install chromium)",
            chromium.display()
        ));
    }
    if !e2e
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Some(format!(
            "playwright-core is not installed (npm ci in {})",
            e2e.display()
        ));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let e2e = root.join("tests/console-e2e");
    let chromium = PathBuf::from(
        std::env::var("VELLUM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    if let Some(what) = missing(&e2e, &chromium) {
        if std::env::var("VELLUM_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            panic!("VELLUM_REQUIRE_SERVICES=1 but {what}");
        }
        eprintln!("skipping the console browser test: {what}");
        return;
    }
    let fixture = common::console::Fixture::start().await;
    // Break-glass accesses raise alerts: one to acknowledge in the browser, one left open.
    let mut alerts = Vec::new();
    for (who, org, patient) in [("dr-ana", "org-a", "p-7"), ("dr-ben", "org-b", "p-8")] {
        let trigger = fixture
            .post_event(&serde_json::json!({
                "action": "patient.record.read", "status": "success", "organizationId": org,
                "principalId": who, "dataClassification": "PHI",
                "targetResourceType": "Patient", "targetResourceId": patient,
                "healthcareContext": {"patientId": patient, "emergencyAccess": true},
            }))
            .await;
        let alert = fixture.wait_for_alert("break_glass", &trigger).await;
        alerts.push(alert["id"].as_str().expect("alert id").to_owned());
    }
    let screenshots = root.join("../../docs/console");
    let run = tokio::process::Command::new("node")
        .arg("console.e2e.mjs")
        .current_dir(&e2e)
        .env("VELLUM_BASE_URL", &fixture.base)
        .env("VELLUM_ADMIN_KEY", &fixture.admin)
        .env("VELLUM_ORG_KEY", &fixture.keys["reader-a"].1)
        .env("VELLUM_EVENT_XSS", &fixture.events["xss"])
        .env("VELLUM_ALERT_ID", &alerts[0])
        .env("VELLUM_SCREENSHOT_DIR", &screenshots)
        .env("VELLUM_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser test finishes within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        output.status.success(),
        "the browser flows failed:\n{stdout}\n{stderr}"
    );
    for flow in [
        "a verification run from the dashboard passed",
        "the event shows a verified badge",
        "no dialog fired (",
        "the report download is a PDF",
        "an alert was acknowledged from the alerts page",
        "the org-bound key does not see org-b's event",
        "the org-bound key does not see org-b's alert",
        "no CSP violation on any page",
    ] {
        assert!(stdout.contains(flow), "flow not reached: {flow}\n{stdout}");
    }
    fixture.stop().await;
}
