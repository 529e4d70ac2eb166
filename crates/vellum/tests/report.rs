//! Compliance reports and the accounting of disclosures end to end with the real binary:
//! scores checked against a hand-computed fixture, the signature checked offline by
//! `vellum verify-report` (and an edited report refused), and a disclosure list for one patient.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::Server;
use serde_json::{Value, json};

/// Four PHI events and one other. Hand computation for HIPAA (scope: PHI or healthcareContext):
/// in scope a, b, c, d = 4; compliant: a and d = 2 → score 50.0. Gaps: b lacks
/// sessionContext.ipAddress (1 = 25%), c lacks targetResourceId (1 = 25%). Violations: b is PHI
/// without patientId (phi-access-without-patient 1); c is break-glass without justification
/// (emergency-access-without-justification 1).
fn fixture() -> Vec<Value> {
    vec![
        json!({"action": "fhir.patient.read", "status": "success", "principalId": "dr-1",
               "targetResourceType": "Patient", "targetResourceId": "p-1", "dataClassification": "PHI",
               "healthcareContext": {"patientId": "p-1", "clinicalJustification": "follow-up"},
               "sessionContext": {"ipAddress": "10.0.0.1"}}),
        json!({"action": "fhir.observation.read", "status": "success", "principalId": "dr-1",
               "targetResourceType": "Observation", "targetResourceId": "o-1", "dataClassification": "PHI"}),
        json!({"action": "fhir.patient.read", "status": "success", "principalId": "er-2",
               "targetResourceType": "Patient", "dataClassification": "PHI",
               "healthcareContext": {"patientId": "p-1", "emergencyAccess": true},
               "sessionContext": {"ipAddress": "10.0.0.2"}}),
        json!({"action": "fhir.patient.update", "status": "success", "principalId": "dr-3",
               "targetResourceType": "Patient", "targetResourceId": "p-2", "dataClassification": "PHI",
               "healthcareContext": {"patientId": "p-2"}, "sessionContext": {"ipAddress": "10.0.0.3"}}),
        json!({"action": "app.start", "status": "success", "principalId": "svc"}),
    ]
}

