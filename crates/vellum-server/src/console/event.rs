//! The event page: every field (pretty JSON and a table), redactions marked, the chain
//! neighbours, and a verification badge computed live on the server.
//!
//! The badge runs the same code as `vellum verify` on this one event: a
//! [`vellum_core::verify::ChainVerifier`] fed the previous stored event and this one checks the
//! hash against the stored canonical bytes, the HMAC with the server's keyring and the chain
//! link; the inclusion proof comes from the stored tiles ([`crate::proofs`]) and is checked
//! against the latest signed checkpoint, whose signature is checked against the published keys
//! ([`crate::verification::known_keys`]). No hashing is reimplemented here.

use super::{ConsoleError, Nav, Signed, render};
use crate::AppState;
use crate::api::{record_read, visible_to};
use crate::auth::{Principal, Role};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use vellum_core::checkpoint::CheckpointKey;
use vellum_core::integrity::HmacKeyring;
use vellum_core::merkle::{leaf_hash, verify_inclusion};
use vellum_core::verify::{ChainVerifier, Failure};
use vellum_store::{AuditStore, StoredEvent};

/// One line of the verification badge.
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `pass`, `fail` or `skip` (not checked, or not yet possible).
    pub outcome: &'static str,
    /// Why.
    pub detail: String,
}

/// The badge: `verified` (every check passed), `failed` (one failed) or `partial`.
pub struct Verification {
    /// The verdict.
    pub verdict: &'static str,
    /// Each check.
    pub checks: Vec<Check>,
}

fn check(name: &'static str, outcome: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        outcome,
        detail: detail.into(),
    }
}

/// Verifies one stored event against its stored predecessor, the keyring and the latest
/// checkpoint (blocking: reads the store).
pub fn verify_event(
    store: &dyn AuditStore,
    keyring: Option<&HmacKeyring>,
    require_signatures: bool,
    keys: &[CheckpointKey],
    event: &StoredEvent,
) -> Result<Verification, vellum_store::StoreError> {
    let log = event.log_id.as_str();
    let seq = event.seq;
    let mut checks = Vec::new();
    let previous = match seq.checked_sub(1) {
        None => None,
        Some(p) => store
            .scan_log(log, p, 1)?
            .into_iter()
            .find(|row| row.seq == p),
    };
    let mut verifier = ChainVerifier::new(log, keyring).require_signatures(require_signatures);
    if let Some(prev) = &previous {
        verifier.check(
            prev.seq,
            &prev.canonical,
            &prev.hash,
            prev.signature.as_deref(),
        );
    }
    verifier.check(
        seq,
        &event.canonical,
        &event.hash,
        event.signature.as_deref(),
    );
    let failures: Vec<&Failure> = verifier
        .failures()
        .iter()
        .filter(|f| f.seq() == seq && !matches!(f, Failure::Missing { .. }))
        .collect();
    let describe = |f: &Failure| serde_json::to_string(f).unwrap_or_default();

    match failures
        .iter()
        .find(|f| matches!(f, Failure::HashMismatch { .. }))
    {
        Some(f) => checks.push(check("Hash", "fail", describe(f))),
        None => checks.push(check(
            "Hash",
            "pass",
            "SHA-256 of the stored canonical bytes equals the stored hash",
        )),
    }
    let signature_failure = failures.iter().find(|f| {
        matches!(
            f,
            Failure::SignatureMismatch { .. }
                | Failure::UnknownKey { .. }
                | Failure::MissingSignature { .. }
                | Failure::Unsigned { .. }
        )
    });
    match (keyring, signature_failure, &event.signature) {
        (_, Some(f), _) => checks.push(check("HMAC signature", "fail", describe(f))),
        (None, None, _) => {
            checks.push(check("HMAC signature", "skip", "no keyring on this server"))
        }
        (Some(_), None, None) => checks.push(check(
            "HMAC signature",
            "skip",
            "the event is unsigned (written with signatures off)",
        )),
        (Some(_), None, Some(_)) => checks.push(check(
            "HMAC signature",
            "pass",
            "HMAC-SHA256 under the event's keyId matches (constant-time)",
        )),
    }
    match (
        failures
            .iter()
            .find(|f| matches!(f, Failure::ChainBreak { .. })),
        &previous,
    ) {
        (Some(f), _) => checks.push(check("Chain link", "fail", describe(f))),
        (None, _) if seq == 0 => checks.push(check(
            "Chain link",
            "pass",
            "first event of its log: prevHash is the genesis value",
        )),
        (None, Some(_)) => checks.push(check(
            "Chain link",
            "pass",
            format!("prevHash equals the stored hash of seq {}", seq - 1),
        )),
        (None, None) => checks.push(check(
            "Chain link",
            "fail",
            format!("the previous event (seq {}) is missing", seq - 1),
        )),
    }
    if let Some(f) = failures
        .iter()
        .find(|f| matches!(f, Failure::Misplaced { .. } | Failure::Malformed { .. }))
    {
        checks.push(check("Stored form", "fail", describe(f)));
    }

    // Inclusion in the tree the latest signed checkpoint commits to.
    let inclusion = match store.latest_checkpoint(log)? {
        None => check("Inclusion proof", "skip", "the log has no checkpoint yet"),
        Some(cp) if cp.tree_size <= seq => check(
            "Inclusion proof",
            "skip",
            format!(
                "not yet covered: the latest checkpoint has {} events",
                cp.tree_size
            ),
        ),
        Some(cp) => match cp.verify(keys) {
            Err(e) => check(
                "Inclusion proof",
                "fail",
                format!("checkpoint of size {} does not verify: {e}", cp.tree_size),
            ),
            Ok(body) => {
                let stored: Option<[u8; 32]> = event.hash.as_slice().try_into().ok();
                let proof = crate::proofs::inclusion_from_store(store, log, seq, cp.tree_size);
                match (stored, proof) {
                    (Some(hash), Ok(proof)) => match verify_inclusion(
                        seq,
                        cp.tree_size,
                        &leaf_hash(&hash),
                        &proof,
                        &body.root_hash,
                    ) {
                        Ok(()) => check(
                            "Inclusion proof",
                            "pass",
                            format!(
                                "leaf {seq} of the tree of size {} signed by key {} at {} ({} proof hashes)",
                                cp.tree_size,
                                cp.key_id,
                                cp.timestamp,
                                proof.len()
                            ),
                        ),
                        Err(e) => check("Inclusion proof", "fail", e.to_string()),
                    },
                    (None, _) => check("Inclusion proof", "fail", "stored hash is not 32 bytes"),
                    (_, Err(e)) => check("Inclusion proof", "fail", e.message),
                }
            }
        },
    };
    checks.push(inclusion);
    let verdict = if checks.iter().any(|c| c.outcome == "fail") {
        "failed"
    } else if checks.iter().all(|c| c.outcome == "pass") {
        "verified"
    } else {
        "partial"
    };
    Ok(Verification { verdict, checks })
}

