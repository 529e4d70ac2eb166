//! One page's content stream, built in memory until the page is full.
//!
//! Coordinates are kept as integer hundredths of a point, so relative text moves (`Td`) are exact
//! and never drift however many cells a page has.

use crate::metrics::{ELLIPSIS, Font};

/// An RGB colour, each component in hundredths (0..=100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rgb(pub(crate) u8, pub(crate) u8, pub(crate) u8);

/// A length or coordinate in hundredths of a point.
pub(crate) fn cp(points: f32) -> i32 {
    (points * 100.0).round() as i32
}

/// The page content under construction, with just enough graphics state tracked to avoid
/// repeating operators.
#[derive(Debug, Default)]
pub(crate) struct Canvas {
    pub(crate) buf: Vec<u8>,
    in_text: bool,
    font: Option<(Font, i32)>,
    /// The text line origin inside the current `BT` block.
    line: (i32, i32),
    fill: Option<Rgb>,
}

impl Canvas {
    /// Empties the canvas for a new page, keeping its allocation.
    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.in_text = false;
        self.font = None;
        self.line = (0, 0);
        self.fill = None;
    }

    /// Writes a number given in hundredths, followed by a space.
    fn num(&mut self, centi: i32) {
        let neg = centi < 0;
        let v = centi.unsigned_abs();
        if neg {
            self.buf.push(b'-');
        }
        push_uint(&mut self.buf, v / 100);
        let frac = v % 100;
        if frac != 0 {
            self.buf.push(b'.');
            self.buf.push(b'0' + (frac / 10) as u8);
            if !frac.is_multiple_of(10) {
                self.buf.push(b'0' + (frac % 10) as u8);
            }
        }
        self.buf.push(b' ');
    }

    fn color(&mut self, c: Rgb) {
        for v in [c.0, c.1, c.2] {
            self.num(i32::from(v));
        }
    }

    fn set_fill(&mut self, c: Rgb) {
        if self.fill != Some(c) {
            self.color(c);
            self.buf.extend_from_slice(b"rg\n");
            self.fill = Some(c);
        }
    }

    fn end_text(&mut self) {
        if self.in_text {
            self.buf.extend_from_slice(b"ET\n");
            self.in_text = false;
        }
    }

    /// Shows already-encoded text with its baseline starting at (`x`, `y`) points, adding `…`
    /// when `ellipsis` is set.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn text(
        &mut self,
        font: Font,
        size: f32,
        color: Rgb,
        x: f32,
        y: f32,
        encoded: &[u8],
        ellipsis: bool,
    ) {
        if encoded.is_empty() && !ellipsis {
            return;
        }
        self.set_fill(color);
        if !self.in_text {
            self.buf.extend_from_slice(b"BT\n");
            self.in_text = true;
            self.line = (0, 0);
            self.font = None;
        }
        let size_c = cp(size);
        if self.font != Some((font, size_c)) {
            self.buf.extend_from_slice(font.resource());
            self.buf.push(b' ');
            self.num(size_c);
            self.buf.extend_from_slice(b"Tf\n");
            self.font = Some((font, size_c));
        }
        let (x, y) = (cp(x), cp(y));
        self.num(x - self.line.0);
        self.num(y - self.line.1);
        self.line = (x, y);
        self.buf.extend_from_slice(b"Td(");
        push_escaped(&mut self.buf, encoded);
        if ellipsis {
            self.buf.push(ELLIPSIS);
        }
        self.buf.extend_from_slice(b")Tj\n");
    }

    /// Fills a rectangle whose lower-left corner is (`x`, `y`).
    pub(crate) fn rect(&mut self, x: f32, y: f32, w: f32, h: f32, color: Rgb) {
        self.end_text();
        self.set_fill(color);
        for v in [x, y, w, h] {
            self.num(cp(v));
        }
        self.buf.extend_from_slice(b"re f\n");
    }

    /// Strokes a horizontal rule.
    pub(crate) fn hline(&mut self, x1: f32, x2: f32, y: f32, width: f32, color: Rgb) {
        self.end_text();
        self.buf.extend_from_slice(b"q ");
        self.num(cp(width));
        self.buf.extend_from_slice(b"w ");
        self.color(color);
        self.buf.extend_from_slice(b"RG ");
        let y = cp(y);
        self.num(cp(x1));
        self.num(y);
        self.buf.extend_from_slice(b"m ");
        self.num(cp(x2));
        self.num(y);
        self.buf.extend_from_slice(b"l S Q\n");
    }

    /// Paints the form XObject `name` (e.g. `/Tot`) with its origin at (`x`, `y`).
    pub(crate) fn xobject(&mut self, name: &[u8], x: f32, y: f32) {
        self.end_text();
        self.buf.extend_from_slice(b"q 1 0 0 1 ");
        self.num(cp(x));
        self.num(cp(y));
        self.buf.extend_from_slice(b"cm ");
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(b" Do Q\n");
    }

    /// Closes any open text object; call before taking [`Canvas::buf`].
    pub(crate) fn close(&mut self) {
        self.end_text();
    }
}

/// Appends the decimal digits of `v`.
pub(crate) fn push_uint(buf: &mut Vec<u8>, v: u32) {
    let mut digits = [0u8; 10];
    let mut n = v;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Appends `encoded` as the body of a PDF literal string: `(`, `)` and `\` are escaped, and so
/// are CR and LF (which a reader would otherwise normalize).
pub(crate) fn push_escaped(buf: &mut Vec<u8>, encoded: &[u8]) {
    for &b in encoded {
        match b {
            b'(' | b')' | b'\\' => {
                buf.push(b'\\');
                buf.push(b);
            }
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        let mut c = Canvas::default();
        for v in [0, 5, 50, 123, -7, 84189, -100, 1] {
            c.num(v);
        }
        assert_eq!(c.buf, b"0 0.05 0.5 1.23 -0.07 841.89 -1 0.01 ");
        let mut b = Vec::new();
        push_uint(&mut b, 0);
        push_uint(&mut b, 4_294_967_295);
        assert_eq!(b, b"04294967295");
    }

    #[test]
    fn escaping() {
        let mut b = Vec::new();
        push_escaped(&mut b, br"a(b)c\d");
        assert_eq!(b, br"a\(b\)c\\d");
    }

    #[test]
    fn relative_moves_do_not_drift() {
        let mut c = Canvas::default();
        let black = Rgb(0, 0, 0);
        c.text(Font::Helvetica, 8.0, black, 10.333, 100.0, b"a", false);
        c.text(Font::Helvetica, 8.0, black, 20.666, 100.0, b"b", true);
        let s = String::from_utf8_lossy(&c.buf).into_owned();
        assert!(s.contains("10.33 100 Td(a)Tj"), "{s}");
        assert!(s.contains("10.34 0 Td(b\u{FFFD})Tj"), "{s}");
        assert_eq!(s.matches("Tf").count(), 1);
    }
}
