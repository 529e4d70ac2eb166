//! The bodies the layer hands on: the request body (untouched, or the bytes it read to
//! record them) and the response body (the handler's, or the layer's own 503 refusal); and
//! the decision whether a request body is read at all.

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use serde_json::{Map, Value};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Errors of an [`AuditRequestBody`]: the original body's error, boxed.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The request body the inner service receives: the original body, passed through
    /// untouched, or the bytes the layer read from it to record them (the same bytes, in one
    /// chunk, followed by the original trailers or read error).
    pub struct AuditRequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Passthrough { #[pin] body: B },
        Buffered {
            data: Option<Bytes>,
            trailers: Option<HeaderMap>,
            error: Option<BoxError>,
        },
    }
}

impl<B> AuditRequestBody<B> {
    /// The original body, untouched.
    pub(crate) fn passthrough(body: B) -> Self {
        Self {
            kind: RequestKind::Passthrough { body },
        }
    }

    /// Bytes read from the original body, then its trailers or the error that ended it.
    pub(crate) fn buffered(
        data: Bytes,
        trailers: Option<HeaderMap>,
        error: Option<BoxError>,
    ) -> Self {
        Self {
            kind: RequestKind::Buffered {
                data: Some(data),
                trailers,
                error,
            },
        }
    }
}

impl<B> std::fmt::Debug for AuditRequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            RequestKind::Passthrough { .. } => f.write_str("AuditRequestBody::Passthrough"),
            RequestKind::Buffered { data, .. } => write!(
                f,
                "AuditRequestBody::Buffered({} bytes)",
                data.as_ref().map_or(0, Bytes::len)
            ),
        }
    }
}

impl<B> Body for AuditRequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            RequestKindProj::Passthrough { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|r| r.map_err(Into::into))),
            RequestKindProj::Buffered {
                data,
                trailers,
                error,
            } => {
                if let Some(bytes) = data.take()
                    && !bytes.is_empty()
                {
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Passthrough { body } => body.is_end_stream(),
            RequestKind::Buffered {
                data,
                trailers,
                error,
            } => data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none() && error.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Passthrough { body } => body.size_hint(),
            RequestKind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

pin_project! {
    /// The response body the layer returns: the inner service's, or the small JSON body of a
    /// fail-closed refusal.
    pub struct AuditResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Inner { #[pin] body: B },
        Refusal { data: Option<Bytes> },
    }
}

impl<B> AuditResponseBody<B> {
    /// The inner service's body.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: ResponseKind::Inner { body },
        }
    }

    /// The layer's own body.
    pub(crate) fn refusal(data: Bytes) -> Self {
        Self {
            kind: ResponseKind::Refusal { data: Some(data) },
        }
    }
}

impl<B> std::fmt::Debug for AuditResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ResponseKind::Inner { .. } => f.write_str("AuditResponseBody::Inner"),
            ResponseKind::Refusal { .. } => f.write_str("AuditResponseBody::Refusal"),
        }
    }
}

impl<B> Body for AuditResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body } => body.poll_frame(cx),
            ResponseKindProj::Refusal { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body } => body.is_end_stream(),
            ResponseKind::Refusal { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body } => body.size_hint(),
            ResponseKind::Refusal { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

/// What to do with a request body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BodyPlan {
    /// The request has no body: nothing to record.
    Empty,
    /// Not captured; record this note (`{"omitted": why, "contentType", "bytes"}`).
    Omit(Value),
    /// Read this many bytes (the declared `content-length`) and record them.
    Read(usize),
}

/// Whether a content type is JSON: `application/json` or any `…/…+json`, parameters ignored.
pub(crate) fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.contains('/') && essence.ends_with("+json"))
}

