//! The streaming writer: lays blocks out page by page and writes each page as it fills.

use std::io::Write;

use crate::canvas::{Canvas, Rgb, push_uint};
use crate::metrics::{ELLIPSIS, Font, encode_into};
use crate::{Align, Column, PdfError};

// Page geometry, in points: A4 landscape.
const PAGE_W: f32 = 841.89;
const PAGE_H: f32 = 595.28;
const MARGIN: f32 = 36.0;
const CONTENT_W: f32 = PAGE_W - 2.0 * MARGIN;
const CONTENT_TOP: f32 = PAGE_H - MARGIN;
const CONTENT_BOTTOM: f32 = 50.0;
const FOOTER_RULE_Y: f32 = 40.0;
const FOOTER_BASELINE: f32 = 28.0;

// Type.
const TITLE_SIZE: f32 = 16.0;
const TITLE_LEADING: f32 = 20.0;
const META_SIZE: f32 = 9.0;
const META_LEADING: f32 = 12.5;
const META_KEY_W: f32 = 130.0;
const META_MAX_LINES: usize = 6;
const SECTION_SIZE: f32 = 12.0;
const SECTION_LEADING: f32 = 16.0;
const BODY_SIZE: f32 = 9.5;
const BODY_LEADING: f32 = 13.0;
const TABLE_SIZE: f32 = 8.0;
const TABLE_LEADING: f32 = 10.0;
const CELL_PAD_X: f32 = 4.0;
const CELL_PAD_Y: f32 = 2.5;
const HEADER_PAD_Y: f32 = 3.5;
/// Lines a wrapping cell may take before it is cut with `…`.
const MAX_CELL_LINES: usize = 2;
const FOOTER_SIZE: f32 = 8.0;

// Colours.
const INK: Rgb = Rgb(0, 0, 0);
const TITLE_INK: Rgb = Rgb(10, 20, 35);
const MUTED: Rgb = Rgb(38, 38, 38);
const FAINT: Rgb = Rgb(40, 40, 40);
const HEADER_FILL: Rgb = Rgb(84, 88, 94);
const ZEBRA_FILL: Rgb = Rgb(95, 96, 97);
const RULE: Rgb = Rgb(55, 58, 62);

// Object numbers. Pages take two each from `FIRST_PAGE_OBJ` on: content stream, then page.
const CATALOG_OBJ: u32 = 1;
const PAGES_OBJ: u32 = 2;
const FONT_REGULAR_OBJ: u32 = 3;
const FONT_BOLD_OBJ: u32 = 4;
const INFO_OBJ: u32 = 5;
const TOTAL_PAGES_OBJ: u32 = 6;
const FIRST_PAGE_OBJ: u32 = 7;

/// The top of a line box of height `leading` → the baseline of `size`-point text centred in it.
fn baseline(top: f32, leading: f32, size: f32) -> f32 {
    top - (leading - size) / 2.0 - size * 0.78
}

/// Text units (1/1000 em) available in `points` at `size`.
fn units_in(points: f32, size: f32) -> u32 {
    if points <= 0.0 {
        0
    } else {
        (points * 1000.0 / size) as u32
    }
}

/// One laid-out line: `scratch[start..end]`, then `…` if `ellipsis`.
#[derive(Debug, Clone, Copy)]
struct Line {
    col: usize,
    row: usize,
    start: usize,
    end: usize,
    ellipsis: bool,
}

/// How many leading bytes of `text` fit in `max` units with a `…` after them.
fn fit_with_ellipsis(font: Font, text: &[u8], max: u32) -> usize {
    let budget = max.saturating_sub(font.code_width(ELLIPSIS));
    let mut used = 0;
    let mut n = 0;
    for &b in text {
        let w = font.code_width(b);
        if used + w > budget {
            break;
        }
        used += w;
        n += 1;
    }
    while n > 0 && text[n - 1] == b' ' {
        n -= 1;
    }
    n
}

