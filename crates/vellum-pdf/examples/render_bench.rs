//! Renders an N-row export table (default 100,000) into a byte-counting sink and reports time,
//! size and peak memory:
//!
//! ```sh
//! cargo run --release -p vellum-pdf --example render_bench -- 100000 [out.pdf]
//! ```

use std::io::{self, Write};
use std::time::Instant;

use vellum_pdf::{Column, PdfError, PdfWriter};

/// Counts bytes and forwards them (to a file or nowhere).
struct Counting<W: Write>(W, u64);

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.1 += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Peak resident memory (Linux), for showing that it does not grow with the rows.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn run<W: Write>(sink: W, rows: usize) -> Result<(Counting<W>, u32), PdfError> {
    let mut pdf = PdfWriter::new(Counting(sink, 0), "Vellum audit export");
    pdf.meta("Query", "action=phi.*")?
        .meta("Count", &rows.to_string())?
        .meta(
            "Checkpoint",
            "vellum.example/log 1234567 q2cH0/3oCxk3+Vr1zq…",
        )?;
    let columns = [
        Column::new("Seq", 0.7).right(),
        Column::new("Time", 2.0),
        Column::new("Principal", 2.0),
        Column::new("Action", 1.4),
        Column::new("Target", 3.0),
        Column::new("Outcome", 1.0).center(),
        Column::new("Details", 4.0).wrap(),
    ];
    let mut table = pdf.begin_table(&columns)?;
    let mut cells: Vec<String> = vec![String::new(); columns.len()];
    for i in 0..rows {
        cells[0] = (i + 1).to_string();
        cells[1] = format!(
            "2024-05-{:02}T{:02}:{:02}:00.000Z",
            1 + i % 28,
            i % 24,
            i % 60
        );
        cells[2] = format!("user{}@hospital.example", i % 977);
        cells[3] = if i % 3 == 1 {
            "phi.read"
        } else {
            "record.update"
        }
        .to_owned();
        cells[4] = format!("Patient/P{:07}/Observation/{}", i % 100_003, i);
        cells[5] = "SUCCESS".to_owned();
        cells[6] = format!(
            "Chart section {} viewed from ward {} (reason: treatment)",
            i % 13,
            i % 41
        );
        table.row(&cells)?;
    }
    table.end();
    let pages = pdf.page_count();
    Ok((pdf.finish()?, pages))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(100_000), |a| a.parse())?;
    let start = Instant::now();
    let (bytes, pages) = match args.next() {
        Some(path) => {
            let file = io::BufWriter::new(std::fs::File::create(path)?);
            let (c, pages) = run(file, rows)?;
            (c.1, pages)
        }
        None => {
            let (c, pages) = run(io::sink(), rows)?;
            (c.1, pages)
        }
    };
    let elapsed = start.elapsed();
    println!(
        "{rows} rows, {pages} pages, {bytes} bytes ({:.0} bytes/row) in {:.3} s ({:.0} rows/s); \
         peak RSS {} KiB",
        bytes as f64 / rows.max(1) as f64,
        elapsed.as_secs_f64(),
        rows as f64 / elapsed.as_secs_f64(),
        peak_rss_kib().map_or_else(|| "?".to_owned(), |k| k.to_string()),
    );
    Ok(())
}