/// A row of the field table.
pub struct FieldRow {
    /// JSON pointer.
    pub pointer: String,
    /// The value (strings unquoted, others as JSON).
    pub value: String,
    /// Whether redaction touched it.
    pub redacted: bool,
}

/// Flattens an event into pointer/value rows, marking those under a `redactions` pointer.
pub fn field_rows(event: &Value) -> Vec<FieldRow> {
    let redactions: Vec<String> = event
        .get("redactions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    fn walk(value: &Value, pointer: &mut String, redactions: &[String], rows: &mut Vec<FieldRow>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (name, v) in map {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
                    walk(v, pointer, redactions, rows);
                    pointer.truncate(len);
                }
            }
            Value::Array(items) if !items.is_empty() && pointer != "/redactions" => {
                for (i, v) in items.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push_str(&format!("/{i}"));
                    walk(v, pointer, redactions, rows);
                    pointer.truncate(len);
                }
            }
            other => rows.push(FieldRow {
                redacted: redactions.iter().any(|r| {
                    pointer == r
                        || pointer
                            .strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                }),
                pointer: pointer.clone(),
                value: match other {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                },
            }),
        }
    }
    walk(event, &mut String::new(), &redactions, &mut rows);
    rows
}

/// A chain neighbour.
pub struct Neighbour {
    /// `seq N`, and why there is no link if there is none.
    pub label: String,
    /// The link, when the neighbour exists and is visible to this key.
    pub href: Option<String>,
}

fn neighbour(principal: &Principal, seq: u64, row: Option<&StoredEvent>) -> Neighbour {
    match row {
        None => Neighbour {
            label: format!("seq {seq} (not written yet)"),
            href: None,
        },
        Some(row) if vellum_core::retention::Tombstone::from_body(&row.canonical).is_some() => {
            Neighbour {
                label: format!("seq {seq} (purged by retention)"),
                href: None,
            }
        }
        Some(row) if !visible_to(principal, row) => Neighbour {
            label: format!("seq {seq} (another organization's event)"),
            href: None,
        },
        Some(row) => {
            let id = serde_json::from_str::<Value>(&row.canonical)
                .ok()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
            Neighbour {
                label: format!("seq {seq}"),
                href: id.map(|id| format!("/console/events/{id}")),
            }
        }
    }
}

#[derive(Template)]
#[template(path = "console/event.html")]
struct EventPage {
    nav: Nav,
    id: String,
    log_id: String,
    seq: u64,
    action: String,
    status: String,
    timestamp: String,
    pretty: String,
    fields: Vec<FieldRow>,
    redactions: Vec<String>,
    previous: Option<Neighbour>,
    next: Neighbour,
    verification: Verification,
}

