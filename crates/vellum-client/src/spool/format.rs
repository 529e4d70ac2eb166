//! Byte-level formats: record frames, the cursor file, segment file names, and the sequential
//! frame reader shared by recovery, [`super::inspect`] and the delivery-side readers.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Position, SpoolError, SpooledEvent};
use crate::event::Priority;

/// First four bytes of every record frame.
pub(super) const RECORD_MAGIC: [u8; 4] = *b"VSR1";
/// Magic, payload length, payload CRC.
pub(super) const HEADER_LEN: u64 = 12;
/// First four bytes of a cursor file.
const CURSOR_MAGIC: [u8; 4] = *b"VSC1";
/// Magic, segment (u64 LE), offset (u64 LE), CRC-32 of the previous 20 bytes (u32 LE).
pub(super) const CURSOR_LEN: usize = 24;
/// Read buffer of the sequential readers.
const READ_BUFFER: usize = 256 * 1024;
/// Largest torn tail searched for intact frames; a bigger damaged tail is quarantined unread.
const MAX_TAIL_SEARCH: u64 = 64 * 1024 * 1024;

/// Encodes one record as a frame: header, then the JSON payload.
pub(super) fn encode_frame(record: &SpooledEvent) -> Result<Vec<u8>, SpoolError> {
    let mut frame = Vec::with_capacity(512);
    frame.extend_from_slice(&RECORD_MAGIC);
    frame.extend_from_slice(&[0; 8]);
    serde_json::to_writer(&mut frame, record).map_err(SpoolError::Encode)?;
    let payload = &frame[HEADER_LEN as usize..];
    let len = u32::try_from(payload.len()).map_err(|_| SpoolError::TooLarge {
        bytes: frame.len() as u64,
        max: u64::from(u32::MAX),
    })?;
    let crc = crc32fast::hash(payload);
    frame[4..8].copy_from_slice(&len.to_le_bytes());
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(frame)
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy)]
struct Header {
    len: u32,
    crc: u32,
}

fn decode_header(bytes: &[u8; HEADER_LEN as usize]) -> Option<Header> {
    if bytes[0..4] != RECORD_MAGIC {
        return None;
    }
    let len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let crc = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    Some(Header { len, crc })
}

/// File name of segment `segment`: zero-padded so that names sort like numbers.
pub(super) fn segment_file_name(segment: u64) -> String {
    format!("{segment:020}.seg")
}

/// The segment number of a segment file name; `None` for any other file.
pub(super) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a cursor file's content.
pub(super) fn encode_cursor(position: Position) -> [u8; CURSOR_LEN] {
    let mut out = [0u8; CURSOR_LEN];
    out[0..4].copy_from_slice(&CURSOR_MAGIC);
    out[4..12].copy_from_slice(&position.segment.to_le_bytes());
    out[12..20].copy_from_slice(&position.offset.to_le_bytes());
    let crc = crc32fast::hash(&out[0..20]);
    out[20..24].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a cursor file's content; the error says what is wrong with it.
pub(super) fn decode_cursor(bytes: &[u8]) -> Result<Position, String> {
    if bytes.len() != CURSOR_LEN {
        return Err(format!("{} bytes instead of {CURSOR_LEN}", bytes.len()));
    }
    if bytes[0..4] != CURSOR_MAGIC {
        return Err("bad magic".into());
    }
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[20..24]);
    if crc32fast::hash(&bytes[0..20]) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch".into());
    }
    let mut segment = [0u8; 8];
    segment.copy_from_slice(&bytes[4..12]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[12..20]);
    Ok(Position {
        segment: u64::from_le_bytes(segment),
        offset: u64::from_le_bytes(offset),
    })
}

/// The fields recovery checks in a payload, without building the event's JSON tree.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(rename = "idempotencyKey")]
    _idempotency_key: String,
    #[serde(rename = "priority")]
    _priority: Priority,
    spooled_at_micros: i64,
    #[serde(rename = "event")]
    _event: IgnoredAny,
}