/// Greedy word wrap of `scratch[start..end]` into at most `max_lines` lines of `max` units,
/// breaking at spaces (or inside a word too long for a line); the last allowed line is cut with
/// `…` if text remains. Appends the lines to `out`; returns how many.
fn wrap(
    font: Font,
    scratch: &[u8],
    (start, end): (usize, usize),
    max: u32,
    max_lines: usize,
    col: usize,
    out: &mut Vec<Line>,
) -> usize {
    let skip_spaces = |mut i: usize| {
        while i < end && scratch[i] == b' ' {
            i += 1;
        }
        i
    };
    let trim_end = |s: usize, mut e: usize| {
        while e > s && scratch[e - 1] == b' ' {
            e -= 1;
        }
        e
    };
    let mut pos = skip_spaces(start);
    let mut row = 0;
    while pos < end {
        let rest_end = trim_end(pos, end);
        let rest = &scratch[pos..rest_end];
        if row + 1 == max_lines && font.units(rest) > max {
            let n = fit_with_ellipsis(font, rest, max);
            out.push(Line {
                col,
                row,
                start: pos,
                end: pos + n,
                ellipsis: true,
            });
            return row + 1;
        }
        let mut used = 0;
        let mut i = pos;
        let mut last_space = None;
        while i < rest_end {
            let w = font.code_width(scratch[i]);
            if used + w > max {
                break;
            }
            if scratch[i] == b' ' {
                last_space = Some(i);
            }
            used += w;
            i += 1;
        }
        if i == rest_end {
            out.push(Line {
                col,
                row,
                start: pos,
                end: rest_end,
                ellipsis: false,
            });
            return row + 1;
        }
        let brk = if scratch[i] == b' ' {
            i
        } else if let Some(sp) = last_space {
            sp
        } else {
            i.max(pos + 1)
        };
        out.push(Line {
            col,
            row,
            start: pos,
            end: trim_end(pos, brk),
            ellipsis: false,
        });
        row += 1;
        pos = skip_spaces(brk);
    }
    row
}

/// A table's resolved column geometry, kept while it is open so each page can repeat its header.
#[derive(Debug)]
struct TableLayout {
    cols: Vec<ColLayout>,
    /// The encoded column titles, back to back; `ColLayout::title` indexes into this.
    titles: Vec<u8>,
    rows: u64,
}

#[derive(Debug)]
struct ColLayout {
    x: f32,
    width: f32,
    align: Align,
    wrap: bool,
    title: (usize, usize),
}

impl TableLayout {
    fn header_height() -> f32 {
        TABLE_LEADING + 2.0 * HEADER_PAD_Y
    }
}

/// What was drawn last, to decide the spacing before the next block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Title,
    Meta,
    Other,
}

/// Counts bytes as they go out, and remembers where each object starts (for the xref table).
#[derive(Debug)]
struct Sink<W: Write> {
    out: W,
    pos: u64,
    /// Byte offset of each object, indexed by object number (0 unused).
    offsets: Vec<u64>,
}

impl<W: Write> Sink<W> {
    fn emit(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn begin_obj(&mut self, id: u32, head: &mut Vec<u8>) {
        let idx = id as usize;
        if self.offsets.len() <= idx {
            self.offsets.resize(idx + 1, 0);
        }
        // The object starts where `head` will be written.
        self.offsets[idx] = self.pos + head.len() as u64;
        push_uint(head, id);
        head.extend_from_slice(b" 0 obj\n");
    }

    /// Writes object `id` whose dictionary and body are `body` (without `obj`/`endobj`).
    fn object(&mut self, id: u32, body: &[u8]) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(16);
        self.begin_obj(id, &mut head);
        self.emit(&head)?;
        self.emit(body)?;
        self.emit(b"\nendobj\n")
    }

    /// Writes a stream object with `content` as its (uncompressed) data.
    fn stream(&mut self, id: u32, dict_extra: &[u8], content: &[u8]) -> std::io::Result<()> {
        let mut head = Vec::with_capacity(64);
        self.begin_obj(id, &mut head);
        head.extend_from_slice(b"<< /Length ");
        push_uint(&mut head, content.len() as u32);
        head.extend_from_slice(dict_extra);
        head.extend_from_slice(b" >>\nstream\n");
        self.emit(&head)?;
        self.emit(content)?;
        self.emit(b"\nendstream\nendobj\n")
    }
}

