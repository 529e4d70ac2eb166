//! `GET /v1/export`: streaming exports in every format of SPEC §4 and §11: `bundle` (format in
//! `vellum_core::bundle`), `ndjson` and `json` (complete events), `csv` (the SPEC columns,
//! formula-guarded), `fhir` (a FHIR R4 `Bundle` of `AuditEvent`s) and `pdf`.
//!
//! Constant memory: a blocking task walks the search results page by page, computes each
//! event's inclusion proof from the stored tiles, and sends NDJSON lines through a small bounded
//! channel that the response body drains, so a slow client slows the walk instead of growing a
//! buffer. The bundle is a consistent snapshot: a fresh checkpoint is taken for each log first,
//! and events committed after it are left out. If the walk fails halfway, the body ends without
//! its trailer line, which every verifier reports as a truncated bundle.

use crate::AppState;
use crate::api::{Auth, Params, parse_search, record_read, require_read, scope_query};
use crate::auth::Role;
use crate::error::ApiError;
use crate::verification::known_keys;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use vellum_core::bundle::{BundleHeader, BundleKey, BundleProof, BundleTrailer, FORMAT, VERSION};
use vellum_core::merkle::inclusion_proof;
use vellum_core::tiles::TileSource;
use vellum_store::{AuditStore, SearchQuery, StoredEvent};

/// Bytes gathered before a chunk is handed to the body.
const CHUNK_BYTES: usize = 64 * 1024;
/// Events per search page while exporting.
const PAGE: usize = 1000;

/// A response body fed by a bounded channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Streams selected events in an export format.
#[utoipa::path(
    get, path = "/v1/export", tag = "proofs",
    params(
        ("format" = String, Query, description = "`bundle`: NDJSON with checkpoints, inclusion proofs and public keys"),
        crate::api::SearchParams,
    ),
    responses((status = 200, description = "application/x-ndjson stream"), (status = 400)),
    security(("bearer" = []))
)]
pub async fn get_export(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/export", Role::Auditor).await?;
    export_response(&state, &principal, peer, "/v1/export", params).await
}

