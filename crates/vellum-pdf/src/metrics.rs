//! Helvetica metrics and WinAnsiEncoding.
//!
//! The documents use two of the PDF standard 14 fonts, Helvetica and Helvetica-Bold, which every
//! reader provides, so nothing is embedded. To lay text out we still need each glyph's advance
//! width: the tables below are the `WX` values of Adobe's Core 14 AFM files (Helvetica and
//! Helvetica-Bold, version 003.001), indexed by WinAnsiEncoding code (PDF 32000-1:2008, Annex D)
//! from 32 to 255, in 1/1000 em. Codes WinAnsi leaves undefined (127, 129, 141, 143, 144, 157)
//! have width 0; [`encode_char`] never produces them.

/// One of the two fonts a document uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Font {
    /// Helvetica (regular), resource `/F1`.
    Helvetica,
    /// Helvetica-Bold, resource `/F2`.
    HelveticaBold,
}

impl Font {
    /// The advance widths of WinAnsi codes 32..=255, in 1/1000 em.
    pub(crate) fn widths(self) -> &'static [u16; 224] {
        match self {
            Font::Helvetica => &HELVETICA,
            Font::HelveticaBold => &HELVETICA_BOLD,
        }
    }

    /// The advance width of one WinAnsi code, in 1/1000 em (0 for control codes).
    pub(crate) fn code_width(self, code: u8) -> u32 {
        match code.checked_sub(32) {
            Some(i) => u32::from(self.widths()[usize::from(i)]),
            None => 0,
        }
    }

    /// The advance width of WinAnsi-encoded text, in 1/1000 em.
    pub(crate) fn units(self, encoded: &[u8]) -> u32 {
        encoded.iter().map(|&b| self.code_width(b)).sum()
    }

    /// The name of the font in the page resources.
    pub(crate) fn resource(self) -> &'static [u8] {
        match self {
            Font::Helvetica => b"/F1",
            Font::HelveticaBold => b"/F2",
        }
    }

    /// The PostScript name of the standard font.
    pub(crate) fn base_font(self) -> &'static str {
        match self {
            Font::Helvetica => "Helvetica",
            Font::HelveticaBold => "Helvetica-Bold",
        }
    }
}

/// The width of `text` set in `font` at `size` points, in points, after the same WinAnsi
/// encoding the renderer uses (so unencodable characters are measured as `?`).
#[must_use]
pub fn text_width(font: Font, text: &str, size: f32) -> f32 {
    let units: u32 = text.chars().map(|c| font.code_width(encode_char(c))).sum();
    units as f32 * size / 1000.0
}

/// The WinAnsiEncoding code of the horizontal ellipsis `…`.
pub(crate) const ELLIPSIS: u8 = 0x85;

/// Maps one character to its WinAnsiEncoding code.
///
/// Control characters (C0, DEL, C1), including tab and line breaks, become a space; any other
/// character WinAnsi cannot show becomes `?`. No normalization is done: a decomposed `e` +
/// U+0301 shows as `e?` (Vellum stores text in NFC, where it is the single code `é`).
#[must_use]
pub fn encode_char(c: char) -> u8 {
    let u = u32::from(c);
    match u {
        0x20..=0x7E | 0xA0..=0xFF => u as u8,
        0x00..=0x1F | 0x7F..=0x9F => b' ',
        0x20AC => 0x80, // €
        0x201A => 0x82, // ‚
        0x0192 => 0x83, // ƒ
        0x201E => 0x84, // „
        0x2026 => 0x85, // …
        0x2020 => 0x86, // †
        0x2021 => 0x87, // ‡
        0x02C6 => 0x88, // ˆ
        0x2030 => 0x89, // ‰
        0x0160 => 0x8A, // Š
        0x2039 => 0x8B, // ‹
        0x0152 => 0x8C, // Œ
        0x017D => 0x8E, // Ž
        0x2018 => 0x91, // '
        0x2019 => 0x92, // '
        0x201C => 0x93, // "
        0x201D => 0x94, // "
        0x2022 => 0x95, // •
        0x2013 => 0x96, // –
        0x2014 => 0x97, // —
        0x02DC => 0x98, // ˜
        0x2122 => 0x99, // ™
        0x0161 => 0x9A, // š
        0x203A => 0x9B, // ›
        0x0153 => 0x9C, // œ
        0x017E => 0x9E, // ž
        0x0178 => 0x9F, // Ÿ
        _ => b'?',
    }
}

/// Appends `text` in WinAnsiEncoding to `out`. With `keep_newlines`, `\n` is kept as a line
/// break marker (and `\r\n` counts as one) instead of becoming a space.
pub(crate) fn encode_into(text: &str, out: &mut Vec<u8>, keep_newlines: bool) {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if keep_newlines && (c == '\n' || c == '\r') {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push(b'\n');
        } else {
            out.push(encode_char(c));
        }
    }
}