/// A PDF document written to `W` page by page.
///
/// Blocks are laid out top to bottom: the title (drawn by [`PdfWriter::new`]), then any mix of
/// [`meta`](Self::meta) lines, [`section`](Self::section) headings,
/// [`paragraph`](Self::paragraph)s and tables. Whenever a page is full its content stream and page
/// object are written to `W`, and [`finish`](Self::finish) writes the page tree, catalog, cross-
/// reference table and trailer.
///
/// What stays in memory: the current page's content (a few tens of KB at most), the current
/// table's column layout, and 16 bytes per page written so far (two object offsets), so a
/// million-row export (about 30,000 pages) keeps under 1 MB beyond what `W` itself holds.
/// `W` is written in page-sized chunks plus a few small writes per page; wrap unbuffered sinks
/// (files, sockets) in a [`std::io::BufWriter`]. A `Vec<u8>` sink may be drained (via
/// [`get_mut`](Self::get_mut)) between calls: offsets are counted here, not read back from `W`.
///
/// Nothing is written to `W` until the first page is complete or [`finish`](Self::finish) is
/// called. If a call returns an error, the document is incomplete and should be dropped.
#[derive(Debug)]
pub struct PdfWriter<W: Write> {
    sink: Sink<W>,
    started: bool,
    title: String,
    /// The title in WinAnsi, for the footers.
    footer_title: Vec<u8>,
    canvas: Canvas,
    pages: u32,
    /// The top of the free space on the current page.
    y: f32,
    /// Whether anything but the repeated table header has been drawn on the current page.
    page_used: bool,
    last: Block,
    table: Option<TableLayout>,
    scratch: Vec<u8>,
    lines: Vec<Line>,
}

impl<W: Write> PdfWriter<W> {
    /// Starts a document titled `title` (shown at the top of page 1, in every page's footer and
    /// in the document information). Writes nothing yet.
    pub fn new(out: W, title: &str) -> Self {
        let mut w = PdfWriter {
            sink: Sink {
                out,
                pos: 0,
                offsets: vec![0; FIRST_PAGE_OBJ as usize],
            },
            started: false,
            title: title.to_owned(),
            footer_title: Vec::new(),
            canvas: Canvas::default(),
            pages: 0,
            y: CONTENT_TOP,
            page_used: false,
            last: Block::Title,
            table: None,
            scratch: Vec::with_capacity(1024),
            lines: Vec::with_capacity(64),
        };
        encode_into(title, &mut w.footer_title, false);
        w.open_page();
        w.scratch.clear();
        encode_into(title, &mut w.scratch, false);
        w.lines.clear();
        let n = wrap(
            Font::HelveticaBold,
            &w.scratch,
            (0, w.scratch.len()),
            units_in(CONTENT_W, TITLE_SIZE),
            2,
            0,
            &mut w.lines,
        );
        for l in &w.lines {
            let top = w.y - l.row as f32 * TITLE_LEADING;
            w.canvas.text(
                Font::HelveticaBold,
                TITLE_SIZE,
                TITLE_INK,
                MARGIN,
                baseline(top, TITLE_LEADING, TITLE_SIZE),
                &w.scratch[l.start..l.end],
                l.ellipsis,
            );
        }
        w.y -= n.max(1) as f32 * TITLE_LEADING + 6.0;
        w.page_used = true;
        w
    }

    /// Adds a `key: value` line to the header block under the title (query, period, count,
    /// checkpoint, generated at, …). Long values wrap (up to 6 lines, then `…`).
    pub fn meta(&mut self, key: &str, value: &str) -> Result<&mut Self, PdfError> {
        self.before_block(Block::Meta)?;
        self.scratch.clear();
        encode_into(key, &mut self.scratch, false);
        let key_end = self.scratch.len();
        encode_into(value, &mut self.scratch, false);
        self.lines.clear();
        let key_lines = wrap(
            Font::HelveticaBold,
            &self.scratch,
            (0, key_end),
            units_in(META_KEY_W - 10.0, META_SIZE),
            1,
            0,
            &mut self.lines,
        );
        let value_lines = wrap(
            Font::Helvetica,
            &self.scratch,
            (key_end, self.scratch.len()),
            units_in(CONTENT_W - META_KEY_W, META_SIZE),
            META_MAX_LINES,
            1,
            &mut self.lines,
        );
        let h = key_lines.max(value_lines).max(1) as f32 * META_LEADING;
        self.room(h)?;
        for l in &self.lines {
            let (font, x) = if l.col == 0 {
                (Font::HelveticaBold, MARGIN)
            } else {
                (Font::Helvetica, MARGIN + META_KEY_W)
            };
            let top = self.y - l.row as f32 * META_LEADING;
            self.canvas.text(
                font,
                META_SIZE,
                INK,
                x,
                baseline(top, META_LEADING, META_SIZE),
                &self.scratch[l.start..l.end],
                l.ellipsis,
            );
        }
        self.y -= h;
        self.page_used = true;
        Ok(self)
    }

