//! Retention in the server (SPEC §7): the policy set (`GET/PUT /v1/retention/policies`), legal
//! holds (`GET/POST /v1/legal-holds`, `DELETE /v1/legal-holds/{id}`), and the purge
//! (`POST /v1/retention/apply?dryRun=`, `vellum retention apply`, and a scheduled run in
//! `serve`).
//!
//! A purge, per log and per batch of at most [`PURGE_BATCH`] events (see
//! `vellum_core::retention` for why it verifies): (1) find the expired events not under any
//! active hold, scanning the log from its start in `seq` order and stopping at the first event
//! younger than the shortest policy (`receivedAt` grows with `seq`: the writer assigns both);
//! (2) append the `retention.purge` record through the writer and wait until it is durable;
//! (3) replace the events' content by tombstones in one transaction. A crash after (2) leaves
//! a record whose events are intact: verification accepts it, and the next run purges them
//! under a new record.

use crate::AppState;
use crate::api::{Auth, Params, record_read, require_read};
use crate::auth::Role;
use crate::error::ApiError;
use crate::ingest::{IngestHandle, Submission, SubmitError};
use crate::keys::Actor;
use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use vellum_core::pipeline::Pipeline;
use vellum_core::retention::{
    HoldFacts, LegalHold, PURGE_ACTION, PurgeDigest, PurgeFacts, RetentionPolicies, Tombstone,
    expired,
};
use vellum_core::time_fmt::{format_server_time, parse_rfc3339, unix_micros};
use vellum_store::{AuditStore, LegalHoldRecord, TombstoneWrite};

/// Events per purge record (and per tombstone transaction).
pub const PURGE_BATCH: usize = 5_000;

/// Where the policy set lives when changed over the API (else the configuration's).
pub const POLICIES_META_KEY: &str = "retention.policies";

/// What a purge run found and did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PurgeReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// The time expiry was judged at.
    pub now: String,
    /// Events scanned (the expired prefix of each log).
    pub scanned: u64,
    /// Expired events (held ones included).
    pub expired: u64,
    /// Expired events kept by a legal hold.
    pub held: u64,
    /// Events purged (0 on a dry run).
    pub purged: u64,
    /// Expired, unheld events per policy.
    pub by_policy: BTreeMap<String, u64>,
    /// The purge ids of the records appended.
    pub purge_ids: Vec<String>,
}

/// Why a purge stopped.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] vellum_store::StoreError),
    /// The purge record could not be appended (nothing was tombstoned for it).
    #[error("appending the purge record: {0}")]
    Writer(String),
    /// A blocking store task did not finish.
    #[error("store task: {0}")]
    Task(String),
}

/// Runs a blocking store call on the blocking pool.
async fn on_store<T: Send + 'static>(
    store: &Arc<dyn AuditStore>,
    call: impl FnOnce(&dyn AuditStore) -> Result<T, vellum_store::StoreError> + Send + 'static,
) -> Result<T, PurgeError> {
    let store = store.clone();
    Ok(tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| PurgeError::Task(e.to_string()))??)
}

/// The policy set in force: the one stored through the API, else the configuration's.
pub fn current_policies(
    store: &dyn AuditStore,
    configured: &RetentionPolicies,
) -> Result<RetentionPolicies, vellum_store::StoreError> {
    Ok(store
        .meta_get(POLICIES_META_KEY)?
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_else(|| configured.clone()))
}

fn string_at<'a>(event: &'a Value, pointer: &str) -> Option<&'a str> {
    event.pointer(pointer).and_then(Value::as_str)
}