/// Checks that a payload is a well-formed [`SpooledEvent`]; returns its `spooledAtMicros`.
pub(super) fn probe_payload(payload: &[u8]) -> Result<i64, serde_json::Error> {
    serde_json::from_slice::<Probe>(payload).map(|p| p.spooled_at_micros)
}

/// Decodes a payload.
pub(super) fn decode_payload(payload: &[u8]) -> Result<SpooledEvent, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// What is wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    /// Fewer than 12 bytes left.
    ShortHeader,
    /// The first four bytes are not `VSR1`.
    BadMagic,
    /// The payload runs past the end of the segment.
    ShortPayload,
    /// The payload does not match its CRC.
    BadCrc,
    /// The CRC matches but the payload is not a spooled event (written by something else).
    BadPayload(String),
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::ShortHeader => f.write_str("truncated record header"),
            Damage::BadMagic => f.write_str("bad record magic"),
            Damage::ShortPayload => f.write_str("truncated record payload"),
            Damage::BadCrc => f.write_str("record checksum mismatch"),
            Damage::BadPayload(e) => write!(f, "record payload is not a spooled event: {e}"),
        }
    }
}

/// A frame found by [`FrameReader`].
#[derive(Debug, Clone, Copy)]
pub(super) struct FrameInfo {
    /// Where the frame starts in its segment.
    pub(super) offset: u64,
    /// Header plus payload.
    pub(super) len: u64,
}

/// `Read` + `Seek` over a file with positional reads, so that no file offset is shared.
struct PosReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for PosReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for PosReader<'_> {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        self.pos = match from {
            SeekFrom::Start(n) => n,
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "seek before the start")
            })?,
            SeekFrom::End(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "seek from the end",
                ));
            }
        };
        Ok(self.pos)
    }
}

/// Copies `[from, to)` of `file` into `out`.
pub(super) fn copy_range(
    file: &File,
    from: u64,
    to: u64,
    out: &mut impl io::Write,
) -> io::Result<u64> {
    let mut reader = PosReader { file, pos: from }.take(to.saturating_sub(from));
    io::copy(&mut reader, out)
}

/// Reads the frames of `[start, end)` of a segment in order. `end` is a length known to be
/// durable (or, for read-only inspection, the file's length), so bytes a writer is appending
/// past it are never looked at.
pub(super) struct FrameReader<'a> {
    reader: BufReader<PosReader<'a>>,
    offset: u64,
    end: u64,
    done: bool,
}

impl<'a> FrameReader<'a> {
    /// A reader of `[start, end)` of `file`.
    pub(super) fn new(file: &'a File, start: u64, end: u64) -> Self {
        Self {
            reader: BufReader::with_capacity(READ_BUFFER, PosReader { file, pos: start }),
            offset: start,
            end,
            done: false,
        }
    }

    /// The next frame: `Ok(None)` at `end`, `Ok(Some(Err(..)))` at a damaged frame (after
    /// which the reader stops). With `payload`, the payload is read into it and its CRC
    /// checked; without, it is skipped unchecked (enough to count records).
    pub(super) fn next_frame(
        &mut self,
        payload: Option<&mut Vec<u8>>,
    ) -> io::Result<Option<Result<FrameInfo, (u64, Damage)>>> {
        if self.done || self.offset >= self.end {
            return Ok(None);
        }
        let offset = self.offset;
        let fail = |this: &mut Self, damage: Damage| {
            this.done = true;
            Ok(Some(Err((offset, damage))))
        };
        if self.end - offset < HEADER_LEN {
            return fail(self, Damage::ShortHeader);
        }
        let mut raw = [0u8; HEADER_LEN as usize];
        match self.reader.read_exact(&mut raw) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return fail(self, Damage::ShortHeader);
            }
            Err(e) => return Err(e),
        }
        let Some(header) = decode_header(&raw) else {
            return fail(self, Damage::BadMagic);
        };
        let len = u64::from(header.len);
        if self.end - offset - HEADER_LEN < len {
            return fail(self, Damage::ShortPayload);
        }
        match payload {
            Some(buf) => {
                buf.clear();
                buf.resize(header.len as usize, 0);
                match self.reader.read_exact(buf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        return fail(self, Damage::ShortPayload);
                    }
                    Err(e) => return Err(e),
                }
                if crc32fast::hash(buf) != header.crc {
                    return fail(self, Damage::BadCrc);
                }
            }
            None => {
                let delta = i64::try_from(len).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "record length overflow")
                })?;
                self.reader.seek_relative(delta)?;
            }
        }
        let info = FrameInfo {
            offset,
            len: HEADER_LEN + len,
        };
        self.offset += info.len;
        Ok(Some(Ok(info)))
    }
}