    /// Adds a section heading. It is moved to the next page rather than left alone at the
    /// bottom of one.
    pub fn section(&mut self, heading: &str) -> Result<&mut Self, PdfError> {
        self.before_block(Block::Other)?;
        if self.page_used {
            self.y -= 8.0;
        }
        self.scratch.clear();
        encode_into(heading, &mut self.scratch, false);
        self.lines.clear();
        let n = wrap(
            Font::HelveticaBold,
            &self.scratch,
            (0, self.scratch.len()),
            units_in(CONTENT_W, SECTION_SIZE),
            2,
            0,
            &mut self.lines,
        )
        .max(1);
        let h = n as f32 * SECTION_LEADING;
        // Keep the heading with at least three lines of what follows.
        self.room(h + 4.0 + 3.0 * BODY_LEADING)?;
        for l in &self.lines {
            let top = self.y - l.row as f32 * SECTION_LEADING;
            self.canvas.text(
                Font::HelveticaBold,
                SECTION_SIZE,
                TITLE_INK,
                MARGIN,
                baseline(top, SECTION_LEADING, SECTION_SIZE),
                &self.scratch[l.start..l.end],
                l.ellipsis,
            );
        }
        self.y -= h + 4.0;
        self.page_used = true;
        Ok(self)
    }

    /// Adds a paragraph, wrapped to the page width; `\n` starts a new line. May span pages.
    pub fn paragraph(&mut self, text: &str) -> Result<&mut Self, PdfError> {
        self.before_block(Block::Other)?;
        self.scratch.clear();
        encode_into(text, &mut self.scratch, true);
        self.lines.clear();
        let max = units_in(CONTENT_W, BODY_SIZE);
        let mut start = 0;
        let mut hard_lines = 0;
        while start <= self.scratch.len() {
            let end = self.scratch[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(self.scratch.len(), |i| start + i);
            let before = self.lines.len();
            let n = wrap(
                Font::Helvetica,
                &self.scratch,
                (start, end),
                max,
                usize::MAX,
                hard_lines,
                &mut self.lines,
            );
            if n == 0 {
                // An empty line still takes its height.
                self.lines.push(Line {
                    col: hard_lines,
                    row: 0,
                    start,
                    end: start,
                    ellipsis: false,
                });
            }
            debug_assert!(self.lines.len() > before);
            hard_lines += 1;
            start = end + 1;
        }
        for i in 0..self.lines.len() {
            self.room(BODY_LEADING)?;
            let l = self.lines[i];
            self.canvas.text(
                Font::Helvetica,
                BODY_SIZE,
                INK,
                MARGIN,
                baseline(self.y, BODY_LEADING, BODY_SIZE),
                &self.scratch[l.start..l.end],
                l.ellipsis,
            );
            self.y -= BODY_LEADING;
            self.page_used = true;
        }
        self.y -= 6.0;
        Ok(self)
    }

    /// Adds a whole table: `columns` and then every row of `rows`, each with one cell per
    /// column. Rows are consumed one at a time, so `rows` may be a lazy iterator over millions
    /// of records. Returns the number of rows.
    pub fn table<I, R, S>(&mut self, columns: &[Column], rows: I) -> Result<u64, PdfError>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        let mut table = self.begin_table(columns)?;
        for row in rows {
            table.row(row.as_ref())?;
        }
        Ok(table.end())
    }