/// Finds and (unless `dry_run`) purges every expired, unheld event at `now` (a parameter, so
/// tests can move the clock).
pub async fn purge(
    store: &Arc<dyn AuditStore>,
    pipeline: &Pipeline,
    ingest: &IngestHandle,
    policies: &RetentionPolicies,
    now: time::OffsetDateTime,
    dry_run: bool,
    actor: &Actor,
) -> Result<PurgeReport, PurgeError> {
    let now_micros = unix_micros(now);
    let mut report = PurgeReport {
        dry_run,
        now: format_server_time(now),
        ..PurgeReport::default()
    };
    let Some(shortest) = policies.shortest_days() else {
        return Ok(report);
    };
    let horizon = now_micros
        .saturating_sub(i64::from(shortest).saturating_mul(vellum_core::retention::DAY_MICROS));
    let holds: Vec<LegalHold> = on_store(store, |s| s.legal_holds())
        .await?
        .into_iter()
        .filter(|h| h.released_at.is_none())
        .map(|h| LegalHold {
            id: Some(h.id),
            reason: h.reason,
            organization_id: h.organization_id,
            principal_id: h.principal_id,
            patient_id: h.patient_id,
            data_subject_id: h.data_subject_id,
        })
        .collect();
    let purger = Purger {
        store,
        pipeline,
        ingest,
        now,
        actor,
    };
    for log_id in on_store(store, |s| s.log_ids()).await? {
        let mut next_seq = 0u64;
        let mut batch: Vec<Candidate> = Vec::new();
        'scan: loop {
            let log = log_id.clone();
            let page = on_store(store, move |s| s.scan_log(&log, next_seq, 1000)).await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                next_seq = row.seq + 1;
                if Tombstone::from_body(&row.canonical).is_some() {
                    continue;
                }
                let Ok(event) = serde_json::from_str::<Value>(&row.canonical) else {
                    continue; // malformed rows are verify's business, not retention's
                };
                let received = string_at(&event, "/receivedAt")
                    .and_then(|t| parse_rfc3339(t).ok())
                    .map(unix_micros);
                let Some(received) = received else { continue };
                if received > horizon {
                    break 'scan; // younger than every policy, and so is the rest of the log
                }
                report.scanned += 1;
                let Some(policy) = policies.policy_for(
                    string_at(&event, "/retentionPolicy"),
                    string_at(&event, "/dataClassification"),
                ) else {
                    continue;
                };
                if !expired(received, policy, now_micros) {
                    continue;
                }
                report.expired += 1;
                let facts = HoldFacts {
                    organization_id: string_at(&event, "/organizationId"),
                    principal_id: string_at(&event, "/principalId"),
                    patient_id: string_at(&event, "/healthcareContext/patientId"),
                    data_subject_id: string_at(&event, "/gdprContext/dataSubjectId"),
                };
                if holds.iter().any(|h| h.covers(&facts)) {
                    report.held += 1;
                    continue;
                }
                *report.by_policy.entry(policy.name.clone()).or_default() += 1;
                let Ok(hash) = <[u8; 32]>::try_from(row.hash.as_slice()) else {
                    continue;
                };
                if !dry_run {
                    batch.push((row.seq, hash, policy.name.clone()));
                    if batch.len() >= PURGE_BATCH {
                        purger.purge_batch(&log_id, &mut batch, &mut report).await?;
                    }
                }
            }
        }
        purger.purge_batch(&log_id, &mut batch, &mut report).await?;
    }
    Ok(report)
}

/// An expired, unheld event: `(seq, hash, policy)`.
type Candidate = (u64, [u8; 32], String);

/// What a purge run appends and tombstones with.
struct Purger<'a> {
    store: &'a Arc<dyn AuditStore>,
    pipeline: &'a Pipeline,
    ingest: &'a IngestHandle,
    now: time::OffsetDateTime,
    actor: &'a Actor,
}