#[test]
fn hipaa_report_matches_the_fixture_and_its_signature_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    common::without_detection(tmp.path());
    let server = Server::start(&data);
    let rt = common::runtime();
    let acks = rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &server.admin_key(),
        fixture(),
    ));
    let report_file = tmp.path().join("hipaa.json");
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["report", "--data-dir"])
        .arg(&data)
        .args(["--url", &server.url(), "--type", "HIPAA"])
        .args([
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "-o",
        ])
        .arg(&report_file);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(report["type"], "HIPAA");
    assert_eq!(report["inScopeEvents"], 4);
    assert_eq!(report["compliantEvents"], 2);
    assert_eq!(report["complianceScore"], 50.0);
    let gap = |field: &str| {
        report["gaps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["field"] == field)
            .unwrap()
            .clone()
    };
    assert_eq!(gap("/sessionContext/ipAddress")["missing"], 1);
    assert_eq!(gap("/sessionContext/ipAddress")["percent"], 25.0);
    assert_eq!(gap("/targetResourceId")["missing"], 1);
    assert_eq!(gap("/principalId")["missing"], 0);
    let violations = report["violations"].as_array().unwrap();
    let count = |rule: &str| {
        violations
            .iter()
            .find(|v| v["rule"] == rule)
            .map_or(0, |v| v["count"].as_u64().unwrap())
    };
    assert_eq!(count("phi-access-without-patient"), 1);
    assert_eq!(count("emergency-access-without-justification"), 1);
    assert_eq!(
        violations
            .iter()
            .find(|v| v["rule"] == "phi-access-without-patient")
            .unwrap()["examples"][0],
        acks[1].id.as_str()
    );
    assert!(report["integrity"]["ok"].as_bool().unwrap());
    assert!(report["integrity"]["checkpoints"][0]["note"].is_string());
    assert!(!report["recommendations"].as_array().unwrap().is_empty());

    // Offline signature check (key from the data dir), then an edited copy.
    let verify = |file: &std::path::Path, extra: &[&str]| {
        let mut cmd = common::vellum(tmp.path());
        cmd.args(["verify-report", "--data-dir"])
            .arg(&data)
            .arg(file)
            .args(extra);
        common::run(cmd, common::CLI_LIMIT)
    };
    let out = verify(&report_file, &[]);
    assert!(out.status.success(), "{}", common::text(&out.stdout));
    assert!(common::text(&out.stdout).contains("OK: HIPAA report"));
    let mut edited = report.clone();
    edited["complianceScore"] = json!(100.0);
    let edited_file = tmp.path().join("edited.json");
    std::fs::write(&edited_file, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
    let out = verify(&edited_file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stdout).contains("altered"));
    let out = verify(
        &report_file,
        &[
            "--public-key",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ],
    );
    assert_eq!(out.status.code(), Some(1));

    // Accounting of disclosures for p-1: events a and c, oldest first, with who/what/why.
    let body: Value = rt.block_on(async {
        common::client()
            .get(format!("{}/v1/reports/disclosures", server.url()))
            .query(&[("patientId", "p-1")])
            .bearer_auth(server.admin_key())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(body["count"], 2, "{body}");
    let first = &body["disclosures"][0];
    assert_eq!(first["eventId"], acks[0].id.as_str());
    assert_eq!(first["who"], "dr-1");
    assert_eq!(first["what"], "fhir.patient.read Patient/p-1");
    assert_eq!(first["why"], "follow-up");
    assert_eq!(body["disclosures"][1]["emergencyAccess"], true);

    // The same report and the disclosures as PDF, read back as text.
    let pdf_file = tmp.path().join("hipaa.pdf");
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["report", "--data-dir"])
        .arg(&data)
        .args(["--url", &server.url(), "--type", "HIPAA", "--format", "pdf"])
        .args([
            "--from",
            "2000-01-01T00:00:00Z",
            "--to",
            "2100-01-01T00:00:00Z",
            "-o",
        ])
        .arg(&pdf_file);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let disclosures_pdf = rt.block_on(async {
        common::client()
            .get(format!("{}/v1/reports/disclosures", server.url()))
            .query(&[("patientId", "p-1"), ("format", "pdf")])
            .bearer_auth(server.admin_key())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
    });
    let disclosures_file = tmp.path().join("disclosures.pdf");
    std::fs::write(&disclosures_file, &disclosures_pdf).unwrap();
    let has_pdftotext = std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_ok();
    if !has_pdftotext && std::env::var_os("VELLUM_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
        panic!("pdftotext (poppler-utils) is required under VELLUM_REQUIRE_SERVICES=1");
    }
    if has_pdftotext {
        let text = |path: &std::path::Path| {
            let out = std::process::Command::new("pdftotext")
                .args(["-layout"])
                .arg(path)
                .arg("-")
                .output()
                .unwrap();
            assert!(out.status.success());
            common::text(&out.stdout)
        };
        let report_text = text(&pdf_file);
        assert!(
            report_text.contains("HIPAA compliance report"),
            "{report_text}"
        );
        assert!(
            report_text.contains("compliance score 50%"),
            "{report_text}"
        );
        assert!(
            report_text.contains("phi-access-without-patient"),
            "{report_text}"
        );
        assert!(report_text.contains("Signature") && report_text.contains("Ed25519"));
        let d_text = text(&disclosures_file);
        assert!(
            d_text.contains("Accounting of disclosures: patient p-1"),
            "{d_text}"
        );
        assert!(
            d_text.contains("dr-1") && d_text.contains("follow-up"),
            "{d_text}"
        );
        assert!(d_text.contains(&acks[2].id), "{d_text}");
    } else {
        eprintln!("SKIP: pdftotext missing; PDF text not checked");
    }

    // Bad input: unknown type, reversed period, missing patient.
    let status = |req: reqwest::RequestBuilder| {
        rt.block_on(async { req.send().await.unwrap().status().as_u16() })
    };
    let c = common::client();
    let key = server.admin_key();
    assert_eq!(
        status(c.post(format!("{}/v1/reports", server.url())).bearer_auth(&key).json(
            &json!({"type": "ISO", "from": "2000-01-01T00:00:00Z", "to": "2001-01-01T00:00:00Z"})
        )),
        400
    );
    assert_eq!(
        status(c.post(format!("{}/v1/reports", server.url())).bearer_auth(&key).json(
            &json!({"type": "SOX", "from": "2001-01-01T00:00:00Z", "to": "2000-01-01T00:00:00Z"})
        )),
        400
    );
    assert_eq!(
        status(
            c.get(format!("{}/v1/reports/disclosures", server.url()))
                .bearer_auth(&key)
        ),
        400
    );
    server.terminate();
}

/// `GET /v1/stats` over a fixture with known counts: totals, breakdowns, time buckets, the three
/// special counters, a filter, and bad parameters.
#[test]
fn stats_count_the_fixture() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    common::without_detection(tmp.path());
    let server = Server::start(&data);
    let rt = common::runtime();
    let mut events = Vec::new();
    for n in 0..12u64 {
        let day = if n < 8 { "2026-03-01" } else { "2026-03-02" };
        let mut e = json!({
            "action": if n.is_multiple_of(4) { "auth.login" } else { "fhir.patient.read" },
            "status": if n.is_multiple_of(4) && n < 8 { "failure" } else { "success" },
            "principalId": format!("dr-{}", n % 3),
            "organizationId": "org-stats",
            "timestamp": format!("{day}T{:02}:15:00Z", n % 5),
            "dataClassification": if n.is_multiple_of(2) { "PHI" } else { "INTERNAL" },
        });
        if n == 5 {
            e["healthcareContext"] =
                json!({"patientId": "p-9", "emergencyAccess": true, "clinicalJustification": "ER"});
        }
        events.push(e);
    }
    rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &server.admin_key(),
        events,
    ));
    let get = |query: &[(&str, &str)]| -> (u16, Value) {
        rt.block_on(async {
            let r = common::client()
                .get(format!("{}/v1/stats", server.url()))
                .query(query)
                .bearer_auth(server.admin_key())
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    let (status, s) = get(&[("organizationId", "org-stats"), ("bucket", "day")]);
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["total"], 12);
    // auth.login at n = 0, 4, 8 → 3; failures among them at n = 0, 4 → 2 security violations.
    assert_eq!(
        s["byAction"][0],
        json!({"action": "fhir.patient.read", "count": 9})
    );
    assert_eq!(
        s["byAction"][1],
        json!({"action": "auth.login", "count": 3})
    );
    assert_eq!(s["securityViolations"], 2);
    assert_eq!(s["phiAccesses"], 6);
    assert_eq!(s["emergencyAccesses"], 1);
    assert_eq!(s["byStatus"][0], json!({"status": "success", "count": 10}));
    assert_eq!(s["byPrincipal"].as_array().unwrap().len(), 3);
    assert_eq!(
        s["byTime"],
        json!([{"start": "2026-03-01T00:00:00.000000Z", "count": 8}, {"start": "2026-03-02T00:00:00.000000Z", "count": 4}])
    );
    let (_, hourly) = get(&[
        ("organizationId", "org-stats"),
        ("from", "2026-03-02T00:00:00Z"),
    ]);
    assert_eq!(hourly["total"], 4);
    assert_eq!(hourly["bucket"], "hour");
    assert_eq!(hourly["byTime"].as_array().unwrap().len(), 4);
    let (_, filtered) = get(&[("organizationId", "org-stats"), ("action", "auth.*")]);
    assert_eq!(filtered["total"], 3);
    for bad in [
        ("bucket", "week"),
        ("top", "0"),
        ("limit", "5"),
        ("status", "done"),
    ] {
        let (status, body) = get(&[bad]);
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"]["details"][0]["path"], bad.0);
    }
    server.terminate();
}