/// `GET /console/events/{id}`.
pub async fn page(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let principal = &signed.principal;
    signed
        .authorize_read(&state, "/console/events/{id}", Role::Reader)
        .await?;
    let uuid = uuid::Uuid::parse_str(&id)
        .map_err(|_| ConsoleError::bad_request("an event id is a UUID"))?;
    let store = state.store.clone();
    let event = tokio::task::spawn_blocking(move || store.get_event(&uuid))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?
        .filter(|e| visible_to(principal, e))
        .ok_or_else(|| ConsoleError::new(StatusCode::NOT_FOUND, format!("no event {id}")))?;
    if let Some(t) = vellum_core::retention::Tombstone::from_body(&event.canonical) {
        return Err(ConsoleError::new(
            StatusCode::GONE,
            format!(
                "event {id} (seq {}) was purged under retention policy {} at {}; its hash {} stays in the log",
                t.seq, t.policy, t.purged_at, t.hash
            ),
        ));
    }
    record_read(
        &state,
        principal,
        signed.peer,
        "/console/events/{id}",
        Some(&id),
        json!({"resultCount": 1}),
    )
    .await?;
    // A fresh event may not be under a checkpoint yet: ask for one, as a proof request does.
    let store = state.store.clone();
    let log = event.log_id.clone();
    let latest = tokio::task::spawn_blocking(move || store.latest_checkpoint(&log))
        .await
        .map_err(|e| ConsoleError::internal(&e))?
        .map_err(crate::error::ApiError::from)?;
    if latest.is_none_or(|cp| cp.tree_size <= event.seq)
        && let Err(e) = state.ingest.checkpoint_now(&event.log_id).await
    {
        tracing::debug!(error = %e, "no fresh checkpoint for the event page");
    }
    let mut body = event.to_api_json();
    if crate::subjects::may_decrypt(principal) {
        body = tokio::task::block_in_place(|| {
            crate::subjects::with_decrypted(body, &event.canonical, &state.subjects)
        });
    }
    let value: Value = serde_json::from_str(&body).map_err(|e| ConsoleError::internal(&e))?;
    let store = state.store.clone();
    let keyring = state.keyring.clone();
    let current = state.checkpoint_key.clone();
    let require_signatures = state.config.enable_signatures;
    let who = principal.clone();
    let (verification, previous, next) = tokio::task::spawn_blocking(move || {
        let keys = crate::verification::known_keys(store.as_ref(), std::slice::from_ref(&current))?;
        let verification = verify_event(
            store.as_ref(),
            Some(keyring.as_ref()),
            require_signatures,
            &keys,
            &event,
        )?;
        let around = store.scan_log(&event.log_id, event.seq.saturating_sub(1), 3)?;
        let find = |seq: u64| around.iter().find(|r| r.seq == seq);
        let previous = event
            .seq
            .checked_sub(1)
            .map(|p| neighbour(&who, p, find(p)));
        let next = neighbour(&who, event.seq + 1, find(event.seq + 1));
        Ok::<_, vellum_store::StoreError>((verification, previous, next))
    })
    .await
    .map_err(|e| ConsoleError::internal(&e))?
    .map_err(crate::error::ApiError::from)?;
    let t = |p: &str| super::text_at(&value, p);
    let page = EventPage {
        nav: signed.nav("search"),
        id: t("/id"),
        log_id: t("/logId"),
        seq: value.get("seq").and_then(Value::as_u64).unwrap_or_default(),
        action: t("/action"),
        status: t("/status"),
        timestamp: t("/timestamp"),
        pretty: serde_json::to_string_pretty(&value).map_err(|e| ConsoleError::internal(&e))?,
        fields: field_rows(&value),
        redactions: value
            .get("redactions")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        previous,
        next,
        verification,
    };
    render(&page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_rows_flatten_and_mark_redactions() {
        let event = json!({
            "action": "read",
            "details": {"ssn": "[REDACTED]", "a/b": 1, "list": ["x", "y"]},
            "redactions": ["/details/ssn"],
        });
        let rows = field_rows(&event);
        let find = |p: &str| rows.iter().find(|r| r.pointer == p).expect(p);
        assert_eq!(find("/action").value, "read");
        assert!(find("/details/ssn").redacted);
        assert!(!find("/action").redacted);
        assert_eq!(find("/details/a~1b").value, "1");
        assert_eq!(find("/details/list/1").value, "y");
        assert_eq!(find("/redactions").value, "[\"/details/ssn\"]");
        // A pointer that merely shares a prefix is not redacted.
        let event = json!({"details": {"ssnx": 1}, "redactions": ["/details/ssn"]});
        assert!(!field_rows(&event)[0].redacted);
    }
}