impl Purger<'_> {
    /// Purges `batch` (emptying it; nothing to do when empty): the purge record first, durably,
    /// then the tombstones in one transaction.
    async fn purge_batch(
        &self,
        log_id: &str,
        batch: &mut Vec<Candidate>,
        report: &mut PurgeReport,
    ) -> Result<(), PurgeError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(batch);
        let purge_id = uuid::Uuid::now_v7().to_string();
        let mut digest = PurgeDigest::default();
        let mut policies: BTreeMap<&str, u64> = BTreeMap::new();
        for (seq, hash, policy) in &batch {
            digest.add(*seq, hash);
            *policies.entry(policy.as_str()).or_default() += 1;
        }
        let count = digest.count();
        let digest = digest.finish();
        let first = batch.first().map(|b| b.0).unwrap_or_default();
        let last = batch.last().map(|b| b.0).unwrap_or_default();
        let mut record = admin_event(PURGE_ACTION, self.actor, "AuditLog", log_id);
        // For people; the verifier reads only the `purge` member added below.
        record["details"] = json!({
            "purgeId": purge_id,
            "logId": log_id,
            "count": count,
            "fromSeq": first,
            "toSeq": last,
            "policies": policies,
            "judgedAt": format_server_time(self.now),
        });
        // One log per organization: the record must land in the log it accounts for.
        if log_id != "default" {
            record["organizationId"] = Value::String(log_id.to_owned());
        }
        // `purge` is a server field: added after validation (clients may not send it) and out
        // of redaction's reach (a pattern must never rewrite an id or digest).
        let facts = serde_json::to_value(PurgeFacts {
            purge_id: purge_id.clone(),
            count,
            digest,
        })
        .map_err(|e| PurgeError::Writer(e.to_string()))?;
        let prepared = self
            .pipeline
            .prepare_sealed(record, 0, time::OffsetDateTime::now_utc(), &mut |map| {
                map.insert("purge".into(), facts.clone());
                Ok(())
            })
            .map_err(|e| PurgeError::Writer(format!("purge record invalid: {e:?}")))?;
        let submission = Submission {
            event: prepared,
            idempotency_key: None,
            id: None,
        };
        match self.ingest.submit(vec![submission]).await {
            Ok(Ok(_)) => {}
            Ok(Err(commit)) => return Err(PurgeError::Writer(commit.to_string())),
            Err(SubmitError::Full) => return Err(PurgeError::Writer("ingest queue full".into())),
            Err(SubmitError::Stopped) => return Err(PurgeError::Writer("writer stopped".into())),
            Err(e @ SubmitError::Unavailable { .. }) => {
                return Err(PurgeError::Writer(e.to_string()));
            }
        }
        let purged_at = format_server_time(time::OffsetDateTime::now_utc());
        let rows: Vec<TombstoneWrite> = batch
            .into_iter()
            .map(|(seq, hash, policy)| TombstoneWrite {
                seq,
                hash,
                body: Tombstone {
                    seq,
                    hash: hex::encode(hash),
                    policy,
                    purged_at: purged_at.clone(),
                    purge_id: purge_id.clone(),
                }
                .to_body(),
            })
            .collect();
        let log = log_id.to_owned();
        let replaced = on_store(self.store, move |s| s.tombstone_events(&log, &rows)).await?;
        report.purged += replaced as u64;
        report.purge_ids.push(purge_id);
        metrics::counter!("vellum_retention_purged_total").increment(replaced as u64);
        Ok(())
    }
}

/// `GET /v1/retention/policies` (auditor).
pub async fn get_policies(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/retention/policies",
        Role::Auditor,
    )
    .await?;
    let policies = policies_in_force(&state).await?;
    record_read(
        &state,
        &principal,
        peer,
        "/v1/retention/policies",
        None,
        json!({}),
    )
    .await?;
    Ok(Json(policies).into_response())
}

/// The policy set in force, read on the blocking pool (the caller audits the read).
pub(crate) async fn policies_in_force(state: &AppState) -> Result<RetentionPolicies, ApiError> {
    let store = state.store.clone();
    let configured = state.config.retention.clone();
    Ok(
        tokio::task::spawn_blocking(move || current_policies(store.as_ref(), &configured))
            .await
            .map_err(|e| ApiError::internal(&e))??,
    )
}

/// `PUT /v1/retention/policies` (admin): replaces the policy set; audited.
pub async fn put_policies(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<RetentionPolicies>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/retention/policies",
        Role::Admin,
    )
    .await?;
    let Json(policies) = body.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    replace_policies(
        &state,
        &principal,
        peer,
        "/v1/retention/policies",
        &policies,
    )
    .await?;
    Ok(Json(policies).into_response())
}

/// Validates and stores a new policy set with its `retention.policies.update` event (one
/// transaction); shared by `PUT /v1/retention/policies` and the console.
pub(crate) async fn replace_policies(
    state: &AppState,
    principal: &crate::auth::Principal,
    peer: SocketAddr,
    endpoint: &str,
    policies: &RetentionPolicies,
) -> Result<(), ApiError> {
    policies.validate().map_err(ApiError::invalid)?;
    let actor = Actor::http(principal, peer, endpoint);
    let mut event = admin_event(
        "retention.policies.update",
        &actor,
        "RetentionPolicies",
        "policies",
    );
    event["details"] = serde_json::to_value(policies).map_err(|e| ApiError::internal(&e))?;
    let text = serde_json::to_string(policies).map_err(|e| ApiError::internal(&e))?;
    let store = state.store.clone();
    let audit = vec![event.to_string()];
    tokio::task::spawn_blocking(move || store.meta_set_audited(POLICIES_META_KEY, &text, &audit))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    crate::outbox::settle(state).await;
    Ok(())
}

