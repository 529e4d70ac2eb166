//! File-structure checks that need no external tools: the cross-reference table points at every
//! object, stream lengths are right, pages are streamed before `finish`, and errors are typed.

use std::io::Write;

use vellum_pdf::{Column, PdfDocument, PdfError, PdfWriter};

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

fn ascii_usize(bytes: &[u8]) -> usize {
    std::str::from_utf8(bytes)
        .expect("ascii")
        .trim()
        .parse()
        .expect("number")
}

fn sample(rows: usize) -> Vec<u8> {
    let mut doc = PdfDocument::new("Structure (test) \\ é");
    doc.meta("Query", "action=phi.read").expect("meta");
    doc.section("Events").expect("section");
    doc.paragraph("Some text.\n\nMore text (with parentheses).")
        .expect("paragraph");
    let cols = [
        Column::new("#", 1.0).right(),
        Column::new("Value", 6.0).wrap(),
    ];
    let n = doc
        .table(
            &cols,
            (0..rows).map(|i| vec![i.to_string(), format!("value {i} ({i}) \\ ü")]),
        )
        .expect("table");
    assert_eq!(n, rows as u64);
    doc.finish().expect("finish")
}

/// Checks that startxref points at the xref table and that each entry points at `N 0 obj`.
fn check_xref(pdf: &[u8]) -> usize {
    assert!(pdf.starts_with(b"%PDF-1.4\n"));
    assert!(pdf.ends_with(b"%%EOF\n"));
    let sx = find(pdf, b"startxref\n", pdf.len() - 40).expect("startxref");
    let xref_at = ascii_usize(&pdf[sx + 10..pdf.len() - 6]);
    assert!(pdf[xref_at..].starts_with(b"xref\n0 "));
    let line_end = find(pdf, b"\n", xref_at + 5).expect("xref header");
    let size = ascii_usize(&pdf[xref_at + 7..line_end]);
    let entries = line_end + 1;
    assert_eq!(&pdf[entries..entries + 20], b"0000000000 65535 f \n");
    for id in 1..size {
        let e = &pdf[entries + 20 * id..entries + 20 * (id + 1)];
        assert!(
            e.ends_with(b" 00000 n \n"),
            "entry {id}: {:?}",
            String::from_utf8_lossy(e)
        );
        let off = ascii_usize(&e[..10]);
        let head = format!("{id} 0 obj\n");
        assert!(
            pdf[off..].starts_with(head.as_bytes()),
            "object {id} not at {off}"
        );
    }
    assert!(find(pdf, format!("trailer\n<< /Size {size} ").as_bytes(), 0).is_some());
    size
}

/// Checks every stream's /Length against the bytes up to `endstream`.
fn check_streams(pdf: &[u8]) -> usize {
    let mut count = 0;
    let mut at = 0;
    while let Some(i) = find(pdf, b"<< /Length ", at) {
        let num_end = i
            + 11
            + pdf[i + 11..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .expect("len");
        let len = ascii_usize(&pdf[i + 11..num_end]);
        let data = find(pdf, b">>\nstream\n", num_end).expect("stream") + 10;
        assert!(
            pdf[data + len..].starts_with(b"\nendstream\nendobj\n"),
            "stream at {i}"
        );
        at = data + len;
        count += 1;
    }
    count
}

#[test]
fn xref_and_streams_are_consistent() {
    let pdf = sample(300);
    let size = check_xref(&pdf);
    let streams = check_streams(&pdf);
    // Objects 1..=6 are fixed; each page adds a content stream and a page object.
    let pages = (size - 7) / 2;
    assert!(pages > 3, "{pages}");
    assert_eq!(
        streams,
        pages + 1,
        "page contents plus the total-pages form"
    );
    let count = format!("/Count {pages}\n");
    assert!(find(&pdf, count.as_bytes(), 0).is_some());
    // The total page count is drawn once, by the form every footer uses.
    assert!(find(&pdf, format!("Td({pages})Tj").as_bytes(), 0).is_some());
    // Parentheses and backslashes are escaped; é is the WinAnsi byte 0xE9.
    assert!(find(&pdf, b"(12\\) \\\\ \xFC)Tj", 0).is_some());
}

#[test]
fn empty_and_tiny_documents_are_valid() {
    let pdf = PdfDocument::new("").finish().expect("empty");
    assert_eq!(check_xref(&pdf), 9);
    let mut doc = PdfDocument::new("No rows");
    doc.table(&[Column::new("A", 1.0)], Vec::<Vec<String>>::new())
        .expect("table");
    let pdf = doc.finish().expect("finish");
    check_xref(&pdf);
    assert!(find(&pdf, b"(No rows.)Tj", 0).is_some());
}

#[test]
fn output_is_deterministic() {
    assert_eq!(sample(50), sample(50));
}

/// A sink that records when bytes arrive.
struct Recorder {
    bytes: Vec<u8>,
    writes: usize,
}

impl Write for Recorder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        self.writes += 1;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pages_are_streamed_as_they_fill() {
    let mut w = PdfWriter::new(
        Recorder {
            bytes: Vec::new(),
            writes: 0,
        },
        "Streaming",
    );
    let cols = [Column::new("A", 1.0), Column::new("B", 1.0)];
    let mut table = w.begin_table(&cols).expect("table");
    let mut max_pending = 0;
    for i in 0..2000 {
        table.row(&[format!("a{i}"), "b".to_owned()]).expect("row");
    }
    assert_eq!(table.end(), 2000);
    assert!(w.page_count() > 40);
    // Everything but the current page has gone out already.
    let written = w.bytes_written();
    assert_eq!(written, w.get_mut().bytes.len() as u64);
    assert!(written > 100_000, "{written}");
    let mut last_written = written;
    // Draining the sink mid-document is allowed: offsets are counted, not read back.
    let mut drained = std::mem::take(&mut w.get_mut().bytes);
    for i in 0..100 {
        w.paragraph(&format!("paragraph {i}")).expect("paragraph");
        let now = w.bytes_written();
        max_pending = max_pending.max(now - last_written);
        last_written = now;
    }
    let rest = w.finish().expect("finish");
    drained.extend_from_slice(&rest.bytes);
    check_xref(&drained);
    check_streams(&drained);
    assert!(max_pending < 64 * 1024, "{max_pending}");
}

#[test]
fn bad_tables_are_typed_errors() {
    let mut doc = PdfDocument::new("Errors");
    assert!(matches!(
        doc.table(&[], [[""; 0]]),
        Err(PdfError::NoColumns)
    ));
    let err = doc.table(
        &[Column::new("A", 1.0), Column::new("B", f32::NAN)],
        [["a", "b"]],
    );
    assert!(
        matches!(err, Err(PdfError::InvalidWeight { index: 1, .. })),
        "{err:?}"
    );
    let err = doc.table(&[Column::new("A", 0.0)], [["a"]]);
    assert!(
        matches!(err, Err(PdfError::InvalidWeight { index: 0, .. })),
        "{err:?}"
    );
    let err = doc.table(&[Column::new("A", 1.0), Column::new("B", 1.0)], [vec!["a"]]);
    assert!(
        matches!(
            err,
            Err(PdfError::RowWidth {
                row: 0,
                expected: 2,
                got: 1
            })
        ),
        "{err:?}"
    );
    // The document is still usable after a rejected table.
    check_xref(&doc.finish().expect("finish"));
}