    /// Opens a table to be filled row by row through the returned [`Table`] (for rows that
    /// arrive from a callback or cursor rather than an iterator). The table ends when the
    /// [`Table`] is ended or dropped.
    pub fn begin_table(&mut self, columns: &[Column]) -> Result<Table<'_, W>, PdfError> {
        if columns.is_empty() {
            return Err(PdfError::NoColumns);
        }
        let mut total = 0.0f32;
        for (index, c) in columns.iter().enumerate() {
            if !(c.weight.is_finite() && c.weight > 0.0) {
                return Err(PdfError::InvalidWeight {
                    index,
                    title: c.title.clone(),
                    weight: c.weight,
                });
            }
            total += c.weight;
        }
        let mut titles = Vec::new();
        let mut cols = Vec::with_capacity(columns.len());
        let mut x = MARGIN;
        for c in columns {
            let width = CONTENT_W * c.weight / total;
            let start = titles.len();
            encode_into(&c.title, &mut titles, false);
            cols.push(ColLayout {
                x,
                width,
                align: c.align,
                wrap: c.wrap,
                title: (start, titles.len()),
            });
            x += width;
        }
        self.before_block(Block::Other)?;
        if self.page_used {
            self.y -= 4.0;
        }
        // The header and at least one row must fit, or the table starts on the next page.
        self.room(TableLayout::header_height() + TABLE_LEADING + 2.0 * CELL_PAD_Y)?;
        self.table = Some(TableLayout {
            cols,
            titles,
            rows: 0,
        });
        self.draw_table_header();
        Ok(Table { writer: self })
    }

    /// Draws the open table's header row at the current position.
    fn draw_table_header(&mut self) {
        let Some(t) = self.table.as_ref() else { return };
        let h = TableLayout::header_height();
        self.canvas
            .rect(MARGIN, self.y - h, CONTENT_W, h, HEADER_FILL);
        let base = baseline(self.y - HEADER_PAD_Y, TABLE_LEADING, TABLE_SIZE);
        for c in &t.cols {
            let title = &t.titles[c.title.0..c.title.1];
            let max = units_in(c.width - 2.0 * CELL_PAD_X, TABLE_SIZE);
            let (n, ellipsis) = if Font::HelveticaBold.units(title) > max {
                (fit_with_ellipsis(Font::HelveticaBold, title, max), true)
            } else {
                (title.len(), false)
            };
            let x = aligned_x(c, Font::HelveticaBold, &title[..n], ellipsis);
            self.canvas.text(
                Font::HelveticaBold,
                TABLE_SIZE,
                INK,
                x,
                base,
                &title[..n],
                ellipsis,
            );
        }
        self.y -= h;
        self.canvas
            .hline(MARGIN, MARGIN + CONTENT_W, self.y, 0.8, RULE);
    }

    fn table_row<S: AsRef<str>>(&mut self, cells: &[S]) -> Result<(), PdfError> {
        let Some(t) = self.table.as_ref() else {
            return Ok(());
        };
        if cells.len() != t.cols.len() {
            return Err(PdfError::RowWidth {
                row: t.rows,
                expected: t.cols.len(),
                got: cells.len(),
            });
        }
        self.scratch.clear();
        self.lines.clear();
        let mut height_lines = 1;
        for (i, (cell, col)) in cells.iter().zip(&t.cols).enumerate() {
            let start = self.scratch.len();
            encode_into(cell.as_ref(), &mut self.scratch, false);
            let max = units_in(col.width - 2.0 * CELL_PAD_X, TABLE_SIZE);
            let max_lines = if col.wrap { MAX_CELL_LINES } else { 1 };
            let n = wrap(
                Font::Helvetica,
                &self.scratch,
                (start, self.scratch.len()),
                max,
                max_lines,
                i,
                &mut self.lines,
            );
            height_lines = height_lines.max(n);
        }
        let h = height_lines as f32 * TABLE_LEADING + 2.0 * CELL_PAD_Y;
        self.room(h)?;
        let Some(t) = self.table.as_mut() else {
            return Ok(());
        };
        if t.rows % 2 == 1 {
            self.canvas
                .rect(MARGIN, self.y - h, CONTENT_W, h, ZEBRA_FILL);
        }
        t.rows += 1;
        for l in &self.lines {
            let col = &t.cols[l.col];
            let text = &self.scratch[l.start..l.end];
            let top = self.y - CELL_PAD_Y - l.row as f32 * TABLE_LEADING;
            let x = aligned_x(col, Font::Helvetica, text, l.ellipsis);
            self.canvas.text(
                Font::Helvetica,
                TABLE_SIZE,
                INK,
                x,
                baseline(top, TABLE_LEADING, TABLE_SIZE),
                text,
                l.ellipsis,
            );
        }
        self.y -= h;
        self.page_used = true;
        Ok(())
    }

    fn end_table(&mut self) -> u64 {
        let Some(t) = self.table.take() else { return 0 };
        if t.rows == 0 {
            self.canvas.text(
                Font::Helvetica,
                TABLE_SIZE,
                MUTED,
                MARGIN + CELL_PAD_X,
                baseline(self.y - CELL_PAD_Y, TABLE_LEADING, TABLE_SIZE),
                b"No rows.",
                false,
            );
            self.y -= TABLE_LEADING + 2.0 * CELL_PAD_Y;
        }
        self.canvas
            .hline(MARGIN, MARGIN + CONTENT_W, self.y, 0.8, RULE);
        self.y -= 10.0;
        t.rows
    }

    /// Spacing between blocks; closes the header block with a rule.
    fn before_block(&mut self, next: Block) -> Result<(), PdfError> {
        match (self.last, next) {
            (Block::Meta, Block::Meta) | (Block::Title, Block::Meta) => {}
            (Block::Meta, _) => {
                self.y -= 6.0;
                self.canvas
                    .hline(MARGIN, MARGIN + CONTENT_W, self.y, 0.5, RULE);
                self.y -= 10.0;
            }
            (Block::Title, _) => self.y -= 6.0,
            (Block::Other, _) => {}
        }
        self.last = next;
        Ok(())
    }

    /// Starts a new page if fewer than `h` points are left on this one (unless this page holds
    /// nothing yet, so an oversized block is drawn rather than looping).
    fn room(&mut self, h: f32) -> Result<(), PdfError> {
        if self.y - h < CONTENT_BOTTOM && self.page_used {
            self.finish_page()?;
            self.open_page();
        }
        Ok(())
    }

    fn open_page(&mut self) {
        self.pages += 1;
        self.canvas.reset();
        self.y = CONTENT_TOP;
        self.page_used = false;
        self.draw_table_header();
    }

    /// Draws the footer and writes the current page's content stream and page object.
    fn finish_page(&mut self) -> Result<(), PdfError> {
        if self.table.is_some() {
            self.canvas
                .hline(MARGIN, MARGIN + CONTENT_W, self.y, 0.8, RULE);
        }
        self.draw_footer();
        self.canvas.close();
        self.start()?;
        let contents = FIRST_PAGE_OBJ + 2 * (self.pages - 1);
        self.sink.stream(contents, b"", &self.canvas.buf)?;
        let mut page = Vec::with_capacity(64);
        page.extend_from_slice(b"<< /Type /Page /Parent 2 0 R /Contents ");
        push_uint(&mut page, contents);
        page.extend_from_slice(b" 0 R >>");
        self.sink.object(contents + 1, &page)?;
        Ok(())
    }

    fn draw_footer(&mut self) {
        self.canvas
            .hline(MARGIN, MARGIN + CONTENT_W, FOOTER_RULE_Y, 0.5, RULE);
        let mut label = b"Page ".to_vec();
        push_uint(&mut label, self.pages);
        label.extend_from_slice(b" of ");
        self.canvas.text(
            Font::Helvetica,
            FOOTER_SIZE,
            FAINT,
            MARGIN,
            FOOTER_BASELINE,
            &label,
            false,
        );
        // The total is not known until the end: it is a form XObject written by `finish`.
        let label_w = Font::Helvetica.units(&label) as f32 * FOOTER_SIZE / 1000.0;
        self.canvas
            .xobject(b"/Tot", MARGIN + label_w, FOOTER_BASELINE);
        // The title, right-aligned (row text in `scratch` may still be pending, so not there).
        let title = &self.footer_title;
        let max = units_in(CONTENT_W * 0.6, FOOTER_SIZE);
        let (n, ellipsis) = if Font::Helvetica.units(title) > max {
            (fit_with_ellipsis(Font::Helvetica, title, max), true)
        } else {
            (title.len(), false)
        };
        let mut w = Font::Helvetica.units(&title[..n]);
        if ellipsis {
            w += Font::Helvetica.code_width(ELLIPSIS);
        }
        let x = MARGIN + CONTENT_W - w as f32 * FOOTER_SIZE / 1000.0;
        self.canvas.text(
            Font::Helvetica,
            FOOTER_SIZE,
            FAINT,
            x,
            FOOTER_BASELINE,
            &title[..n],
            ellipsis,
        );
    }

    /// Writes the file header and the objects every document has, once.
    fn start(&mut self) -> Result<(), PdfError> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        // The second line marks the file as binary for transfer tools.
        self.sink.emit(b"%PDF-1.4\n%\xE2\xE3\xCF\xD3\n")?;
        for (id, font) in [
            (FONT_REGULAR_OBJ, Font::Helvetica),
            (FONT_BOLD_OBJ, Font::HelveticaBold),
        ] {
            // The widths are optional for the standard 14 fonts; giving them makes readers
            // that substitute another sans scale it to the metrics the layout was made with.
            let mut dict = format!(
                "<< /Type /Font /Subtype /Type1 /BaseFont /{} /Encoding /WinAnsiEncoding \
                 /FirstChar 32 /LastChar 255\n/Widths [",
                font.base_font()
            )
            .into_bytes();
            for (i, &w) in font.widths().iter().enumerate() {
                push_uint(&mut dict, u32::from(w));
                dict.push(if i % 16 == 15 { b'\n' } else { b' ' });
            }
            dict.extend_from_slice(b"] >>");
            self.sink.object(id, &dict)?;
        }
        let mut info = b"<< /Title <FEFF".to_vec();
        for unit in self.title.encode_utf16() {
            info.extend_from_slice(format!("{unit:04X}").as_bytes());
        }
        info.extend_from_slice(b"> /Producer (Vellum vellum-pdf) >>");
        self.sink.object(INFO_OBJ, &info)?;
        Ok(())
    }

    /// Ends the last page and writes the page tree, catalog, cross-reference table and trailer.
    /// Returns the sink, flushed.
    pub fn finish(mut self) -> Result<W, PdfError> {
        self.finish_page()?;

        // The "M" of every footer's "Page N of M", in the footer's font and colour.
        let mut total = Canvas::default();
        let mut digits = Vec::new();
        push_uint(&mut digits, self.pages);
        total.text(
            Font::Helvetica,
            FOOTER_SIZE,
            FAINT,
            0.0,
            0.0,
            &digits,
            false,
        );
        total.close();
        let total = total.buf;
        self.sink.stream(
            TOTAL_PAGES_OBJ,
            b" /Type /XObject /Subtype /Form /BBox [0 -5 100 15] \
              /Resources << /Font << /F1 3 0 R >> >>",
            &total,
        )?;

        let mut buf = Vec::with_capacity(16 * 1024);
        self.sink.begin_obj(PAGES_OBJ, &mut buf);
        buf.extend_from_slice(
            b"<< /Type /Pages /MediaBox [0 0 841.89 595.28] /Resources << /Font << /F1 3 0 R \
              /F2 4 0 R >> /XObject << /Tot 6 0 R >> >> /Count ",
        );
        push_uint(&mut buf, self.pages);
        buf.extend_from_slice(b"\n/Kids [");
        for p in 0..self.pages {
            push_uint(&mut buf, FIRST_PAGE_OBJ + 2 * p + 1);
            buf.extend_from_slice(if p % 10 == 9 { b" 0 R\n" } else { b" 0 R " });
            if buf.len() > 12 * 1024 {
                self.sink.emit(&buf)?;
                buf.clear();
            }
        }
        buf.extend_from_slice(b"] >>\nendobj\n");
        self.sink.emit(&buf)?;
        buf.clear();

        self.sink
            .object(CATALOG_OBJ, b"<< /Type /Catalog /Pages 2 0 R >>")?;

        let xref_at = self.sink.pos;
        let size = self.sink.offsets.len();
        buf.extend_from_slice(b"xref\n0 ");
        push_uint(&mut buf, size as u32);
        buf.extend_from_slice(b"\n0000000000 65535 f \n");
        for i in 1..size {
            let off = self.sink.offsets[i];
            buf.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
            if buf.len() > 12 * 1024 {
                self.sink.emit(&buf)?;
                buf.clear();
            }
        }
        buf.extend_from_slice(b"trailer\n<< /Size ");
        push_uint(&mut buf, size as u32);
        buf.extend_from_slice(b" /Root 1 0 R /Info 5 0 R >>\nstartxref\n");
        buf.extend_from_slice(xref_at.to_string().as_bytes());
        buf.extend_from_slice(b"\n%%EOF\n");
        self.sink.emit(&buf)?;
        self.sink.out.flush()?;
        Ok(self.sink.out)
    }

    /// Pages started so far (the current one included).
    #[must_use]
    pub fn page_count(&self) -> u32 {
        self.pages
    }

    /// Bytes written to the sink so far.
    #[must_use]
    pub fn bytes_written(&self) -> u64 {
        self.sink.pos
    }

    /// The sink, e.g. to drain a `Vec<u8>` between calls and stream its bytes elsewhere. Only
    /// take bytes out; writing into it would corrupt the document.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.sink.out
    }
}

