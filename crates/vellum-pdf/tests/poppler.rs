//! Renders a realistic document and checks it with an independent reader: poppler's
//! `pdftotext`, `pdfinfo` and `pdftoppm` (Debian `poppler-utils`, installed by `.ci/run`).
//!
//! Without the tools the test prints a skip, unless `VELLUM_REQUIRE_SERVICES=1` (as in CI),
//! where it fails.

use std::path::Path;
use std::process::{Command, Output};

use vellum_pdf::{Column, PdfDocument};

const TOOLS: [&str; 3] = ["pdftotext", "pdfinfo", "pdftoppm"];

/// Whether the poppler tools can run; panics if they are required and missing.
fn tools_available() -> bool {
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|t| Command::new(t).arg("-v").output().is_err())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("VELLUM_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!(
            "VELLUM_REQUIRE_SERVICES=1 but {} not found: install Debian package poppler-utils \
             (`apt-get install -y poppler-utils`; .ci/run does this)",
            missing.join(", ")
        );
    }
    eprintln!(
        "SKIP: {} not installed (apt-get install poppler-utils)",
        missing.join(", ")
    );
    false
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    assert!(stderr.trim().is_empty(), "{cmd:?} complained: {stderr}");
    out
}

const ROWS: usize = 500;

fn cells(i: usize) -> Vec<String> {
    let principal = match i % 5 {
        0 => "Ana Lúcia Gonçalves",
        1 => "Zoë Ørsted-Müller",
        2 => "dr.smith (locum)",
        3 => "svc\\backup",
        _ => "李小龙 😀",
    };
    let details = if i.is_multiple_of(7) {
        "A very long free-text reason that certainly does not fit in its column on one line, \
         and not on two lines either, so it must be cut with an ellipsis at the end of line two."
            .to_owned()
    } else {
        format!(
            "Read chart section {} – “summary” € {}.{:02}",
            i % 13,
            i,
            i % 100
        )
    };
    vec![
        (i + 1).to_string(),
        format!("2024-05-{:02}T{:02}:{:02}:00Z", 1 + i % 28, i % 24, i % 60),
        principal.to_owned(),
        if i.is_multiple_of(3) {
            "phi.read"
        } else {
            "record.update"
        }
        .to_owned(),
        format!(
            "patient/P{:06}/observation/{}-with-a-long-identifier-{}",
            i,
            i * 7,
            i
        ),
        if i.is_multiple_of(11) {
            "FAILURE"
        } else {
            "SUCCESS"
        }
        .to_owned(),
        details,
    ]
}

fn render() -> Vec<u8> {
    let mut doc = PdfDocument::new("Vellum audit export");
    doc.meta(
        "Query",
        "action=phi.* AND patientId=P000123 (redacted: none)",
    )
    .and_then(|d| d.meta("Period", "2024-05-01T00:00:00Z – 2024-05-31T23:59:59Z"))
    .and_then(|d| d.meta("Count", &ROWS.to_string()))
    .and_then(|d| {
        d.meta(
            "Checkpoint",
            "vellum.example/log 1234567 q2cH0/3oCxk3+Vr1zq…",
        )
    })
    .and_then(|d| d.meta("Generated at", "2024-06-01T12:00:00Z by admin@example.org"))
    .expect("meta");
    doc.section("Events").expect("section");
    doc.paragraph(
        "Every event that matched the query, oldest first. Values longer than their column are \
         cut with an ellipsis; characters outside WinAnsi are shown as a question mark.",
    )
    .expect("paragraph");
    let columns = [
        Column::new("Seq", 0.6).right(),
        Column::new("Time", 2.0),
        Column::new("Principal", 2.0),
        Column::new("Action", 1.4),
        Column::new("Target", 3.0),
        Column::new("Outcome", 1.0).center(),
        Column::new("Details", 4.0).wrap(),
    ];
    let n = doc.table(&columns, (0..ROWS).map(cells)).expect("table");
    assert_eq!(n, ROWS as u64);
    doc.finish().expect("finish")
}

