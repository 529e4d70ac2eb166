//! # vellum-pdf
//!
//! A small, pure PDF renderer for Vellum's PDF exports and compliance reports: a title, a
//! header block of `key: value` lines (query, period, count, checkpoint, …), section headings,
//! wrapped paragraphs and long paginated tables, on A4 landscape pages numbered "Page N of M".
//!
//! It exists because what those documents need is small and the general PDF stacks are not:
//! the objects are written by hand (catalog, page tree, pages, content streams, two font
//! dictionaries, cross-reference table, trailer), with no dependencies beyond `thiserror`, so
//! it adds nothing noticeable to a cold build. It does no I/O of its own: [`PdfWriter`] writes
//! into any [`std::io::Write`], one page at a time as pages fill, so an export of a million rows
//! is streamed with memory that does not grow with the rows (see [`PdfWriter`] for exactly what
//! does grow). [`PdfDocument`] is the same thing rendering into memory.
//!
//! ## Text
//!
//! Only the standard fonts Helvetica and Helvetica-Bold are used, so no font is embedded; text
//! is measured with their real AFM widths ([`text_width`]) and encoded as WinAnsiEncoding
//! (Windows-1252: ASCII, Latin-1 and a few typographic marks such as `€ – — " " …`). **Any other
//! character is shown as `?`** (CJK, emoji, most non-Latin scripts, combining marks of
//! non-NFC text); control characters, tabs and line breaks in cells become spaces. Audit data is
//! mostly Latin text and redacted values are ASCII, so this is the trade for not embedding a
//! font. Content streams are not compressed.
//!
//! ## Example
//!
//! ```
//! use vellum_pdf::{Column, PdfDocument};
//!
//! let mut doc = PdfDocument::new("Audit export");
//! doc.meta("Query", "action=phi.read")?.meta("Count", "2")?;
//! doc.table(
//!     &[Column::new("Time", 2.0), Column::new("Principal", 3.0), Column::new("Seq", 1.0).right()],
//!     [["2024-05-01T10:00:00Z", "dr.ana", "1"], ["2024-05-01T10:05:00Z", "nurse.bo", "2"]],
//! )?;
//! let pdf: Vec<u8> = doc.finish()?;
//! assert!(pdf.starts_with(b"%PDF-1.4"));
//! # Ok::<(), vellum_pdf::PdfError>(())
//! ```

mod canvas;
mod metrics;
mod writer;

pub use metrics::{Font, encode_char, text_width};
pub use writer::{PdfWriter, Table};

/// Why a document could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PdfError {
    /// The sink failed; the output is incomplete.
    #[error("writing the PDF failed: {0}")]
    Io(#[from] std::io::Error),
    /// A table was opened with no columns.
    #[error("a table needs at least one column")]
    NoColumns,
    /// A column's width weight is zero, negative or not finite.
    #[error("column {index} ({title:?}) has width weight {weight}; weights must be finite and > 0")]
    InvalidWeight {
        /// The column's position.
        index: usize,
        /// The column's title.
        title: String,
        /// The rejected weight.
        weight: f32,
    },
    /// A row does not have one cell per column.
    #[error("table row {row} has {got} cells but the table has {expected} columns")]
    RowWidth {
        /// The row's position in its table, from 0.
        row: u64,
        /// The number of columns.
        expected: usize,
        /// The number of cells given.
        got: usize,
    },
}

/// How a column's cells sit horizontally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    /// Flush left (text).
    #[default]
    Left,
    /// Flush right (numbers, counts).
    Right,
    /// Centred (short codes).
    Center,
}

/// One table column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The header text, repeated at the top of every page the table spans.
    pub title: String,
    /// The column's share of the page width, relative to the other columns' weights.
    pub weight: f32,
    /// Horizontal alignment of the cells and the header.
    pub align: Align,
    /// Whether long cells wrap onto a second line (then are cut with `…`) instead of being
    /// cut on the first.
    pub wrap: bool,
}

impl Column {
    /// A left-aligned, non-wrapping column with `weight` as its share of the page width.
    #[must_use]
    pub fn new(title: impl Into<String>, weight: f32) -> Self {
        Column {
            title: title.into(),
            weight,
            align: Align::Left,
            wrap: false,
        }
    }

    /// Right-aligned.
    #[must_use]
    pub fn right(mut self) -> Self {
        self.align = Align::Right;
        self
    }

    /// Centred.
    #[must_use]
    pub fn center(mut self) -> Self {
        self.align = Align::Center;
        self
    }

    /// Long cells wrap onto up to two lines before being cut.
    #[must_use]
    pub fn wrap(mut self) -> Self {
        self.wrap = true;
        self
    }
}

/// A document rendered into memory: a [`PdfWriter`] over a `Vec<u8>`.
///
/// Prefer [`PdfWriter`] over a streaming sink for large exports; this holds the whole output.
#[derive(Debug)]
pub struct PdfDocument {
    writer: PdfWriter<Vec<u8>>,
}

impl PdfDocument {
    /// Starts a document titled `title`.
    #[must_use]
    pub fn new(title: &str) -> Self {
        PdfDocument {
            writer: PdfWriter::new(Vec::new(), title),
        }
    }

    /// Adds a header-block line; see [`PdfWriter::meta`].
    pub fn meta(&mut self, key: &str, value: &str) -> Result<&mut Self, PdfError> {
        self.writer.meta(key, value)?;
        Ok(self)
    }

    /// Adds a section heading; see [`PdfWriter::section`].
    pub fn section(&mut self, heading: &str) -> Result<&mut Self, PdfError> {
        self.writer.section(heading)?;
        Ok(self)
    }

    /// Adds a wrapped paragraph; see [`PdfWriter::paragraph`].
    pub fn paragraph(&mut self, text: &str) -> Result<&mut Self, PdfError> {
        self.writer.paragraph(text)?;
        Ok(self)
    }

    /// Adds a table; see [`PdfWriter::table`]. Returns the number of rows.
    pub fn table<I, R, S>(&mut self, columns: &[Column], rows: I) -> Result<u64, PdfError>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        self.writer.table(columns, rows)
    }

    /// Opens a table to fill row by row; see [`PdfWriter::begin_table`].
    pub fn begin_table(&mut self, columns: &[Column]) -> Result<Table<'_, Vec<u8>>, PdfError> {
        self.writer.begin_table(columns)
    }

    /// Pages started so far.
    #[must_use]
    pub fn page_count(&self) -> u32 {
        self.writer.page_count()
    }

    /// The finished PDF file.
    pub fn finish(self) -> Result<Vec<u8>, PdfError> {
        self.writer.finish()
    }
}