/// The note recorded instead of a body.
pub(crate) fn omitted(why: &str, content_type: Option<&str>, bytes: Option<u64>) -> Value {
    let mut note = Map::new();
    note.insert("omitted".into(), Value::String(why.to_owned()));
    if let Some(ct) = content_type {
        note.insert(
            "contentType".into(),
            Value::String(super::mapping::clip(ct, 256)),
        );
    }
    if let Some(n) = bytes {
        note.insert("bytes".into(), Value::from(n));
    }
    Value::Object(note)
}

/// Decides from the headers (and whether the body is known to be empty) whether to read a
/// body: only JSON, uncompressed, with a `content-length` of at most `max` bytes.
pub(crate) fn plan(headers: &HeaderMap, known_empty: bool, max: usize) -> BodyPlan {
    let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).trim().to_owned();
    let length_header = headers.get(CONTENT_LENGTH);
    let length = length_header.and_then(|v| text(v).parse::<u64>().ok());
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    if length == Some(0) || (length_header.is_none() && !chunked && known_empty) {
        return BodyPlan::Empty;
    }
    let content_type = headers.get(CONTENT_TYPE).map(text);
    let ct = content_type.as_deref();
    if let Some(encoding) = headers.get(CONTENT_ENCODING).map(text)
        && !encoding.eq_ignore_ascii_case("identity")
    {
        return BodyPlan::Omit(omitted("compressed (content-encoding)", ct, length));
    }
    if !ct.is_some_and(is_json) {
        return BodyPlan::Omit(omitted("not JSON", ct, length));
    }
    match length {
        None if length_header.is_some() => {
            BodyPlan::Omit(omitted("invalid content-length", ct, None))
        }
        None => BodyPlan::Omit(omitted("no content-length (streamed body)", ct, None)),
        Some(n) if n > max as u64 => {
            BodyPlan::Omit(omitted("larger than maxBodyBytes", ct, Some(n)))
        }
        Some(n) => match usize::try_from(n) {
            Ok(n) => BodyPlan::Read(n),
            Err(_) => BodyPlan::Omit(omitted("larger than maxBodyBytes", ct, Some(n))),
        },
    }
}

/// Reads a body whose declared length is `declared` (at most `limit`), and returns the body
/// to hand on (the same bytes) with the bytes to record, or why they cannot be recorded.
///
/// A body that turns out longer than `limit` is not read further: the bytes read are handed
/// on followed by an error, as hyper itself does for a body longer than its `content-length`.
pub(crate) async fn read<B>(
    body: B,
    declared: usize,
    limit: usize,
) -> (AuditRequestBody<B>, Result<Bytes, &'static str>)
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::with_capacity(declared.min(limit));
    let mut trailers: Option<HeaderMap> = None;
    let mut error: Option<BoxError> = None;
    while let Some(frame) = body.as_mut().frame().await {
        match frame {
            Ok(frame) => match frame.into_data() {
                Ok(data) => {
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        error = Some("request body longer than its content-length".into());
                        break;
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(t);
                    }
                }
            },
            Err(e) => {
                error = Some(e.into());
                break;
            }
        }
    }
    let bytes = buf.freeze();
    let captured = if error.is_some() {
        Err("body could not be read completely")
    } else {
        Ok(bytes.clone())
    };
    (AuditRequestBody::buffered(bytes, trailers, error), captured)
}