/// An administrative audit event by `actor` about `target`.
pub fn admin_event(action: &str, actor: &Actor, target_type: &str, target_id: &str) -> Value {
    let mut event = json!({
        "action": action,
        "status": "success",
        "principalId": actor.principal_id,
        "principalType": actor.principal_type,
        "targetResourceType": target_type,
        "targetResourceId": target_id,
        "dataClassification": "CONFIDENTIAL",
        "severity": "medium",
        "technicalContext": {"endpoint": actor.endpoint},
    });
    if let Some(org) = &actor.organization_id {
        event["organizationId"] = Value::String(org.clone());
    }
    if let Some(ip) = &actor.ip {
        event["sessionContext"] = json!({"ipAddress": ip});
    }
    event
}

/// `POST /v1/retention/apply?dryRun=true|false` (admin).
pub async fn post_apply(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Params(params): Params,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/retention/apply", Role::Admin).await?;
    let mut dry_run = false;
    for (name, value) in &params {
        match name.as_str() {
            "dryRun" => {
                dry_run = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::bad_request("dryRun", "must be true or false")),
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    other,
                    "is not a parameter of this route",
                ));
            }
        }
    }
    require_unbound(&principal)?;
    let report = run(
        &state,
        &Actor::http(&principal, peer, "/v1/retention/apply"),
        dry_run,
    )
    .await?;
    Ok(Json(report).into_response())
}

/// A purge runs over every organization, so only an admin key bound to none may start one.
pub(crate) fn require_unbound(principal: &crate::auth::Principal) -> Result<(), ApiError> {
    if principal.organization_id.is_some() {
        return Err(ApiError::forbidden(
            "retention runs over every organization; use an admin key not bound to one",
        ));
    }
    Ok(())
}

/// One purge run of a running server at the current time (the route and the schedule).
pub async fn run(state: &AppState, actor: &Actor, dry_run: bool) -> Result<PurgeReport, ApiError> {
    let _one_at_a_time = state.retention_lock.lock().await;
    let store = state.store.clone();
    let configured = state.config.retention.clone();
    let policies =
        tokio::task::spawn_blocking(move || current_policies(store.as_ref(), &configured))
            .await
            .map_err(|e| ApiError::internal(&e))??;
    let report = purge(
        &state.store,
        &state.pipeline,
        &state.ingest,
        &policies,
        time::OffsetDateTime::now_utc(),
        dry_run,
        actor,
    )
    .await
    .map_err(|e| ApiError::overloaded(format!("retention stopped: {e}")))?;
    if dry_run {
        // A dry run reads the log: it is audited like a read.
        let mut event = admin_event("retention.dryrun", actor, "AuditLog", "all");
        event["details"] = serde_json::to_value(&report).map_err(|e| ApiError::internal(&e))?;
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || store.push_outbox(&[event.to_string()]))
            .await
            .map_err(|e| ApiError::internal(&e))??;
        crate::outbox::settle(state).await;
    }
    Ok(report)
}

/// `GET /v1/legal-holds` (auditor): every hold, active and released.
pub async fn list_holds(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/legal-holds", Role::Auditor).await?;
    let holds = holds_of(&state, &principal, peer, "/v1/legal-holds").await?;
    Ok(Json(json!({ "holds": holds })).into_response())
}

/// Every hold `principal` may see (an org-bound key: its organization's), the listing recorded
/// as a read at `endpoint`; shared by `GET /v1/legal-holds` and the console.
pub(crate) async fn holds_of(
    state: &AppState,
    principal: &crate::auth::Principal,
    peer: SocketAddr,
    endpoint: &str,
) -> Result<Vec<LegalHoldRecord>, ApiError> {
    let store = state.store.clone();
    let holds = tokio::task::spawn_blocking(move || store.legal_holds())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let holds: Vec<LegalHoldRecord> = holds
        .into_iter()
        .filter(|h| {
            principal.organization_id.is_none() || h.organization_id == principal.organization_id
        })
        .collect();
    record_read(
        state,
        principal,
        peer,
        endpoint,
        None,
        json!({"holds": holds.len()}),
    )
    .await?;
    Ok(holds)
}

/// `POST /v1/legal-holds` (admin): places a hold; 201 with it. An org-bound admin's holds are
/// bound to its organization.
pub async fn create_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<LegalHold>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    require_read(&state, &principal, peer, "/v1/legal-holds", Role::Admin).await?;
    let Json(hold) = body.map_err(|e| ApiError::bad_request("", e.body_text()))?;
    let record = place_hold(&state, &principal, peer, "/v1/legal-holds", hold).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// Places a hold (an org-bound admin's is bound to its organization) with its
