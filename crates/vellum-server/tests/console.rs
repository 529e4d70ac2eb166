//! The web console over HTTP (issue 9): sign-in and sessions, CSRF, role gating, organization
//! scoping, escaping, downloads, and the audit trail of console reads. A real server on
//! 127.0.0.1; the client keeps cookies like a browser and does not follow redirects, so each
//! answer is checked as sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::console::{Fixture, SCRIPT};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use std::time::Duration;

struct Browser {
    client: reqwest::Client,
    base: String,
}

impl Browser {
    fn new(base: &str) -> Self {
        Self {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            base: base.to_owned(),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, HeaderMap, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        (
            r.status(),
            r.headers().clone(),
            r.text().await.expect("body"),
        )
    }

    async fn get_bytes(&self, path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        (
            r.status(),
            r.headers().clone(),
            r.bytes().await.expect("body").to_vec(),
        )
    }

    /// POSTs a form; `origin` is sent as the `Origin` header (a browser always sends one).
    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let mut request = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.expect("POST");
        (
            r.status(),
            r.headers().clone(),
            r.bytes().await.expect("body").to_vec(),
        )
    }

    async fn post_same_origin(
        &self,
        path: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Vec<u8>) {
        let origin = self.base.clone();
        self.post(path, form, Some(&origin)).await
    }

    /// Signs in with `key`; the answer to the POST.
    async fn sign_in(&self, key: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
        let (status, _, page) = self.get("/console/signin").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let token = csrf(&page);
        self.post_same_origin("/console/signin", &[("csrf", &token), ("apiKey", key)])
            .await
    }

    /// The CSRF token of the page at `path`.
    async fn token(&self, path: &str) -> String {
        let (status, _, page) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        csrf(&page)
    }
}

