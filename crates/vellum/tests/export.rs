//! Exports end to end with the real binary (`vellum export --format F`) against a real server:
//! NDJSON and JSON carry the complete stored events; CSV is read back with the `csv` crate and
//! with Python's `csv` module (a second, independent reader); the FHIR Bundle is validated by the
//! independent `fhir.resources` package (R4B `Bundle` and `AuditEvent` models), which `.ci/run`
//! installs. Without it the FHIR check is skipped with a message, unless
//! `VELLUM_REQUIRE_SERVICES=1` (CI), where a skip is a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::Server;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;

fn export(tmp: &Path, data: &Path, url: &str, format: &str, filters: &[&str]) -> PathBuf {
    let out = tmp.join(format!("export.{format}"));
    let mut cmd = common::vellum(tmp);
    cmd.args(["export", "--data-dir"])
        .arg(data)
        .args(["--url", url, "--format", format, "--output"])
        .arg(&out)
        .args(filters);
    let result = common::run(cmd, common::CLI_LIMIT);
    assert!(
        result.status.success(),
        "export {format} failed: {}",
        common::text(&result.stderr)
    );
    out
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

fn tool_exists(tool: &str) -> bool {
    Command::new(tool)
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
}

fn pdf_text(path: &Path) -> String {
    let out = Command::new("pdftotext")
        .args(["-layout"])
        .arg(path)
        .arg("-")
        .output()
        .expect("pdftotext");
    assert!(
        out.status.success(),
        "pdftotext failed: {}",
        common::text(&out.stderr)
    );
    common::text(&out.stdout)
}

fn require_or_skip(what: &str) -> bool {
    if std::env::var_os("VELLUM_REQUIRE_SERVICES").is_some_and(|v| v == "1") {
        panic!("{what} is required (VELLUM_REQUIRE_SERVICES=1) but missing");
    }
    eprintln!("SKIP: {what} is missing; install it to run this check");
    false
}

#[test]
fn every_format_exports_the_selection_faithfully() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let server = Server::start(&data);
    let rt = common::runtime();
    let events: Vec<Value> = (0..30u64)
        .map(|n| {
            let mut e = common::event(
                [
                    "export.patient.read",
                    "export.record.update",
                    "export.auth.login",
                ][(n % 3) as usize],
                n,
            );
            e["status"] = json!(["success", "failure", "warning", "attempt"][(n % 4) as usize]);
            e["healthcareContext"] = json!({"patientId": format!("p-{}", n % 5)});
            e["sessionContext"] = json!({"ipAddress": "10.1.2.3", "sessionId": format!("s-{n}")});
            if n == 7 {
                e["outcomeDescription"] = json!("=HYPERLINK(\"http://evil\")");
                e["principalId"] = json!("@admin");
            }
            if n == 8 {
                e["outcomeDescription"] = json!("Zoë, \"quoted\", comma; newline\nsecond line — ✓");
            }
            if n == 9 {
                e["severity"] = json!("critical");
                e["status"] = json!("failure");
            }
            e
        })
        .collect();
    let acks = rt.block_on(common::post_batch(
        &common::client(),
        &server.url(),
        &server.admin_key(),
        events,
    ));
    let url = server.url();
    let filter = ["action=export.*"];

    // NDJSON: the complete stored events, newest first.
    let path = export(tmp.path(), &data, &url, "ndjson", &filter);
    let lines: Vec<Value> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 30);
    for ack in &acks {
        let found = lines.iter().find(|e| e["id"] == ack.id.as_str()).unwrap();
        assert_eq!(found["hash"], ack.hash.as_str());
        assert!(found["signature"].is_string() && found["prevHash"].is_string());
    }

    // JSON: one document with the checkpoint it was taken against and the count.
    let path = export(tmp.path(), &data, &url, "json", &filter);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(doc["count"], 30);
    assert_eq!(doc["events"].as_array().unwrap().len(), 30);
    assert!(
        doc["checkpoints"][0]["note"]
            .as_str()
            .unwrap()
            .starts_with("vellum/default\n")
    );

    // CSV: the SPEC columns, read back by two independent readers.
    let path = export(tmp.path(), &data, &url, "csv", &filter);
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let headers: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(headers, vellum_core::export::CSV_COLUMNS);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 30);
    let row7 = rows.iter().find(|r| r[0] == acks[7].id).unwrap();
    assert_eq!(
        &row7[10], "'=HYPERLINK(\"http://evil\")",
        "formula cell not guarded"
    );
    assert_eq!(&row7[5], "'@admin");
    let row8 = rows.iter().find(|r| r[0] == acks[8].id).unwrap();
    assert_eq!(
        &row8[10],
        "Zoë, \"quoted\", comma; newline\nsecond line — ✓"
    );
    assert_eq!(&row8[12], acks[8].hash);
    assert_eq!(&row8[11], "10.1.2.3");
    let py = Command::new("python3")
        .arg("-c")
        .arg(
            "import csv,sys,json\n\
             rows=list(csv.reader(open(sys.argv[1],newline='',encoding='utf-8')))\n\
             print(json.dumps(rows))",
        )
        .arg(&path)
        .output()
        .expect("python3");
    assert!(py.status.success(), "{}", common::text(&py.stderr));
    let py_rows: Vec<Vec<String>> = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(py_rows.len(), 31);
    for (ours, theirs) in rows.iter().zip(&py_rows[1..]) {
        assert_eq!(ours.iter().collect::<Vec<_>>(), *theirs);
    }

    // FHIR: a Bundle of AuditEvents that an independent validator accepts.
    let path = export(tmp.path(), &data, &url, "fhir", &filter);
    let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 30);
    let by_id = |id: &str| {
        entries
            .iter()
            .find(|e| e["resource"]["id"] == id)
            .map(|e| &e["resource"])
            .unwrap()
    };
    let r0 = by_id(&acks[0].id);
    assert_eq!(r0["action"], "R");
    assert_eq!(r0["outcome"], "0");
    assert_eq!(r0["entity"][1]["what"]["reference"], "Patient/p-0");
    assert_eq!(by_id(&acks[1].id)["action"], "U");
    assert_eq!(by_id(&acks[1].id)["outcome"], "8");
    assert_eq!(by_id(&acks[9].id)["outcome"], "12");
    assert_eq!(by_id(&acks[2].id)["outcome"], "4");
    assert!(
        by_id(&acks[3].id).get("outcome").is_none(),
        "attempt has no outcome"
    );
    assert_eq!(by_id(&acks[2].id)["type"]["code"], "110114");
    if python_has("fhir.resources") || require_or_skip("python package fhir.resources") {
        let py = Command::new("python3")
            .arg("-c")
            .arg(
                "import json,sys\n\
                 from fhir.resources.R4B.bundle import Bundle\n\
                 from fhir.resources.R4B.auditevent import AuditEvent\n\
                 b=json.load(open(sys.argv[1]))\n\
                 Bundle.model_validate(b)\n\
                 for e in b['entry']: AuditEvent.model_validate(e['resource'])\n\
                 print(len(b['entry']))",
            )
            .arg(&path)
            .output()
            .expect("python3");
        assert!(
            py.status.success(),
            "fhir.resources rejected the export: {}",
            common::text(&py.stderr)
        );
        assert_eq!(common::text(&py.stdout).trim(), "30");
    }

    // PDF: readable tables with the query, period, checkpoint and count, checked as text.
    let path = export(tmp.path(), &data, &url, "pdf", &filter);
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(b"%PDF-"), "not a PDF");
    if tool_exists("pdftotext") || require_or_skip("pdftotext (poppler-utils)") {
        let text = pdf_text(&path);
        assert!(text.contains("Vellum audit export"), "{text}");
        assert!(text.contains("action=export.*"), "query missing: {text}");
        assert!(
            text.contains("Checkpoint") && text.contains("log default size"),
            "{text}"
        );
        assert!(text.contains("30 events."), "count missing: {text}");
        assert!(text.contains("export.patient.read") && text.contains(&acks[4].hash[..16]));
        assert!(text.contains("Page 1 of"), "{text}");
        let png = tmp.path().join("page");
        let status = Command::new("pdftoppm")
            .args(["-png", "-r", "50", "-f", "1", "-l", "1"])
            .arg(&path)
            .arg(&png)
            .status()
            .expect("pdftoppm");
        assert!(status.success());
        let rendered = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(Result::ok)
            .find(|e| e.file_name().to_string_lossy().starts_with("page"))
            .expect("a rendered page");
        assert!(
            rendered.metadata().unwrap().len() > 10_000,
            "page 1 renders nearly blank"
        );
    }

    // Unknown formats are refused with the field named.
    let mut cmd = common::vellum(tmp.path());
    cmd.args(["export", "--data-dir"])
        .arg(&data)
        .args(["--url", &url, "--format", "xml"]);
    let out = common::run(cmd, common::CLI_LIMIT);
    assert!(!out.status.success());
    assert!(common::text(&out.stderr).contains("format"));
    server.terminate();
}