/// Streams the export `params` ask for (`format` and the search filters), scoped to
/// `principal` (whose auditor role the caller has checked) and recorded as a read at
/// `endpoint`; shared by `GET /v1/export` and the console.
pub(crate) async fn export_response(
    state: &AppState,
    principal: &crate::auth::Principal,
    peer: SocketAddr,
    endpoint: &str,
    mut params: std::collections::BTreeMap<String, String>,
) -> Result<Response, ApiError> {
    let format = match params.remove("format").as_deref() {
        None => return Err(ApiError::bad_request("format", "is required")),
        Some(name) => ExportFormat::parse(name).ok_or_else(|| {
            ApiError::bad_request(
                "format",
                format!("`{name}` is not one of bundle, ndjson, json, csv, fhir, pdf"),
            )
        })?,
    };
    let mut query = parse_search(&params)?;
    scope_query(principal, &mut query)?;
    tokio::task::block_in_place(|| crate::subjects::translate_filter(&state.subjects, &mut query))?;
    record_read(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"format": format.name(), "query": crate::subjects::scrub_params(&params)}),
    )
    .await?;

    // Snapshot: a checkpoint covering everything committed so far, per visible log.
    let store = state.store.clone();
    let mut logs = tokio::task::spawn_blocking(move || store.log_ids())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    if let Some(org) = &principal.organization_id {
        logs.retain(|l| l == "default" || l == org);
    }
    let mut checkpoints = Vec::new();
    for log in &logs {
        state
            .ingest
            .checkpoint_now(log)
            .await
            .map_err(|e| ApiError::overloaded(e.to_string()))?;
        let store = state.store.clone();
        let id = log.clone();
        if let Some(cp) = tokio::task::spawn_blocking(move || store.latest_checkpoint(&id))
            .await
            .map_err(|e| ApiError::internal(&e))??
        {
            checkpoints.push(cp);
        }
    }
    let store = state.store.clone();
    let current = state.checkpoint_key.clone();
    let keys = tokio::task::spawn_blocking(move || {
        known_keys(store.as_ref(), std::slice::from_ref(&current))
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    let header = BundleHeader {
        format: FORMAT.into(),
        version: VERSION,
        created_at: vellum_core::pipeline::server_now().1,
        query: serde_json::to_value(&params).unwrap_or_default(),
        public_keys: keys
            .iter()
            .filter(|k| checkpoints.iter().any(|c| c.key_id == k.key_id_hex()))
            .map(BundleKey::from_key)
            .collect(),
        checkpoints,
    };
    let snapshot: HashMap<String, u64> = header
        .checkpoints
        .iter()
        .map(|c| (c.log_id.clone(), c.tree_size))
        .collect();

    let observer = vellum_core::export::FhirObserver {
        display: format!(
            "Vellum {} ({})",
            env!("CARGO_PKG_VERSION"),
            state.config.listen
        ),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        if format == ExportFormat::Pdf {
            if let Err(e) = write_pdf_export(store, header, snapshot, query, tx.clone()) {
                tracing::warn!(error = %e, "PDF export stopped before its end");
                let _ = tx.blocking_send(Err(std::io::Error::other(e)));
            }
            return;
        }
        let encoder: Box<dyn Encoder> = match format {
            ExportFormat::Bundle => Box::new(BundleEncoder {
                header: Some(header),
            }),
            ExportFormat::Ndjson => Box::new(NdjsonEncoder),
            ExportFormat::Json => Box::new(JsonEncoder {
                header: Some(header),
                first: true,
            }),
            ExportFormat::Csv => Box::new(CsvEncoder),
            ExportFormat::Fhir => Box::new(FhirEncoder {
                observer,
                first: true,
            }),
            ExportFormat::Pdf => return,
        };
        if let Err(e) = write_export(store, encoder, format, snapshot, query, &tx) {
            tracing::warn!(error = %e, "export stopped before its end");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let mut response = Body::from_stream(ChannelBody(rx)).into_response();
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"vellum-export.{}\"",
        format.extension()
    )) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// The export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// Verifiable NDJSON bundle (docs/BUNDLE.md).
    Bundle,
    /// One complete event per line.
    Ndjson,
    /// `{"query", "checkpoints", "events": [...], "count"}`.
    Json,
    /// SPEC §11 columns.
    Csv,
    /// FHIR R4 `Bundle` (type `collection`) of `AuditEvent`.
    Fhir,
    /// Paginated tables with a header of query, period, count and checkpoint.
    Pdf,
}

impl ExportFormat {
    /// Parses the `format` parameter.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "bundle" => Self::Bundle,
            "ndjson" => Self::Ndjson,
            "json" => Self::Json,
            "csv" => Self::Csv,
            "fhir" => Self::Fhir,
            "pdf" => Self::Pdf,
            _ => return None,
        })
    }

    /// The parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bundle => "bundle",
            Self::Ndjson => "ndjson",
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Fhir => "fhir",
            Self::Pdf => "pdf",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Bundle | Self::Ndjson => "application/x-ndjson",
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Fhir => "application/fhir+json",
            Self::Pdf => "application/pdf",
        }
    }

    fn extension(self) -> &'static str {
        match self {
            Self::Bundle => "bundle.ndjson",
            Self::Ndjson => "ndjson",
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Fhir => "fhir.json",
            Self::Pdf => "pdf",
        }
    }
}

/// Turns the walk into bytes, one event at a time, appending to a buffer the walker flushes.
trait Encoder: Send {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), String>;
    fn event(
        &mut self,
        out: &mut Vec<u8>,
        event: &StoredEvent,
        proof: Option<&BundleProof>,
    ) -> Result<(), String>;
    fn end(&mut self, out: &mut Vec<u8>, count: u64) -> Result<(), String>;
}

fn json_into(out: &mut Vec<u8>, value: &impl serde::Serialize) -> Result<(), String> {
    serde_json::to_writer(out, value).map_err(|e| e.to_string())
}

struct BundleEncoder {
    header: Option<BundleHeader>,
}

impl Encoder for BundleEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        json_into(out, &self.header.take())?;
        out.push(b'\n');
        Ok(())
    }

    fn event(
        &mut self,
        out: &mut Vec<u8>,
        event: &StoredEvent,
        proof: Option<&BundleProof>,
    ) -> Result<(), String> {
        // Splice the stored text instead of re-serializing it: the event goes out byte for
        // byte as stored (plus hash and signature).
        out.extend_from_slice(b"{\"event\":");
        out.extend_from_slice(event.to_api_json().as_bytes());
        out.extend_from_slice(b",\"proof\":");
        json_into(out, &proof)?;
        out.extend_from_slice(b"}\n");
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>, count: u64) -> Result<(), String> {
        json_into(
            out,
            &BundleTrailer {
                end: true,
                events: count,
            },
        )?;
        out.push(b'\n');
        Ok(())
    }
}

struct NdjsonEncoder;

impl Encoder for NdjsonEncoder {
    fn begin(&mut self, _: &mut Vec<u8>) -> Result<(), String> {
        Ok(())
    }

    fn event(
        &mut self,
        out: &mut Vec<u8>,
        e: &StoredEvent,
        _: Option<&BundleProof>,
    ) -> Result<(), String> {
        out.extend_from_slice(e.to_api_json().as_bytes());
        out.push(b'\n');
        Ok(())
    }