/// The value of the first `name="csrf"` hidden field.
fn csrf(page: &str) -> String {
    let at = page
        .find(r#"name="csrf" value=""#)
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

fn location(headers: &HeaderMap) -> &str {
    headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn assert_hardened(headers: &HeaderMap, what: &str) {
    let csp = headers
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'")
            && csp.contains("script-src 'self'")
            && csp.contains("frame-ancestors 'none'")
            && !csp.contains("unsafe-inline"),
        "{what}: {csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sessions_and_csrf() {
    let fixture = Fixture::start().await;
    let (reader_id, reader) = fixture.keys["reader"].clone();
    let browser = Browser::new(&fixture.base);

    // Not signed in: the console sends the browser to the sign-in page.
    let (status, headers, _) = browser.get("/").await;
    assert!(status.is_redirection(), "{status}");
    let (status, headers2, _) = browser.get(location(&headers)).await;
    assert!(status.is_redirection());
    assert_eq!(location(&headers2), "/console/signin");
    let (status, headers, page) = browser.get("/console/signin").await;
    assert_eq!(status, StatusCode::OK);
    assert_hardened(&headers, "sign-in page");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(page.contains(r#"<label for="apiKey">"#));

    // A wrong key: refused, no session.
    let (status, _, body) = browser.sign_in("vlm_not-a-key").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&body).contains("not valid"));
    let (status, _, _) = browser.get("/console/dashboard").await;
    assert!(status.is_redirection(), "no session after a failed sign-in");

    // An ingest key may read nothing: it cannot sign in.
    let (status, _, _) = browser.sign_in(&fixture.keys["ingest"].1).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The sign-in form itself is protected: a token from another browser does not count,
    // nor does a POST from another origin.
    let other = Browser::new(&fixture.base);
    let foreign = other.token("/console/signin").await;
    let (status, _, _) = browser
        .post_same_origin(
            "/console/signin",
            &[("csrf", &foreign), ("apiKey", &reader)],
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a token from another browser"
    );
    let own = browser.token("/console/signin").await;
    let (status, _, _) = browser
        .post(
            "/console/signin",
            &[("csrf", &own), ("apiKey", &reader)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a cross-origin sign-in");

    // A good key: a session cookie with the right flags, holding no key material.
    let (status, headers, _) = browser.sign_in(&reader).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location(&headers), "/console/dashboard");
    let cookie = headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().expect("cookie").to_owned())
        .find(|c| c.starts_with("vellum_session="))
        .expect("session cookie");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: no Secure flag");
    let id = cookie["vellum_session=".len()..]
        .split(';')
        .next()
        .expect("id");
    assert_eq!(id.len(), 43, "a 256-bit random id");
    assert!(!cookie.contains(&reader) && !cookie.contains(&reader[4..20]));

    let (status, headers, page) = browser.get("/console/dashboard").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_hardened(&headers, "dashboard");
    assert!(
        page.contains(&reader_id),
        "the page names the signed-in key"
    );
    assert!(!page.contains(&reader), "the key itself never appears");
    assert!(page.contains("<svg"), "charts are inline SVG");
    assert!(
        !page.contains("style=\""),
        "no inline style attributes (CSP)"
    );
    assert!(!page.contains("<script>"), "no inline script (CSP)");

    // Every form needs this session's token, from this origin.
    let token = browser.token("/console/search").await;
    let save = |t: &'static str| [("name", t)];
    let (status, _, _) = browser
        .post_same_origin("/console/search/save", &save("no token"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token");
    let mut form = save("wrong token").to_vec();
    form.push(("csrf", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"));
    let (status, _, _) = browser
        .post_same_origin("/console/search/save", &form)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "wrong token");
    let (status, _, _) = browser
        .post(
            "/console/search/save",
            &[("csrf", &token), ("name", "cross"), ("action", "x")],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "right token, other origin");
    let (status, headers, _) = browser
        .post_same_origin(
            "/console/search/save",
            &[
                ("csrf", &token),
                ("name", "PHI reads"),
                ("dataClassification", "PHI"),
                ("range", "all"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "right token, same origin");
    assert!(location(&headers).contains("dataClassification=PHI"));
    let (_, _, page) = browser.get("/console/search").await;
    assert!(page.contains("PHI reads"), "the saved search is listed");

    // The search page's reads are in the audit log under console endpoints.
    let (status, _, page) = browser
        .get("/console/search?range=all&action=patient.*")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("patient.record.read"), "{page}");
    let endpoints: Vec<String> = fixture
        .reads_by(&reader_id)
        .await
        .iter()
        .filter_map(|e| {
            e["technicalContext"]["endpoint"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    for endpoint in ["/console/dashboard", "/console/search"] {
        assert!(
            endpoints.iter().any(|e| e == endpoint),
            "{endpoint} not audited: {endpoints:?}"
        );
    }

    // Static files: long cache, versioned URL, also under the CSP.
    let css = page
        .split("href=\"")
        .find_map(|s| {
            s.starts_with("/console/static/console.")
                .then(|| s[..s.find('"').expect("end")].to_owned())
        })
        .expect("stylesheet link");
    let (status, headers, _) = browser.get(&css).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["cache-control"]
            .to_str()
            .expect("cc")
            .contains("max-age=31536000")
    );
    assert_hardened(&headers, "stylesheet");

    // Sign-out needs the token too, then ends the session for good.
    let (status, _, _) = browser.post_same_origin("/console/signout", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let token = browser.token("/console/dashboard").await;
    let (status, headers, _) = browser
        .post_same_origin("/console/signout", &[("csrf", &token)])
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers
            .get_all(SET_COOKIE)
            .iter()
            .any(|c| c.to_str().is_ok_and(|c| c.contains("Max-Age=0")))
    );
    let replay = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (status, _, _) = browser.get("/console/dashboard").await;
    assert!(status.is_redirection(), "signed out");
    let r = replay
        .get(format!("{}/console/dashboard", fixture.base))
        .header("cookie", format!("vellum_session={id}"))
        .send()
        .await
        .expect("replay");
    assert!(
        r.status().is_redirection(),
        "the old session id is dead: {}",
        r.status()
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_sessions() {
    let fixture = Fixture::start().await;
    let (id, secret) = fixture.create_key("reader", None).await;
    let browser = Browser::new(&fixture.base);
    assert_eq!(browser.sign_in(&secret).await.0, StatusCode::SEE_OTHER);
    assert_eq!(browser.get("/console/search").await.0, StatusCode::OK);
    let (status, _) = common::call(
        &fixture.client,
        &fixture.base,
        &fixture.admin,
        reqwest::Method::DELETE,
        &format!("/v1/api-keys/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, _) = browser.get("/console/search").await;
    assert!(status.is_redirection(), "{status}");
    assert_eq!(location(&headers), "/console/signin");
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_organizations_and_escaping() {
    let fixture = Fixture::start().await;
    let (reader_id, reader) = fixture.keys["reader"].clone();

    // A reader sees the reading pages, not the auditor's or the admin's.
    let browser = Browser::new(&fixture.base);
    assert_eq!(browser.sign_in(&reader).await.0, StatusCode::SEE_OTHER);
    let (_, _, page) = browser.get("/console/dashboard").await;
    assert!(!page.contains("/console/keys") && !page.contains("/console/reports"));
    for path in [
        "/console/keys",
        "/console/retention",
        "/console/reports",
        "/console/export?format=csv",
    ] {
        let (status, headers, body) = browser.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_hardened(&headers, path);
    }
    let token = browser.token("/console/search").await;
    let (status, _, _) = browser
        .post_same_origin("/console/keys", &[("csrf", &token), ("role", "admin")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader cannot create keys");
    let denied = fixture
        .reads_by(&reader_id)
        .await
        .into_iter()
        .filter(|e| e["status"] == "failure")
        .count();
    assert!(denied >= 5, "refused console reads are audited ({denied})");

    // Escaping: the script in an event is text on the event page and in the search table.
    let xss = &fixture.events["xss"];
    let (status, headers, page) = browser.get(&format!("/console/events/{xss}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_hardened(&headers, "event page");
    assert!(!page.contains(SCRIPT), "raw script in the page");
    assert!(page.contains("&#60;script&#62;alert(1)&#60;/script&#62;"));
    // The badge was computed live and passed.
    assert!(page.contains("badge-verified"), "{page}");
    // Redactions are marked.
    let a = &fixture.events["a"];
    let (_, _, page) = browser.get(&format!("/console/events/{a}")).await;
    assert!(page.contains("tag-redacted"), "the redacted ssn is marked");
    assert!(!page.contains("123-45-6789"));

    // An org-bound key sees its organization only, whatever it asks for.
    let bound = Browser::new(&fixture.base);
    assert_eq!(
        bound.sign_in(&fixture.keys["reader-a"].1).await.0,
        StatusCode::SEE_OTHER
    );
    let (_, _, page) = bound.get("/console/search?range=all").await;
    assert!(page.contains("patient.record.read"), "{page}");
    assert!(!page.contains("billing.invoice.read"), "org-b leaked");
    let (_, _, page) = bound
        .get("/console/search?range=all&organizationId=org-b")
        .await;
    assert!(!page.contains("billing.invoice.read"));
    assert!(page.contains("may only read organization"), "{page}");
    let (status, _, _) = bound
        .get(&format!("/console/events/{}", fixture.events["b"]))
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another organization's event"
    );
    let (_, _, page) = bound.get("/console/dashboard").await;
    assert!(
        !page.contains("clerk-bob"),
        "org-b's principal in the top list"
    );
    // An unbound reader sees both.
    let (_, _, page) = browser.get("/console/search?range=all").await;
    assert!(page.contains("billing.invoice.read") && page.contains("patient.record.read"));

    // The auditor downloads reports and exports.
    let auditor = Browser::new(&fixture.base);
    assert_eq!(
        auditor.sign_in(&fixture.keys["auditor"].1).await.0,
        StatusCode::SEE_OTHER
    );
    let token = auditor.token("/console/reports").await;
    let today = time::OffsetDateTime::now_utc().date().to_string();
    let (status, headers, pdf) = auditor
        .post_same_origin(
            "/console/reports",
            &[
                ("csrf", &token),
                ("type", "HIPAA"),
                ("from", "2020-01-01"),
                ("to", &today),
                ("format", "pdf"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&pdf));
    assert_eq!(headers["content-type"], "application/pdf");
    assert!(pdf.starts_with(b"%PDF-"));
    let (status, headers, csv) = auditor
        .get_bytes("/console/export?format=csv&action=patient.record.read")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/csv")
    );
    let csv = String::from_utf8(csv).expect("utf-8");
    assert!(csv.contains(a.as_str()) && !csv.contains("billing.invoice.read"));

    let (status, headers, body) = auditor
        .get("/console/reports/disclosures?patientId=p-1&from=2020-01-01&format=json")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        headers["content-disposition"]
            .to_str()
            .expect("cd")
            .contains("attachment")
    );
    let disclosures: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(disclosures["count"], 1, "{disclosures}");

    // The admin creates a key and sees its secret once; the key works.
    let admin = Browser::new(&fixture.base);
    assert_eq!(admin.sign_in(&fixture.admin).await.0, StatusCode::SEE_OTHER);
    let token = admin.token("/console/keys").await;
    let (status, _, page) = admin
        .post_same_origin(
            "/console/keys",
            &[
                ("csrf", &token),
                ("role", "reader"),
                ("name", "made in the console"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).expect("utf-8");
    let at = page
        .find(r#"id="created-key">"#)
        .expect("the new key is shown");
    let rest = &page[at + r#"id="created-key">"#.len()..];
    let secret = &rest[..rest.find('<').expect("end")];
    assert!(secret.starts_with("vlm_"));
    let (_, _, listing) = admin.get("/console/keys").await;
    assert!(listing.contains("made in the console") && !listing.contains(secret));
    let (status, _) = common::call(
        &fixture.client,
        &fixture.base,
        secret,
        reqwest::Method::GET,
        "/v1/events?limit=1",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    fixture.stop().await;
}

/// An `href` of the page whose `rel` is `rel`, unescaped.
fn link(page: &str, rel: &str) -> Option<String> {
    let marker = format!(r#"" rel="{rel}""#);
    let end = page.find(&marker)?;
    let start = page[..end].rfind("href=\"")? + "href=\"".len();
    Some(page[start..end].replace("&#38;", "&").replace("&amp;", "&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_pages_forward_and_back() {
    let fixture = Fixture::start().await;
    let events: Vec<serde_json::Value> = (0..60)
        .map(|i| {
            serde_json::json!({
                "action": "bulk.op", "status": "success", "principalId": format!("svc-{i:02}"),
                "targetResourceType": "Thing", "targetResourceId": format!("t-{i}"),
            })
        })
        .collect();
    let (status, body) = common::call(
        &fixture.client,
        &fixture.base,
        &fixture.admin,
        reqwest::Method::POST,
        "/v1/events",
        Some(&serde_json::json!({ "events": events })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let browser = Browser::new(&fixture.base);
    assert_eq!(
        browser.sign_in(&fixture.keys["reader"].1).await.0,
        StatusCode::SEE_OTHER
    );
    let rows = |page: &str| page.matches("<td><a href=\"/console/events/").count();
    let (_, _, first) = browser
        .get("/console/search?range=all&action=bulk.op")
        .await;
    assert_eq!(rows(&first), 50);
    assert!(
        link(&first, "prev").is_none(),
        "no way back from the first page"
    );
    let next = link(&first, "next").expect("a next page");
    let (status, _, second) = browser.get(&next).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(rows(&second), 10);
    assert!(link(&second, "next").is_none(), "the last page");
    assert!(
        second.contains("svc-00") && !first.contains("svc-00"),
        "oldest last"
    );
    let back = link(&second, "prev").expect("a way back");
    let (_, _, again) = browser.get(&back).await;
    assert_eq!(rows(&again), 50);
    assert!(
        again.contains("svc-59") && !again.contains("svc-00"),
        "the first page again"
    );
    assert!(link(&again, "prev").is_none());
    fixture.stop().await;
}

/// The number in the dashboard's open-alerts tile.
fn open_alerts_tile(page: &str) -> String {
    let at = page
        .find(r#"id="open-alerts""#)
        .unwrap_or_else(|| panic!("no open-alerts tile in {page}"));
    let rest = &page[at..];
    assert!(
        rest.contains(r#"href="/console/alerts?status=open""#),
        "the tile links to the open alerts"
    );
    let num = &rest[rest.find(r#"<span class="num">"#).expect("number") + 18..];
    num[..num.find('<').expect("end")].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_acknowledged_and_scoped() {
    let fixture = Fixture::start().await;
    // A break-glass access in org-b, by a principal whose name is markup (it is quoted in the
    // alert's description).
    let trigger = fixture
        .post_event(&serde_json::json!({
            "action": "patient.record.read", "status": "success", "organizationId": "org-b",
            "principalId": "dr-<b>glass</b>", "dataClassification": "PHI",
            "targetResourceType": "Patient", "targetResourceId": "p-7",
            "healthcareContext": {"patientId": "p-7", "emergencyAccess": true},
        }))
        .await;
    let alert = fixture.wait_for_alert("break_glass", &trigger).await;
    let alert_id = alert["id"].as_str().expect("alert id").to_owned();
    assert_eq!(alert["status"], "open");
    let row_marker = format!(r#"id="alert-{alert_id}""#);
    let ack_form = r#"action="/console/alerts/acknowledge""#;

    // A reader: the page lists the alert, linked to its event and to the triggering one, with
    // the description escaped; no acknowledge form; a POST anyway is refused and recorded.
    let (reader_id, reader) = fixture.keys["reader"].clone();
    let browser = Browser::new(&fixture.base);
    assert_eq!(browser.sign_in(&reader).await.0, StatusCode::SEE_OTHER);
    let (_, _, dashboard) = browser.get("/console/dashboard").await;
    assert!(
        dashboard.contains(r#"href="/console/alerts""#),
        "Alerts in the navigation"
    );
    let before: u64 = open_alerts_tile(&dashboard).parse().expect("a count");
    assert!(before >= 1, "the tile counts the open alert");
    let (status, headers, page) = browser.get("/console/alerts").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_hardened(&headers, "alerts page");
    assert!(page.contains(&row_marker), "{page}");
    assert!(page.contains(&format!(r#"href="/console/events/{alert_id}""#)));
    assert!(page.contains(&format!(r#"href="/console/events/{trigger}""#)));
    assert!(page.contains("break_glass") && page.contains("org-b"));
    assert!(!page.contains("<b>glass</b>"), "raw markup in the page");
    assert!(page.contains("dr-&#60;b&#62;glass&#60;/b&#62;"), "{page}");
    assert!(
        !page.contains(ack_form),
        "a reader is offered no acknowledgement"
    );
    assert!(
        page.contains(r#"<option value="silent_source""#),
        "every rule is a filter"
    );
    let (_, _, filtered) = browser
        .get("/console/alerts?rule=break_glass&status=open&range=all")
        .await;
    assert!(filtered.contains(&row_marker));
    let (_, _, filtered) = browser.get("/console/alerts?rule=failed_logins").await;
    assert!(!filtered.contains(&row_marker), "another rule's filter");
    let (_, _, filtered) = browser.get("/console/alerts?principalId=dr-zed").await;
    assert!(
        !filtered.contains(&row_marker),
        "another principal's filter"
    );
    let (_, _, filtered) = browser
        .get("/console/alerts?range=custom&from=2020-01-01T00:00&to=2020-01-02T00:00")
        .await;
    assert!(!filtered.contains(&row_marker), "a time range before it");
    let (status, _, bad) = browser.get("/console/alerts?range=custom&from=soon").await;
    assert_eq!(status, StatusCode::OK);
    assert!(bad.contains("is not a date or time"), "{bad}");
    let token = browser.token("/console/alerts").await;
    let (status, _, _) = browser
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[("csrf", &token), ("id", &alert_id)],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a reader cannot acknowledge");
    let reads = fixture.reads_by(&reader_id).await;
    let endpoint_of = |e: &serde_json::Value| e["technicalContext"]["endpoint"].clone();
    assert!(
        reads
            .iter()
            .any(|e| e["status"] == "success" && endpoint_of(e) == "/console/alerts"),
        "the listing is audited"
    );
    assert!(
        reads
            .iter()
            .any(|e| e["status"] == "failure" && endpoint_of(e) == "/console/alerts/acknowledge"),
        "the refused acknowledgement is audited"
    );

    // A key bound to org-a never sees org-b's alert, whatever it asks for.
    let bound = Browser::new(&fixture.base);
    assert_eq!(
        bound.sign_in(&fixture.keys["reader-a"].1).await.0,
        StatusCode::SEE_OTHER
    );
    let (status, _, page) = bound.get("/console/alerts").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        !page.contains(&alert_id) && !page.contains("dr-&#60;b&#62;glass"),
        "org-b leaked"
    );
    let (_, _, page) = bound.get("/console/alerts?organizationId=org-b").await;
    assert!(!page.contains(&alert_id));
    assert!(page.contains("may only read organization"), "{page}");

    // The auditor acknowledges through the form: not without the token, not with a note over
    // 2 000 bytes; then it is recorded, once.
    let (auditor_id, auditor_key) = fixture.keys["auditor"].clone();
    let auditor = Browser::new(&fixture.base);
    assert_eq!(auditor.sign_in(&auditor_key).await.0, StatusCode::SEE_OTHER);
    let (_, _, page) = auditor.get("/console/alerts?status=open").await;
    assert!(page.contains(ack_form), "an auditor is offered the form");
    let token = csrf(&page);
    let (status, _, _) = auditor
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[("id", &alert_id), ("status", "open")],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token");
    let (status, _, _) = auditor
        .post(
            "/console/alerts/acknowledge",
            &[("csrf", &token), ("id", &alert_id)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another origin");
    let long = "n".repeat(2_001);
    let (status, _, body) = auditor
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[("csrf", &token), ("id", &alert_id), ("note", &long)],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("2000 bytes"));
    let (_, open) = common::call(
        &fixture.client,
        &fixture.base,
        &fixture.admin,
        reqwest::Method::GET,
        "/v1/alerts?status=acknowledged",
        None,
    )
    .await;
    assert_eq!(open["alerts"].as_array().map(Vec::len), Some(0), "{open}");
    let (status, headers, _) = auditor
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[
                ("csrf", &token),
                ("id", &alert_id),
                ("note", "called the <i>ward</i>: justified"),
                ("status", "open"),
                ("evil", "https://evil.example"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        location(&headers),
        format!("/console/alerts?status=open&done=acknowledged#alert-{alert_id}")
    );
    let (_, _, page) = auditor.get(location(&headers)).await;
    assert!(page.contains("The alert was acknowledged."), "{page}");
    assert!(!page.contains(&row_marker), "no longer open");
    let (_, _, page) = auditor.get("/console/alerts?status=acknowledged").await;
    assert!(page.contains(&row_marker), "{page}");
    assert!(page.contains("tag-ack") && page.contains(&auditor_id));
    assert!(page.contains("called the &#60;i&#62;ward&#60;/i&#62;: justified"));
    let (status, headers, _) = auditor
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[("csrf", &token), ("id", &alert_id)],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "a second time");
    assert!(location(&headers).contains("done=already"));

    // The API agrees: one acknowledgement, by the auditor, with the note.
    let (status, listed) = common::call(
        &fixture.client,
        &fixture.base,
        &fixture.admin,
        reqwest::Method::GET,
        "/v1/alerts?status=acknowledged",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let acked = listed["alerts"].as_array().expect("alerts");
    assert_eq!(acked.len(), 1, "{listed}");
    assert_eq!(acked[0]["id"], alert_id.as_str());
    assert_eq!(acked[0]["acknowledgement"]["by"], auditor_id.as_str());
    assert_eq!(
        acked[0]["acknowledgement"]["note"],
        "called the <i>ward</i>: justified"
    );
    // The reader's page shows it acknowledged; the tile counts one fewer.
    let (_, _, page) = browser.get("/console/alerts").await;
    let row = &page[page.find(&row_marker).expect("listed")..];
    let row = &row[..row.find("</tr>").expect("row end")];
    assert!(
        row.contains("tag-ack") && !row.contains("tag-open"),
        "{row}"
    );
    let (_, _, dashboard) = browser.get("/console/dashboard").await;
    let after: u64 = open_alerts_tile(&dashboard).parse().expect("a count");
    assert!(
        after < before + 1 && after + 1 >= before,
        "{before} → {after}"
    );
    fixture.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_pages_forward_and_back() {
    let fixture = Fixture::start().await;
    let events: Vec<serde_json::Value> = (0..52)
        .map(|i| {
            serde_json::json!({
                "action": "patient.record.read", "status": "success",
                "principalId": format!("dr-{i:02}"), "organizationId": "org-c",
                "dataClassification": "PHI", "targetResourceType": "Patient",
                "healthcareContext": {"patientId": format!("p-{i}"), "emergencyAccess": true},
            })
        })
        .collect();
    let (status, body) = common::call(
        &fixture.client,
        &fixture.base,
        &fixture.admin,
        reqwest::Method::POST,
        "/v1/events",
        Some(&serde_json::json!({ "events": events })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = common::call(
            &fixture.client,
            &fixture.base,
            &fixture.admin,
            reqwest::Method::GET,
            "/v1/alerts?rule=break_glass&organizationId=org-c&limit=1000",
            None,
        )
        .await;
        let n = page["alerts"].as_array().map_or(0, Vec::len);
        if n >= 52 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} alerts: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let browser = Browser::new(&fixture.base);
    assert_eq!(
        browser.sign_in(&fixture.keys["auditor"].1).await.0,
        StatusCode::SEE_OTHER
    );
    let rows = |page: &str| page.matches(r#"<tr id="alert-"#).count();
    let (_, _, first) = browser
        .get("/console/alerts?rule=break_glass&organizationId=org-c")
        .await;
    assert_eq!(rows(&first), 50, "{first}");
    assert!(link(&first, "prev").is_none());
    let next = link(&first, "next").expect("a next page");
    assert!(next.contains("rule=break_glass") && next.contains("organizationId=org-c"));
    let (status, _, second) = browser.get(&next).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(rows(&second), 2);
    assert!(
        second.contains("dr-00") && !first.contains(">dr-00<"),
        "oldest last"
    );
    // An acknowledgement from the second page comes back to the second page.
    let token = csrf(&second);
    let id_at = second.find(r#"<tr id="alert-"#).expect("a row") + r#"<tr id="alert-"#.len();
    let id = &second[id_at..id_at + 36];
    let hidden = |name: &str| {
        let marker = format!(r#"name="{name}" value=""#);
        let at = second.find(&marker).expect(name) + marker.len();
        second[at..at + second[at..].find('"').expect("end")].replace("&#38;", "&")
    };
    let (cursor, back) = (hidden("cursor"), hidden("back"));
    let (status, headers, _) = browser
        .post_same_origin(
            "/console/alerts/acknowledge",
            &[
                ("csrf", &token),
                ("id", id),
                ("rule", "break_glass"),
                ("organizationId", "org-c"),
                ("cursor", &cursor),
                ("back", &back),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, again) = browser.get(location(&headers)).await;
    assert_eq!(rows(&again), 2, "still the second page");
    assert!(again.contains("The alert was acknowledged."));
    let back = link(&again, "prev").expect("a way back");
    let (_, _, first_again) = browser.get(&back).await;
    assert_eq!(rows(&first_again), 50);
    assert!(link(&first_again, "prev").is_none());
    fixture.stop().await;
}