/// What a full scan of a segment found.
#[derive(Debug, Clone, Default)]
pub(super) struct Scan {
    /// End of the last intact record (the whole file when nothing is damaged).
    pub(super) valid_len: u64,
    /// Intact records.
    pub(super) records: u64,
    /// The largest record boundary (0, or the end of an intact record) at or before the probe.
    pub(super) boundary_before_probe: u64,
    /// Intact records that end at or before the probe.
    pub(super) records_before_probe: u64,
    /// `spooledAtMicros` of the first intact record starting at or after the probe.
    pub(super) first_spooled_at_after_probe: Option<i64>,
    /// The first damaged frame, if any.
    pub(super) damage: Option<(u64, Damage)>,
}

/// Reads every frame of `[0, len)`, checking CRCs and payload shape, and locates `probe`
/// (a cursor offset) among the record boundaries.
pub(super) fn scan_segment(file: &File, len: u64, probe: u64) -> io::Result<Scan> {
    let mut scan = Scan::default();
    let mut reader = FrameReader::new(file, 0, len);
    let mut payload = Vec::new();
    while let Some(frame) = reader.next_frame(Some(&mut payload))? {
        let info = match frame {
            Ok(info) => info,
            Err(damage) => {
                scan.damage = Some(damage);
                break;
            }
        };
        let spooled_at = match probe_payload(&payload) {
            Ok(spooled_at) => spooled_at,
            Err(e) => {
                scan.damage = Some((info.offset, Damage::BadPayload(e.to_string())));
                break;
            }
        };
        let end = info.offset + info.len;
        scan.records += 1;
        scan.valid_len = end;
        if end <= probe {
            scan.records_before_probe += 1;
            scan.boundary_before_probe = end;
        }
        if info.offset >= probe && scan.first_spooled_at_after_probe.is_none() {
            scan.first_spooled_at_after_probe = Some(spooled_at);
        }
    }
    Ok(scan)
}

/// Whether an intact frame (magic, length within the file, matching CRC) starts anywhere in
/// `(from, len)`: if so, the damage at `from` is not a torn tail but damage in the middle.
/// A tail too large to search counts as "yes" (quarantined rather than dropped).
pub(super) fn intact_frame_after(file: &File, from: u64, len: u64) -> io::Result<bool> {
    if len.saturating_sub(from) > MAX_TAIL_SEARCH {
        return Ok(true);
    }
    let start = from + 1;
    if start >= len {
        return Ok(false);
    }
    let mut bytes = Vec::with_capacity((len - start) as usize);
    copy_range(file, start, len, &mut bytes)?;
    let header_len = HEADER_LEN as usize;
    let mut i = 0;
    while i + header_len <= bytes.len() {
        if bytes[i..i + 4] == RECORD_MAGIC {
            let mut raw = [0u8; HEADER_LEN as usize];
            raw.copy_from_slice(&bytes[i..i + header_len]);
            if let Some(header) = decode_header(&raw) {
                let payload_start = i + header_len;
                let payload_end = payload_start.saturating_add(header.len as usize);
                if payload_end <= bytes.len()
                    && crc32fast::hash(&bytes[payload_start..payload_end]) == header.crc
                {
                    return Ok(true);
                }
            }
        }
        i += 1;
    }
    Ok(false)
}