#[test]
fn poppler_reads_and_renders_the_export() {
    if !tools_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let pdf_path = dir.path().join("export.pdf");
    std::fs::write(&pdf_path, render()).expect("write pdf");
    let keep = std::env::var_os("VELLUM_PDF_KEEP").map(std::path::PathBuf::from);
    if let Some(keep) = &keep {
        std::fs::copy(&pdf_path, keep.join("export.pdf")).expect("keep pdf");
    }

    // pdfinfo: parses without errors, several pages.
    let info = run(Command::new("pdfinfo").arg(&pdf_path));
    let info = String::from_utf8_lossy(&info.stdout);
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in pdfinfo output:\n{info}"))
    };
    let pages: usize = field("Pages").parse().expect("page count");
    assert!(pages > 1, "{info}");
    assert_eq!(field("Title"), "Vellum audit export");
    assert_eq!(field("Page size"), "841.89 x 595.28 pts (A4)");
    assert_eq!(field("PDF version"), "1.4");

    // pdftotext: the text comes back, page by page (pages are separated by form feeds).
    let text = run(Command::new("pdftotext")
        .arg("-layout")
        .arg(&pdf_path)
        .arg("-"));
    let text = String::from_utf8(text.stdout).expect("utf-8 text");
    let page_texts: Vec<&str> = text
        .split('\u{c}')
        .filter(|p| !p.trim().is_empty())
        .collect();
    assert_eq!(page_texts.len(), pages);
    let first = page_texts[0];
    assert!(first.contains("Vellum audit export"));
    for line in [
        "Query",
        "action=phi.* AND patientId=P000123 (redacted: none)",
        "Period",
        "2024-05-01T00:00:00Z – 2024-05-31T23:59:59Z",
        "Count",
        "Checkpoint",
        "vellum.example/log 1234567 q2cH0/3oCxk3+Vr1zq…",
        "Generated at",
        "2024-06-01T12:00:00Z by admin@example.org",
        "Events",
    ] {
        assert!(first.contains(line), "page 1 lacks {line:?}:\n{first}");
    }
    for cell in [
        "Ana Lúcia Gonçalves",
        "Zoë Ørsted-Müller",
        "dr.smith (locum)",
        "svc\\backup",
        "?? ?", // CJK and emoji are not in WinAnsi
        "phi.read",
        "record.update",
        "FAILURE",
        "“summary” €",
        "cut with an ellipsis", // from the paragraph
        "2024-05-01T00:00:00Z",
    ] {
        assert!(text.contains(cell), "missing {cell:?}");
    }
    // The last row made it, and long cells were cut with an ellipsis.
    assert!(
        page_texts[pages - 1].contains(&format!("{ROWS} ")),
        "last row missing"
    );
    assert!(text.contains("patient/P000001/observation/7-with-a-"));
    assert!(text.contains('…'));
    assert!(
        !text.contains("at the end of line two"),
        "overlong cell was not cut"
    );
    // Every page repeats the table header and carries "Page N of M".
    for (i, page) in page_texts.iter().enumerate() {
        let header = page
            .lines()
            .find(|l| l.contains("Principal"))
            .unwrap_or_else(|| {
                panic!("page {} lacks the table header:\n{page}", i + 1);
            });
        for title in ["Seq", "Time", "Action", "Target", "Outcome", "Details"] {
            assert!(header.contains(title), "page {}: header {header:?}", i + 1);
        }
        let footer = format!("Page {} of {pages}", i + 1);
        assert!(
            page.contains(&footer),
            "page {} lacks {footer:?}:\n{page}",
            i + 1
        );
    }

    // pdftoppm: page 1 renders to a non-trivial PNG.
    let prefix = dir.path().join("page");
    run(Command::new("pdftoppm")
        .args(["-png", "-r", "60", "-f", "1", "-l", "1"])
        .arg(&pdf_path)
        .arg(&prefix));
    let png = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "png"))
        .expect("pdftoppm wrote no PNG");
    let bytes = std::fs::read(&png).expect("read png");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert!(
        bytes.len() > 20_000,
        "page 1 PNG is only {} bytes",
        bytes.len()
    );
    if let Some(keep) = &keep {
        std::fs::copy(&png, keep.join(Path::new("page-1.png"))).expect("keep png");
    }
}
