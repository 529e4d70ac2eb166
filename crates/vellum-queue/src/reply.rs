//! Reading raw Redis replies.
//!
//! Stream replies are parsed by hand from [`redis::Value`] rather than through the library's
//! typed helpers: payloads stay raw bytes, RESP2 and RESP3 shapes (arrays of pairs vs. maps) are
//! both accepted, and a deleted entry (`[id, nil]`) is reported instead of failing the batch.

use redis::Value;

use crate::error::QueueError;

/// One stream entry as returned by `XRANGE`/`XREADGROUP`: its id and its field/value pairs, or
/// `None` when the entry is still pending but its data was deleted.
pub(crate) struct RawEntry {
    pub(crate) id: String,
    pub(crate) fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl RawEntry {
    /// The value of field `name`, if present.
    pub(crate) fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k.as_slice() == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The value of field `name` as UTF-8 text, or a [`QueueError::Malformed`] naming it.
    pub(crate) fn text_field(&self, name: &str) -> Result<String, QueueError> {
        let raw = self
            .field(name.as_bytes())
            .ok_or_else(|| self.malformed(format!("no field {name:?}")))?;
        String::from_utf8(raw.to_vec())
            .map_err(|_| self.malformed(format!("field {name:?} is not UTF-8")))
    }

    /// The value of field `name` as an unsigned integer.
    pub(crate) fn u64_field(&self, name: &str) -> Result<u64, QueueError> {
        self.text_field(name)?
            .parse()
            .map_err(|_| self.malformed(format!("field {name:?} is not a number")))
    }

    pub(crate) fn malformed(&self, reason: String) -> QueueError {
        QueueError::Malformed {
            id: self.id.clone(),
            reason,
        }
    }
}

pub(crate) fn protocol(what: &str, v: &Value) -> QueueError {
    let mut shape = format!("{v:?}");
    if shape.len() > 200 {
        let mut cut = 200;
        while !shape.is_char_boundary(cut) {
            cut -= 1;
        }
        shape.truncate(cut);
        shape.push('…');
    }
    QueueError::Protocol(format!("{what}: got {shape}"))
}

/// Bytes of a string-like reply.
pub(crate) fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

/// A string-like reply as UTF-8 text.
pub(crate) fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// An integer reply (or a string holding one, as some commands return).
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(bytes(other)?).ok()?.parse().ok(),
    }
}

/// A non-negative integer reply.
pub(crate) fn uint(v: &Value) -> Option<u64> {
    int(v).and_then(|i| u64::try_from(i).ok())
}

/// The elements of an array-like reply.
pub(crate) fn array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Push { data, .. } => Some(data),
        _ => None,
    }
}

/// Key/value pairs of a map reply, or of a flat RESP2 array `[k1, v1, k2, v2, …]`.
pub(crate) fn pairs(v: &Value) -> Option<Vec<(&Value, &Value)>> {
    match v {
        Value::Map(items) => Some(items.iter().map(|(k, v)| (k, v)).collect()),
        Value::Attribute { data, .. } => pairs(data),
        other => {
            let items = array(other)?;
            if items.len() % 2 != 0 {
                return None;
            }
            Some(items.chunks_exact(2).map(|c| (&c[0], &c[1])).collect())
        }
    }
}

/// The value of `name` in a map-like reply (`XINFO GROUPS` entries and similar).
pub(crate) fn lookup<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    pairs(v)?
        .into_iter()
        .find(|(k, _)| bytes(k) == Some(name.as_bytes()))
        .map(|(_, v)| v)
}

/// One entry `[id, [field, value, …]]` (fields may be nil for a deleted entry).
pub(crate) fn entry(v: &Value) -> Result<RawEntry, QueueError> {
    let items = array(v).ok_or_else(|| protocol("stream entry", v))?;
    let [id, fields] = items else {
        return Err(protocol("stream entry", v));
    };
    let id = text(id).ok_or_else(|| protocol("stream entry id", v))?;
    let fields = match fields {
        Value::Nil => None,
        other => {
            let pairs = pairs(other).ok_or_else(|| protocol("stream entry fields", v))?;
            let mut out = Vec::with_capacity(pairs.len());
            for (k, val) in pairs {
                let k = bytes(k).ok_or_else(|| protocol("stream field name", v))?;
                let val = bytes(val).ok_or_else(|| protocol("stream field value", v))?;
                out.push((k.to_vec(), val.to_vec()));
            }
            Some(out)
        }
    };
    Ok(RawEntry { id, fields })
}

