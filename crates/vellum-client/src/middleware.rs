//! A tower layer that records one audit event per HTTP request of an axum or hyper service
//! (SPEC §9).
//!
//! ```
//! use axum::{Router, routing::get};
//! use std::{future::Future, pin::Pin};
//! use vellum_client::middleware::{AuditConfig, AuditLayer, AuditLevel, AuditRecorder};
//! use vellum_client::{ClientError, Event, Priority};
//!
//! // In an application this is `vellum_client::Client`; any recorder works.
//! #[derive(Clone)]
//! struct Discard;
//! impl AuditRecorder for Discard {
//!     fn record(&self, _: Event, _: Priority)
//!         -> Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + 'static>> {
//!         Box::pin(async { Ok(()) })
//!     }
//!     fn ready(&self) -> bool { true }
//! }
//!
//! let config = AuditConfig::healthcare()
//!     .level(AuditLevel::Comprehensive)
//!     .organization("clinic-7")
//!     // PHI reads are not released unless their audit event is durable.
//!     .fail_closed("/patients");
//! let layer = AuditLayer::new(Discard, config);
//! let app: Router = Router::new()
//!     .route("/patients/{id}", get(|| async { "{}" }))
//!     .layer(layer.clone());
//! // `layer.dropped_events()` and `layer.record_failures()` feed your metrics.
//! ```
//!
//! # Mapping rules
//!
//! | request | action | target | other |
//! | --- | --- | --- | --- |
//! | `GET /patients/p-1/observations` | `api.observation.read` | `Observation` | patient p-1, PHI |
//! | `PUT /patients/7` | `api.patient.update` | `Patient` / `7` | patient 7, PHI |
//! | `POST /v1/medication-requests` | `api.medicationrequest.create` | `MedicationRequest` | PHI |
//! | `DELETE /fhir/R4/Observation/{uuid}` | `api.observation.delete` | `Observation` / uuid | PHI |
//! | `GET /` | `api.root.read` | none | INTERNAL |
//! | `POST /login` answered 401 (auth preset) | `auth.login.failure` | none | priority high |
//!
//! - **Segments.** The path (never the query) is split on `/`, empty segments are ignored and
//!   each segment is percent-decoded (invalid UTF-8 becomes U+FFFD).
//! - **Ids.** With the `axum` feature and a matched route (axum's `MatchedPath`),
//!   the segments matched by a `{param}` (or every segment matched by a `{*rest}`) are ids and
//!   every literal segment is not: the route says exactly what the application meant.
//!   Otherwise a heuristic decides: a segment is an id when it is a UUID, all digits, or has a
//!   digit and is not a version marker (`v1`, `v2beta1`, `r4`, `R4B`, `stu3`). Ids such as
//!   `john-doe` are not recognised by the heuristic; use the `axum` feature or
//!   [`AuditContext::set_target`] / [`AuditContext::set_patient`] for them.
//! - **Resource.** The last segment that is neither an id nor an operation (a segment starting
//!   with `$` or `_`, like FHIR's `$everything` and `_history`); `root` when there is none.
//! - **Action** `<prefix>.<resource>.<verb>`: the resource lowercased, with everything but
//!   ASCII letters and digits removed, then singularized by a small English rule set
//!   (irregular words from a table such as `people` → `person`, `analyses` → `analysis`;
//!   `…ies` → `…y`; `…sses`/`…shes`/`…ches`/`…xes`/`…zzes` lose `es`; words ending in `ss`,
//!   `us` or `is` are kept; otherwise a final `s` is dropped). The verb: `GET`/`HEAD` → `read`,
//!   `POST` → `create`, `PUT`/`PATCH` → `update`, `DELETE` → `delete`, any other method → its
//!   name lowercased. The prefix is `api` unless configured. The `auth` preset uses
//!   `auth.<operation>.<success|failure>` instead, the operation being the resource segment
//!   lowercased with `-` turned into `_` (`/password-reset` → `auth.password_reset.success`).
//! - **Target.** `targetResourceType` is the resource's FHIR-style type name: a known FHIR
//!   resource type when the singular name is one (`medicationrequests` → `MedicationRequest`),
//!   else the segment's words (split at `-`, `_`, `.` and lower→upper case changes) each
//!   capitalized, the last one singularized (`lab-results` → `LabResult`).
//!   `targetResourceId` is the id segment right after the resource, when there is one. The
//!   root path has no target, and neither do requests under the `auth` preset (their path
//!   names an operation, not a record); a handler can set one through [`AuditContext`].
//! - **Patient.** `healthcareContext.patientId` is the id after a `patients` or `Patient`
//!   segment (case-insensitive), unless a handler sets one.
//! - **Classification.** The longest [`AuditConfig::classify`] prefix that matches wins;
//!   otherwise the preset decides: `healthcare` gives `PHI` to a path with a clinical segment
//!   (singular or plural, case-insensitive: patients, observations, encounters, conditions,
//!   medications, medication-requests, allergies, allergy-intolerances, procedures,
//!   diagnostic-reports, immunizations, care-plans, documents, document-references,
//!   appointments, prescriptions, lab-results, records) and `INTERNAL` to the rest,
//!   `financial` gives `CONFIDENTIAL`, `auth` gives `INTERNAL`.
//! - **Status** `success` below 400, `failure` from 400. **Priority** high for 401 and 403,
//!   for fail-closed routes and for emergency access; normal otherwise.
//! - **Principal**, first found: an [`AuditPrincipal`] in the request's extensions when it
//!   reaches this layer (put there by an authentication layer outside it), one set through
//!   [`AuditContext::set_principal`] while the request is handled, one in the response's
//!   extensions; else `principalId: "anonymous"`. `organizationId` is the principal's, else
//!   [`AuditConfig::organization`].
//! - **Client IP**: with [`AuditConfig::trust_forwarded_for`], the first address of
//!   `x-forwarded-for`; else the connection's address from axum's `ConnectInfo<SocketAddr>`
//!   (feature `axum`, served with `into_make_service_with_connect_info`), else a [`ClientAddr`]
//!   extension (for hyper services). Only a valid IP address is recorded.
//!
//! # Levels and presets
//!
//! [`AuditLevel`] chooses how much of the request goes into the event; see its variants.
//! Bodies and query strings are redacted with [`vellum_core::redact::Redactor`] under the
//! preset's rule set before the event leaves the layer, so the spool on disk never holds a
//! password or a diagnosis in clear. Request bodies are only read when the level and preset
//! allow it, the body is JSON, and its `content-length` is known and within
//! [`AuditConfig::max_body_bytes`]; the handler then receives the very same bytes. Any other
//! body streams to the handler untouched and the event says why it was not captured
//! (`details.requestBody.omitted`).
//!
//! **Response bodies are never captured, by any preset**: the response of a clinical API is the
//! PHI itself (the record that was read). Copying it into the audit log would make the audit
//! log a second, less protected copy of every record it is meant to watch over; the event says
//! *who* read *which* record, which is what an accounting of disclosures needs.
//!
//! # Fail-open and fail-closed
//!
//! - **Fail-open (the default)** never slows down or fails a request because of auditing. The
//!   event is handed to the recorder in a background task once the response is ready. At most
//!   [`AuditConfig::max_in_flight`] such tasks run at once; beyond that, and when there is no
//!   tokio runtime to run them, the event is dropped, logged (`tracing::warn`, never the event's
//!   content: it can hold PHI) and counted in [`AuditLayer::dropped_events`]. Recorder errors
//!   are logged the same way and counted in [`AuditLayer::record_failures`]. With
//!   [`crate::Client`]'s guaranteed delivery as the recorder, "recorded" means fsynced to the
//!   local spool, so a Vellum outage loses nothing.
//! - **Fail-closed routes** ([`AuditConfig::fail_closed`]) put the audit record on the request's
//!   critical path. Before the handler runs, a recorder that is not
//!   [ready](AuditRecorder::ready) makes the layer answer `503 Service Unavailable` with
//!   `Retry-After: 5` and `{"error":{"code":"audit_unavailable",…}}` without running the
//!   handler (the refusal itself is still recorded, fire-and-forget). After the handler, the
//!   layer waits for the record (at most [`AuditConfig::record_timeout`]); if it fails or times
//!   out, the handler's response is discarded and replaced by the same 503. The handler's side
//!   effects have happened by then (a write is written); what is withheld is the response,
//!   and for a PHI read the response *is* the disclosure. An un-audited disclosure of PHI is
//!   the failure that matters (HIPAA §164.312(b) requires the access to be recorded), while a
//!   client that gets a 503 can retry, and an un-audited write can be reconciled from the
//!   application's own data. The `ready` check before the handler keeps that case rare.
//! - A request whose response never comes (the client went away and the server dropped the
//!   request, or the handler panicked) is still recorded, with status `attempt`.
//! - Excluded routes ([`AuditConfig::exclude`]) and requests a handler
//!   [skips](AuditContext::skip) produce no event at all.
//!
//! The layer runs on tokio (as axum and hyper servers do): records are tokio tasks, and the
//! fail-closed wait uses tokio's timer.
//!
//! # Limits
//!
//! Events are kept within the server's default validation limits, so that a request never
//! produces an event the server refuses (which would make a fail-closed route unusable): long
//! strings are clipped, containers nested deeper than `details` allows are kept as JSON text,
//! integers beyond ±2^53 become strings, and a captured body too large for an event is replaced
//! by an `omitted` note.

mod body;
mod config;
mod context;
mod events;
mod mapping;
mod service;

#[cfg(test)]
mod tests;

pub use body::{AuditRequestBody, AuditResponseBody};
pub use config::{AuditConfig, AuditLevel};
pub use context::{AuditContext, AuditPrincipal, ClientAddr};
pub use service::{AuditFuture, AuditLayer, AuditService};

use crate::{ClientError, Event, Priority};
use std::future::Future;
use std::pin::Pin;

/// Where the layer's events go: implemented by [`crate::Client`].
pub trait AuditRecorder: Clone + Send + Sync + 'static {
    /// Records one event: `Ok` once it is durable (spooled with fsync, or acknowledged by the
    /// server when the client has no spool).
    fn record(
        &self,
        event: Event,
        priority: Priority,
    ) -> Pin<Box<dyn Future<Output = Result<(), ClientError>> + Send + 'static>>;

    /// Whether an event recorded now can be expected to succeed (the spool has room, or the
    /// circuit breaker is not open): lets fail-closed routes refuse a request before its
    /// handler runs.
    fn ready(&self) -> bool;
}