/// Parses captured bytes as JSON, or says why not.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, &'static str> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not valid UTF-8")?;
    serde_json::from_str(text).map_err(|_| "invalid JSON")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};
    use serde_json::json;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/fhir+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("+json"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }

    #[test]
    fn plans() {
        let json = ("content-type", "application/json");
        assert_eq!(plan(&headers(&[json]), true, 10), BodyPlan::Empty);
        assert_eq!(
            plan(&headers(&[json, ("content-length", "0")]), false, 10),
            BodyPlan::Empty
        );
        assert_eq!(
            plan(&headers(&[json, ("content-length", "5")]), false, 10),
            BodyPlan::Read(5)
        );
        assert_eq!(
            plan(&headers(&[json, ("content-length", "11")]), false, 10),
            BodyPlan::Omit(json!({"omitted": "larger than maxBodyBytes",
                                  "contentType": "application/json", "bytes": 11}))
        );
        assert_eq!(
            plan(
                &headers(&[json, ("transfer-encoding", "chunked")]),
                false,
                10
            ),
            BodyPlan::Omit(json!({"omitted": "no content-length (streamed body)",
                                  "contentType": "application/json"}))
        );
        assert_eq!(
            plan(&headers(&[json, ("content-length", "x")]), false, 10),
            BodyPlan::Omit(json!({"omitted": "invalid content-length",
                                  "contentType": "application/json"}))
        );
        assert_eq!(
            plan(&headers(&[("content-length", "3")]), false, 10),
            BodyPlan::Omit(json!({"omitted": "not JSON", "bytes": 3}))
        );
        assert_eq!(
            plan(
                &headers(&[json, ("content-length", "3"), ("content-encoding", "gzip")]),
                false,
                10
            ),
            BodyPlan::Omit(json!({"omitted": "compressed (content-encoding)",
                                  "contentType": "application/json", "bytes": 3}))
        );
        assert_eq!(
            plan(
                &headers(&[json, ("content-length", "99999999999999999999")]),
                false,
                10
            ),
            BodyPlan::Omit(json!({"omitted": "invalid content-length",
                                  "contentType": "application/json"}))
        );
    }

    #[test]
    fn parse_reports_why() {
        assert_eq!(parse(br#"{"a":1}"#), Ok(json!({"a": 1})));
        assert_eq!(parse(b"{\"a\":\"\xff\"}"), Err("not valid UTF-8"));
        assert_eq!(parse(b"{"), Err("invalid JSON"));
        let deep = "[".repeat(10_000);
        assert_eq!(parse(deep.as_bytes()), Err("invalid JSON"));
    }

    #[tokio::test]
    async fn read_hands_on_the_same_bytes_and_trailers() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"a\":"))),
            Ok(Frame::data(Bytes::from_static(b"1}"))),
            Ok(Frame::trailers(headers(&[("x-checksum", "abc")]))),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (replay, captured) = read(body, 7, 100).await;
        assert_eq!(captured.as_deref(), Ok(&b"{\"a\":1}"[..]));
        assert_eq!(replay.size_hint().exact(), Some(7));
        let collected = replay.collect().await.unwrap();
        assert_eq!(
            collected.trailers().and_then(|t| t.get("x-checksum")),
            Some(&HeaderValue::from_static("abc"))
        );
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"{\"a\":1}"));
    }

    #[tokio::test]
    async fn read_passes_on_errors_and_stops_at_the_limit() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"{\"a\""))),
            Err("connection reset".into()),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let (mut replay, captured) = read(body, 7, 100).await;
        assert!(captured.is_err());
        let first = replay.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"{\"a\"")));
        let err = replay.frame().await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "connection reset");
        assert!(replay.frame().await.is_none());

        let (replay, captured) = read(Full::new(Bytes::from(vec![b'x'; 50])), 10, 10).await;
        assert!(captured.is_err());
        assert!(replay.collect().await.is_err());
    }

    #[tokio::test]
    async fn passthrough_and_refusal_bodies() {
        let body = AuditRequestBody::passthrough(Full::new(Bytes::from_static(b"raw")));
        assert_eq!(body.size_hint().exact(), Some(3));
        assert_eq!(
            body.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"raw")
        );
        let refusal: AuditResponseBody<Full<Bytes>> =
            AuditResponseBody::refusal(Bytes::from_static(b"{}"));
        assert!(!refusal.is_end_stream());
        assert_eq!(
            refusal.collect().await.unwrap().to_bytes(),
            Bytes::from_static(b"{}")
        );
        let empty = AuditRequestBody::<Full<Bytes>>::buffered(Bytes::new(), None, None);
        assert!(empty.is_end_stream());
    }
}