/// `legalhold.create` event; shared by `POST /v1/legal-holds` and the console.
pub(crate) async fn place_hold(
    state: &AppState,
    principal: &crate::auth::Principal,
    peer: SocketAddr,
    endpoint: &str,
    mut hold: LegalHold,
) -> Result<LegalHoldRecord, ApiError> {
    if let Some(own) = &principal.organization_id {
        match &hold.organization_id {
            Some(asked) if asked != own => {
                return Err(ApiError::forbidden(format!(
                    "this admin key may only place holds in organization {own:?}"
                )));
            }
            _ => hold.organization_id = Some(own.clone()),
        }
    }
    hold.validate().map_err(ApiError::invalid)?;
    let actor = Actor::http(principal, peer, endpoint);
    let record = LegalHoldRecord {
        id: hold
            .id
            .clone()
            .unwrap_or_else(|| format!("hold-{}", uuid::Uuid::now_v7().simple())),
        reason: hold.reason,
        organization_id: hold.organization_id,
        principal_id: hold.principal_id,
        patient_id: hold.patient_id,
        data_subject_id: hold.data_subject_id,
        created_at: format_server_time(time::OffsetDateTime::now_utc()),
        created_by: actor.principal_id.clone(),
        released_at: None,
        released_by: None,
    };
    let mut event = admin_event("legalhold.create", &actor, "LegalHold", &record.id);
    event["details"] = serde_json::to_value(&record).map_err(|e| ApiError::internal(&e))?;
    let store = state.store.clone();
    let stored = record.clone();
    let audit = vec![event.to_string()];
    let inserted = tokio::task::spawn_blocking(move || {
        if store.legal_holds()?.iter().any(|h| h.id == stored.id) {
            return Ok(false);
        }
        store.insert_legal_hold(&stored, &audit).map(|()| true)
    })
    .await
    .map_err(|e| ApiError::internal(&e))??;
    if !inserted {
        return Err(ApiError::conflict(format!(
            "a legal hold {:?} exists",
            record.id
        )));
    }
    crate::outbox::settle(state).await;
    Ok(record)
}

/// `DELETE /v1/legal-holds/{id}` (admin): releases a hold (it stays listed as released).
pub async fn release_hold(
    State(state): State<AppState>,
    Auth(principal): Auth,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_read(
        &state,
        &principal,
        peer,
        "/v1/legal-holds/{id}",
        Role::Admin,
    )
    .await?;
    let hold = release(&state, &principal, peer, "/v1/legal-holds/{id}", &id).await?;
    Ok(Json(hold).into_response())
}

/// Releases hold `id` if `principal` may see it (404 otherwise, 409 when already released)
/// with its `legalhold.release` event; shared by `DELETE /v1/legal-holds/{id}` and the console.
pub(crate) async fn release(
    state: &AppState,
    principal: &crate::auth::Principal,
    peer: SocketAddr,
    endpoint: &str,
    id: &str,
) -> Result<LegalHoldRecord, ApiError> {
    let store = state.store.clone();
    let holds = tokio::task::spawn_blocking(move || store.legal_holds())
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let Some(mut hold) = holds.into_iter().find(|h| {
        h.id == id
            && (principal.organization_id.is_none()
                || h.organization_id == principal.organization_id)
    }) else {
        return Err(ApiError::not_found(format!("no legal hold {id}")));
    };
    if hold.released_at.is_some() {
        return Err(ApiError::conflict(format!(
            "legal hold {id} is already released"
        )));
    }
    let actor = Actor::http(principal, peer, endpoint);
    let at = format_server_time(time::OffsetDateTime::now_utc());
    hold.released_at = Some(at.clone());
    hold.released_by = Some(actor.principal_id.clone());
    let mut event = admin_event("legalhold.release", &actor, "LegalHold", &hold.id);
    event["details"] = serde_json::to_value(&hold).map_err(|e| ApiError::internal(&e))?;
    let store = state.store.clone();
    let by = actor.principal_id.clone();
    let audit = vec![event.to_string()];
    let hold_id = hold.id.clone();
    let released =
        tokio::task::spawn_blocking(move || store.release_legal_hold(&hold_id, &at, &by, &audit))
            .await
            .map_err(|e| ApiError::internal(&e))??;
    if !released {
        return Err(ApiError::conflict(format!(
            "legal hold {id} is already released"
        )));
    }
    crate::outbox::settle(state).await;
    Ok(hold)
}
