//! PDF renderings of exports, compliance reports and disclosures (filled in with vellum-pdf).

use crate::error::ApiError;
use axum::response::Response;
use vellum_core::report::{ComplianceReport, Disclosure};

/// A PDF document as an HTTP response.
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

/// A compliance report as PDF.
pub(crate) fn report_pdf(_report: &ComplianceReport) -> Result<Vec<u8>, ApiError> {
    Err(not_yet())
}

/// An accounting of disclosures as PDF.
pub(crate) fn disclosures_pdf(
    _patient: &str,
    _from: &str,
    _to: &str,
    _lines: &[Disclosure],
) -> Result<Vec<u8>, ApiError> {
    Err(not_yet())
}

fn not_yet() -> ApiError {
    ApiError::bad_request(
        "format",
        "PDF output is not available in this build yet; use json",
    )
}