/// A list of entries (`XRANGE`, or one stream of an `XREADGROUP` reply).
pub(crate) fn entries(v: &Value) -> Result<Vec<RawEntry>, QueueError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => array(other)
            .ok_or_else(|| protocol("stream entries", v))?
            .iter()
            .map(entry)
            .collect(),
    }
}

/// An `XREAD`/`XREADGROUP` reply: per stream key, its entries. Nil (timeout) is empty.
pub(crate) fn read_reply(v: &Value) -> Result<Vec<(String, Vec<RawEntry>)>, QueueError> {
    if matches!(v, Value::Nil) {
        return Ok(Vec::new());
    }
    // RESP3 answers a map {key: entries}; RESP2 an array of [key, entries] pairs.
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        other => {
            let items = array(other).ok_or_else(|| protocol("XREADGROUP reply", v))?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match array(item) {
                    Some([k, e]) => out.push((k, e)),
                    _ => return Err(protocol("XREADGROUP stream", item)),
                }
            }
            out
        }
    };
    streams
        .into_iter()
        .map(|(k, e)| {
            let key = text(k).ok_or_else(|| protocol("XREADGROUP stream key", k))?;
            Ok((key, entries(e)?))
        })
        .collect()
}

/// Splits a stream id `ms-seq` into its parts.
pub(crate) fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The smallest id greater than `id` (for exclusive ranges and `XTRIM MINID`).
pub(crate) fn next_id(id: &str) -> Option<String> {
    let (ms, seq) = parse_id(id)?;
    Some(match seq.checked_add(1) {
        Some(seq) => format!("{ms}-{seq}"),
        None => format!("{}-0", ms.checked_add(1)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Value {
        Value::BulkString(s.to_vec())
    }

    #[test]
    fn resp2_read_reply() {
        let v = Value::Array(vec![Value::Array(vec![
            bulk(b"q:p0:high"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk(b"1-0"),
                    Value::Array(vec![bulk(b"p"), bulk(b"\x00\xff")]),
                ]),
                Value::Array(vec![bulk(b"1-1"), Value::Nil]),
            ]),
        ])]);
        let r = read_reply(&v).ok().unwrap_or_default();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "q:p0:high");
        assert_eq!(r[0].1[0].id, "1-0");
        assert_eq!(r[0].1[0].field(b"p"), Some(&b"\x00\xff"[..]));
        assert!(r[0].1[1].fields.is_none());
    }

    #[test]
    fn resp3_read_reply_and_nil() {
        let v = Value::Map(vec![(
            bulk(b"q:p0:normal"),
            Value::Array(vec![Value::Array(vec![
                bulk(b"2-0"),
                Value::Array(vec![bulk(b"p"), bulk(b"x")]),
            ])]),
        )]);
        let r = read_reply(&v).ok().unwrap_or_default();
        assert_eq!(r[0].1[0].text_field("p").ok().as_deref(), Some("x"));
        assert!(read_reply(&Value::Nil).is_ok_and(|r| r.is_empty()));
        assert!(read_reply(&Value::Int(3)).is_err());
    }

    #[test]
    fn malformed_fields() {
        let e = RawEntry {
            id: "1-0".into(),
            fields: Some(vec![(b"n".to_vec(), b"x".to_vec())]),
        };
        assert!(matches!(
            e.u64_field("n"),
            Err(QueueError::Malformed { .. })
        ));
        assert!(matches!(
            e.text_field("m"),
            Err(QueueError::Malformed { .. })
        ));
    }

    #[test]
    fn ids() {
        assert_eq!(parse_id("5-7"), Some((5, 7)));
        assert_eq!(parse_id("5"), None);
        assert_eq!(next_id("5-7").as_deref(), Some("5-8"));
        assert_eq!(next_id(&format!("5-{}", u64::MAX)).as_deref(), Some("6-0"));
        assert_eq!(next_id("x-1"), None);
    }

    #[test]
    fn lookups_and_numbers() {
        let v = Value::Array(vec![bulk(b"lag"), Value::Int(4), bulk(b"name"), bulk(b"g")]);
        assert_eq!(lookup(&v, "lag").and_then(uint), Some(4));
        assert_eq!(lookup(&v, "name").and_then(text).as_deref(), Some("g"));
        assert!(lookup(&v, "missing").is_none());
        assert_eq!(int(&bulk(b"-3")), Some(-3));
        assert_eq!(uint(&Value::Int(-3)), None);
    }
}