    fn end(&mut self, _: &mut Vec<u8>, _: u64) -> Result<(), String> {
        Ok(())
    }
}

struct JsonEncoder {
    header: Option<BundleHeader>,
    first: bool,
}

impl Encoder for JsonEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        let header = self.header.take();
        out.extend_from_slice(b"{\"query\":");
        json_into(out, &header.as_ref().map(|h| &h.query))?;
        out.extend_from_slice(b",\"checkpoints\":");
        json_into(out, &header.as_ref().map(|h| &h.checkpoints))?;
        out.extend_from_slice(b",\"events\":[");
        Ok(())
    }

    fn event(
        &mut self,
        out: &mut Vec<u8>,
        e: &StoredEvent,
        _: Option<&BundleProof>,
    ) -> Result<(), String> {
        if !std::mem::take(&mut self.first) {
            out.push(b',');
        }
        out.extend_from_slice(e.to_api_json().as_bytes());
        Ok(())
    }

    fn end(&mut self, out: &mut Vec<u8>, count: u64) -> Result<(), String> {
        out.extend_from_slice(format!("],\"count\":{count}}}").as_bytes());
        Ok(())
    }
}

struct CsvEncoder;

impl CsvEncoder {
    fn record(out: &mut Vec<u8>, cells: &[impl AsRef<[u8]>]) -> Result<(), String> {
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(out);
        w.write_record(cells).map_err(|e| e.to_string())?;
        w.flush().map_err(|e| e.to_string())
    }
}

impl Encoder for CsvEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        Self::record(out, &vellum_core::export::CSV_COLUMNS)
    }

    fn event(
        &mut self,
        out: &mut Vec<u8>,
        e: &StoredEvent,
        _: Option<&BundleProof>,
    ) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_str(&e.to_api_json()).map_err(|e| e.to_string())?;
        Self::record(out, &vellum_core::export::csv_record(&value))
    }

    fn end(&mut self, _: &mut Vec<u8>, _: u64) -> Result<(), String> {
        Ok(())
    }
}

struct FhirEncoder {
    observer: vellum_core::export::FhirObserver,
    first: bool,
}

impl Encoder for FhirEncoder {
    fn begin(&mut self, out: &mut Vec<u8>) -> Result<(), String> {
        out.extend_from_slice(
            b"{\"resourceType\":\"Bundle\",\"type\":\"collection\",\"timestamp\":",
        );
        json_into(out, &vellum_core::pipeline::server_now().1)?;
        out.extend_from_slice(b",\"entry\":[");
        Ok(())
    }

    fn event(
        &mut self,
        out: &mut Vec<u8>,
        e: &StoredEvent,
        _: Option<&BundleProof>,
    ) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_str(&e.to_api_json()).map_err(|e| e.to_string())?;
        let resource = vellum_core::export::fhir_audit_event(&value, &self.observer);
        if !std::mem::take(&mut self.first) {
            out.push(b',');
        }
        let full_url = value
            .get("id")
            .and_then(serde_json::Value::as_str)
            .map(|id| format!("urn:uuid:{id}"));
        json_into(out, &json!({"fullUrl": full_url, "resource": resource}))
    }

    fn end(&mut self, out: &mut Vec<u8>, _: u64) -> Result<(), String> {
        out.extend_from_slice(b"]}");
        Ok(())
    }
}

/// Walks the selection page by page and sends encoded chunks; an `Err` means the stream was
/// cut (the client sees a body without its end).
fn write_export(
    store: Arc<dyn AuditStore>,
    mut encoder: Box<dyn Encoder>,
    format: ExportFormat,
    snapshot: HashMap<String, u64>,
    mut query: SearchQuery,
    tx: &tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::with_capacity(CHUNK_BYTES * 2);
    let flush = |buffer: &mut Vec<u8>| -> Result<(), String> {
        let chunk = Bytes::from(std::mem::take(buffer));
        tx.blocking_send(Ok(chunk))
            .map_err(|_| "the client went away".to_owned())
    };
    encoder.begin(&mut buffer)?;
    query.limit = PAGE;
    query.cursor = None;
    let mut written = 0u64;
    // One tile source per log for the whole export: proofs of neighbouring events against
    // the same snapshot size share their tiles, so each is read once (bounded cache).
    let mut tile_sources = HashMap::new();
    loop {
        let page = store.search(&query).map_err(|e| e.to_string())?;
        for event in &page.events {
            let Some(&size) = snapshot.get(&event.log_id) else {
                continue;
            };
            if event.seq >= size {
                continue; // committed after the snapshot checkpoint
            }
            let proof = if format == ExportFormat::Bundle {
                let source = tile_sources.entry(event.log_id.clone()).or_insert_with(|| {
                    let store = store.clone();
                    let log_id = event.log_id.clone();
                    TileSource::with_capacity(move |k| store.merkle_tile(&log_id, k), 1024)
                });
                let hashes = inclusion_proof(source, event.seq, size)
                    .map_err(|e| format!("proof for seq {}: {e:?}", event.seq))?;
                Some(BundleProof {
                    log_id: event.log_id.clone(),
                    leaf_index: event.seq,
                    tree_size: size,
                    hashes: hashes.iter().map(hex::encode).collect(),
                })
            } else {
                None
            };
            encoder.event(&mut buffer, event, proof.as_ref())?;
            written += 1;
            if buffer.len() >= CHUNK_BYTES {
                flush(&mut buffer)?;
            }
        }
        match page.next_cursor {
            Some(c) => query.cursor = Some(c),
            None => break,
        }
    }
    encoder.end(&mut buffer, written)?;
    metrics::counter!("vellum_exported_events_total", "format" => format.name()).increment(written);
    flush(&mut buffer)
}

