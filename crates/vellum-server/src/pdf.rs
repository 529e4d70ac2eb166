//! PDF renderings (SPEC §11) of exports, compliance reports and the accounting of disclosures,
//! with `vellum-pdf`. Exports stream: the writer's sink is the response channel, so a
//! million-event PDF is produced page by page in constant memory.

use crate::error::ApiError;
use axum::response::Response;
use bytes::Bytes;
use vellum_core::checkpoint::SignedCheckpoint;
use vellum_core::report::{ComplianceReport, Disclosure};
use vellum_pdf::{Column, PdfDocument};

/// A finished PDF as an HTTP response.
pub(crate) fn pdf_response(bytes: Vec<u8>, file_name: &str) -> Response {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;
    let mut response = (StatusCode::OK, bytes).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pdf"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

fn pdf_error(e: vellum_pdf::PdfError) -> ApiError {
    ApiError::internal(&e)
}

/// One line per checkpoint: what an export or report was checked against.
pub(crate) fn checkpoint_line(cp: &SignedCheckpoint) -> String {
    format!(
        "log {} size {} root {} key {} at {}",
        cp.log_id, cp.tree_size, cp.root_hash, cp.key_id, cp.timestamp
    )
}

/// A compliance report as PDF.
pub(crate) fn report_pdf(report: &ComplianceReport) -> Result<Vec<u8>, ApiError> {
    let kind = serde_json::to_value(report.report_type)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut doc = PdfDocument::new(&format!("{kind} compliance report"));
    doc.meta("Period", &format!("{} to {}", report.from, report.to))
        .and_then(|d| d.meta("Generated", &report.generated_at))
        .and_then(|d| {
            d.meta(
                "Organization",
                report.organization_id.as_deref().unwrap_or("all"),
            )
        })
        .and_then(|d| d.meta("Scope", &report.scope))
        .and_then(|d| {
            d.meta(
                "Integrity",
                &format!(
                    "{} ({} events verified, {} failures)",
                    if report.integrity.ok { "OK" } else { "FAILED" },
                    report.integrity.events_verified,
                    report.integrity.failures
                ),
            )
        })
        .map_err(pdf_error)?;
    for cp in &report.integrity.checkpoints {
        doc.meta("Checkpoint", &checkpoint_line(cp))
            .map_err(pdf_error)?;
    }
    if let Some(sig) = &report.signature {
        doc.meta(
            "Signature",
            &format!(
                "Ed25519 key {} ({}): {}",
                sig.key_id, sig.key_name, sig.value
            ),
        )
        .map_err(pdf_error)?;
    }
    doc.section("Summary")
        .and_then(|d| {
            d.paragraph(&format!(
                "{} events in the period, {} in scope, {} compliant: compliance score {}%.",
                report.total_events,
                report.in_scope_events,
                report.compliant_events,
                report.compliance_score
            ))
        })
        .map_err(pdf_error)?;
    doc.section("Required fields").map_err(pdf_error)?;
    doc.table(
        &[
            Column::new("Field", 3.0),
            Column::new("Events missing it", 1.0).right(),
            Column::new("% of in-scope", 1.0).right(),
        ],
        report.gaps.iter().map(|g| {
            vec![
                g.field.clone(),
                g.missing.to_string(),
                format!("{}", g.percent),
            ]
        }),
    )
    .map_err(pdf_error)?;
    doc.section("Risk (in-scope events by severity)")
        .map_err(pdf_error)?;
    doc.table(
        &[
            Column::new("Severity", 2.0),
            Column::new("Events", 1.0).right(),
        ],
        report
            .risk
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()]),
    )
    .map_err(pdf_error)?;
    doc.section("Violations by rule").map_err(pdf_error)?;
    if report.violations.is_empty() {
        doc.paragraph("None.").map_err(pdf_error)?;
    } else {
        doc.table(
            &[
                Column::new("Rule", 2.0),
                Column::new("Events", 1.0).right(),
                Column::new("Examples (event ids)", 4.0).wrap(),
            ],
            report.violations.iter().map(|v| {
                let rule = serde_json::to_value(v.rule)
                    .ok()
                    .and_then(|r| r.as_str().map(str::to_owned))
                    .unwrap_or_default();
                vec![rule, v.count.to_string(), v.examples.join(", ")]
            }),
        )
        .map_err(pdf_error)?;
    }
    doc.section("Recommendations").map_err(pdf_error)?;
    if report.recommendations.is_empty() {
        doc.paragraph("None.").map_err(pdf_error)?;
    }
    for (i, r) in report.recommendations.iter().enumerate() {
        doc.paragraph(&format!("{}. {r}", i + 1))
            .map_err(pdf_error)?;
    }
    doc.finish().map_err(pdf_error)
}

/// An accounting of disclosures as PDF.
pub(crate) fn disclosures_pdf(
    patient: &str,
    from: &str,
    to: &str,
    lines: &[Disclosure],
) -> Result<Vec<u8>, ApiError> {
    let mut doc = PdfDocument::new(&format!("Accounting of disclosures: patient {patient}"));
    doc.meta("Period", &format!("{from} to {to}"))
        .and_then(|d| d.meta("Disclosures", &lines.len().to_string()))
        .and_then(|d| {
            d.meta(
                "Evidence",
                "each line's event id and hash can be proven with GET /v1/events/{id}/proof",
            )
        })
        .map_err(pdf_error)?;
    doc.table(
        &[
            Column::new("When", 2.6),
            Column::new("Who", 1.8),
            Column::new("What", 2.8).wrap(),
            Column::new("Why", 2.8).wrap(),
            Column::new("Outcome", 0.9),
            Column::new("Emergency", 1.1).center(),
            Column::new("Event id", 3.6),
        ],
        lines.iter().map(|d| {
            vec![
                d.when.clone(),
                d.who.clone(),
                d.what.clone(),
                d.why.clone(),
                d.status.clone(),
                if d.emergency_access { "yes" } else { "" }.to_owned(),
                d.event_id.clone(),
            ]
        }),
    )
    .map_err(pdf_error)?;
    doc.finish().map_err(pdf_error)
}

/// A `Write` sink that sends 64 KiB chunks into a response channel (blocking: call it from a
/// blocking thread). A closed channel (client gone) is an I/O error that stops the writer.
pub(crate) struct ChannelWrite {
    buffer: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
}

impl ChannelWrite {
    /// A sink feeding `tx`.
    pub(crate) fn new(tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Self {
        Self {
            buffer: Vec::with_capacity(128 * 1024),
            tx,
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buffer));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWrite {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= 64 * 1024 {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}