/// Where a line of text starts in its cell.
fn aligned_x(col: &ColLayout, font: Font, text: &[u8], ellipsis: bool) -> f32 {
    let mut units = font.units(text);
    if ellipsis {
        units += font.code_width(ELLIPSIS);
    }
    let w = units as f32 * TABLE_SIZE / 1000.0;
    match col.align {
        Align::Left => col.x + CELL_PAD_X,
        Align::Right => col.x + col.width - CELL_PAD_X - w,
        Align::Center => col.x + (col.width - w) / 2.0,
    }
}

/// An open table, filled with [`Table::row`]; from [`PdfWriter::begin_table`].
///
/// Each page the table reaches repeats its header row. Dropping it ends the table like
/// [`Table::end`].
#[derive(Debug)]
pub struct Table<'a, W: Write> {
    writer: &'a mut PdfWriter<W>,
}

impl<W: Write> Table<'_, W> {
    /// Adds one row, one cell per column. Cells are cut with `…` to their column's width (or,
    /// for wrapping columns, after two lines). Starts a new page when this one is full, which
    /// writes the finished page to the sink.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) -> Result<(), PdfError> {
        self.writer.table_row(cells)
    }

    /// Rows added so far.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.writer.table.as_ref().map_or(0, |t| t.rows)
    }

    /// Ends the table (a closing rule, or "No rows." if it has none) and returns its row count.
    pub fn end(self) -> u64 {
        let rows = self.rows();
        drop(self);
        rows
    }
}