/// The PDF export: a header block (query, period, count, checkpoints) and one table row per
/// event, streamed page by page into the response. The count is only known at the end, so it
/// is printed after the table (the header says where to find it).
fn write_pdf_export(
    store: Arc<dyn AuditStore>,
    header: BundleHeader,
    snapshot: HashMap<String, u64>,
    mut query: SearchQuery,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), String> {
    use vellum_pdf::{Column, PdfWriter};
    let e = |e: vellum_pdf::PdfError| e.to_string();
    let mut pdf = PdfWriter::new(crate::pdf::ChannelWrite::new(tx), "Vellum audit export");
    let period = match (&header.query.get("from"), &header.query.get("to")) {
        (Some(f), Some(t)) => format!(
            "{} to {}",
            f.as_str().unwrap_or(""),
            t.as_str().unwrap_or("")
        ),
        (Some(f), None) => format!("from {}", f.as_str().unwrap_or("")),
        (None, Some(t)) => format!("until {}", t.as_str().unwrap_or("")),
        (None, None) => "all time".to_owned(),
    };
    let filters = header
        .query
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join("  ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "(none: every event)".to_owned());
    pdf.meta("Query", &filters).map_err(e)?;
    pdf.meta("Period", &period).map_err(e)?;
    pdf.meta("Generated", &header.created_at).map_err(e)?;
    pdf.meta("Count", "see the end of the table").map_err(e)?;
    for cp in &header.checkpoints {
        pdf.meta("Checkpoint", &crate::pdf::checkpoint_line(cp))
            .map_err(e)?;
    }
    let columns = [
        Column::new("Timestamp", 2.9),
        Column::new("Seq", 0.8).right(),
        Column::new("Action", 2.3),
        Column::new("Status", 0.9),
        Column::new("Principal", 1.6),
        Column::new("Target", 1.9),
        Column::new("Class", 1.5),
        Column::new("Outcome", 2.3).wrap(),
        Column::new("Hash", 1.7),
    ];
    let mut written = 0u64;
    {
        let mut table = pdf.begin_table(&columns).map_err(e)?;
        query.limit = PAGE;
        query.cursor = None;
        loop {
            let page = store.search(&query).map_err(|e| e.to_string())?;
            for event in &page.events {
                let Some(&size) = snapshot.get(&event.log_id) else {
                    continue;
                };
                if event.seq >= size {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(&event.to_api_json()).map_err(|e| e.to_string())?;
                let s = |p: &str| {
                    v.pointer(p)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_owned()
                };
                let target = match (s("/targetResourceType"), s("/targetResourceId")) {
                    (t, i) if i.is_empty() => t,
                    (t, i) => format!("{t}/{i}"),
                };
                let hash = s("/hash");
                table
                    .row(&[
                        s("/timestamp"),
                        event.seq.to_string(),
                        s("/action"),
                        s("/status"),
                        s("/principalId"),
                        target,
                        s("/dataClassification"),
                        s("/outcomeDescription"),
                        hash.get(..16).unwrap_or(&hash).to_owned(),
                    ])
                    .map_err(e)?;
                written += 1;
            }
            match page.next_cursor {
                Some(c) => query.cursor = Some(c),
                None => break,
            }
        }
        table.end();
    }
    pdf.paragraph(&format!(
        "{written} events. Hashes are shortened to 16 hex digits; the full event, its hash and its inclusion proof come with GET /v1/export?format=bundle."
    ))
    .map_err(e)?;
    metrics::counter!("vellum_exported_events_total", "format" => "pdf").increment(written);
    let mut sink = pdf.finish().map_err(e)?;
    std::io::Write::flush(&mut sink).map_err(|e| e.to_string())
}