/// Helvetica advance widths for WinAnsi codes 32..=255 (Adobe AFM `WX`, 1/1000 em).
#[rustfmt::skip]
const HELVETICA: [u16; 224] = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, // 0x20..=0x2f
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, // 0x30..=0x3f
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778, // 0x40..=0x4f
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556, // 0x50..=0x5f
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556, // 0x60..=0x6f
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584, 0, // 0x70..=0x7f
    556, 0, 222, 556, 333, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, // 0x80..=0x8f
    0, 222, 222, 333, 333, 350, 556, 1000, 333, 1000, 500, 333, 944, 0, 500, 667, // 0x90..=0x9f
    278, 333, 556, 556, 556, 556, 260, 556, 333, 737, 370, 556, 584, 333, 737, 333, // 0xa0..=0xaf
    400, 584, 333, 333, 333, 578, 537, 278, 333, 333, 365, 556, 834, 834, 834, 611, // 0xb0..=0xbf
    667, 667, 667, 667, 667, 667, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, // 0xc0..=0xcf
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611, // 0xd0..=0xdf
    556, 556, 556, 556, 556, 556, 889, 500, 556, 556, 556, 556, 278, 278, 278, 278, // 0xe0..=0xef
    556, 556, 556, 556, 556, 556, 556, 584, 611, 556, 556, 556, 556, 500, 556, 500, // 0xf0..=0xff
];

/// Helvetica-Bold advance widths for WinAnsi codes 32..=255 (Adobe AFM `WX`, 1/1000 em).
#[rustfmt::skip]
const HELVETICA_BOLD: [u16; 224] = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, // 0x20..=0x2f
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, // 0x30..=0x3f
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778, // 0x40..=0x4f
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556, // 0x50..=0x5f
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611, // 0x60..=0x6f
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584, 0, // 0x70..=0x7f
    556, 0, 278, 556, 500, 1000, 556, 556, 333, 1000, 667, 333, 1000, 0, 611, 0, // 0x80..=0x8f
    0, 278, 278, 500, 500, 350, 556, 1000, 333, 1000, 556, 333, 944, 0, 500, 667, // 0x90..=0x9f
    278, 333, 556, 556, 556, 556, 280, 556, 333, 737, 370, 556, 584, 333, 737, 333, // 0xa0..=0xaf
    400, 584, 333, 333, 333, 611, 556, 278, 333, 333, 365, 556, 834, 834, 834, 611, // 0xb0..=0xbf
    722, 722, 722, 722, 722, 722, 1000, 722, 667, 667, 667, 667, 278, 278, 278, 278, // 0xc0..=0xcf
    722, 722, 778, 778, 778, 778, 778, 584, 778, 722, 722, 722, 722, 667, 667, 611, // 0xd0..=0xdf
    556, 556, 556, 556, 556, 556, 889, 556, 556, 556, 556, 556, 278, 278, 278, 278, // 0xe0..=0xef
    611, 611, 611, 611, 611, 611, 611, 584, 611, 611, 611, 611, 611, 556, 611, 556, // 0xf0..=0xff
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_widths() {
        // Spot values from the AFM files.
        assert_eq!(Font::Helvetica.code_width(b' '), 278);
        assert_eq!(Font::Helvetica.code_width(b'@'), 1015);
        assert_eq!(Font::Helvetica.code_width(b'W'), 944);
        assert_eq!(Font::Helvetica.code_width(b'i'), 222);
        assert_eq!(Font::Helvetica.code_width(0xE9), 556); // eacute
        assert_eq!(Font::Helvetica.code_width(ELLIPSIS), 1000);
        assert_eq!(Font::HelveticaBold.code_width(b'@'), 975);
        assert_eq!(Font::HelveticaBold.code_width(b'i'), 278);
        assert_eq!(Font::HelveticaBold.code_width(0x80), 556); // Euro
        // "Hello" = H 722 + e 556 + l 222 + l 222 + o 556.
        assert_eq!(Font::Helvetica.units(b"Hello"), 2278);
        assert!((text_width(Font::Helvetica, "Hello", 10.0) - 22.78).abs() < 1e-4);
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        encode_into("aé€…\t\u{0301}北😀ÿ", &mut out, false);
        assert_eq!(out, [b'a', 0xE9, 0x80, 0x85, b' ', b'?', b'?', b'?', 0xFF]);
        out.clear();
        encode_into("a\r\nb\nc", &mut out, true);
        assert_eq!(out, b"a\nb\nc");
        // Every code the encoder can produce has a width.
        for c in (0u32..0x3000).filter_map(char::from_u32) {
            let code = encode_char(c);
            assert!(Font::Helvetica.code_width(code) > 0, "{c:?} -> {code}");
        }
    }
}