impl<W: Write> Drop for Table<'_, W> {
    fn drop(&mut self) {
        self.writer.end_table();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(text: &str, max: u32, max_lines: usize) -> Vec<String> {
        let mut scratch = Vec::new();
        encode_into(text, &mut scratch, false);
        let mut out = Vec::new();
        wrap(
            Font::Helvetica,
            &scratch,
            (0, scratch.len()),
            max,
            max_lines,
            0,
            &mut out,
        );
        out.iter()
            .map(|l| {
                let mut s = String::from_utf8_lossy(&scratch[l.start..l.end]).into_owned();
                if l.ellipsis {
                    s.push('…');
                }
                s
            })
            .collect()
    }

    #[test]
    fn wrapping() {
        // "aaaa" is 2224 units; a space is 278.
        assert_eq!(wrapped("aaaa aaaa aaaa", 5000, 9), ["aaaa aaaa", "aaaa"]);
        assert_eq!(wrapped("  aaaa   ", 5000, 9), ["aaaa"]);
        assert_eq!(wrapped("", 5000, 9), Vec::<String>::new());
        assert_eq!(wrapped("aaaaaaaaaa", 2224, 9), ["aaaa", "aaaa", "aa"]);
        assert_eq!(wrapped("aaaa aaaa aaaa", 5000, 1), ["aaaa aa…"]);
        assert_eq!(wrapped("aaaa aaaa aaaa", 5000, 2), ["aaaa aaaa", "aaaa"]);
        assert_eq!(
            wrapped("aaaa aaaa aaaa aaaa aaaa", 5000, 2),
            ["aaaa aaaa", "aaaa aa…"]
        );
        // A column too narrow for anything still makes progress.
        assert_eq!(wrapped("ab", 10, 9), ["a", "b"]);
        assert_eq!(wrapped("ab", 10, 1), ["…"]);
    }
}
