//! What the application tells the layer about a request: who made it ([`AuditPrincipal`]),
//! where it came from ([`ClientAddr`]), and what the handler learned ([`AuditContext`]).

use crate::PrincipalType;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated caller of a request.
///
/// An authentication layer placed outside the audit layer inserts it into the request's
/// extensions (`request.extensions_mut().insert(principal)`); a handler or an inner layer
/// hands it over through [`AuditContext::set_principal`]; a handler can also put it in the
/// response's extensions. The layer uses the first of those it finds, so the identity proven
/// at the edge wins over anything set later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPrincipal {
    /// `principalId`: the user, service or system id.
    pub id: String,
    /// `principalType`.
    pub kind: PrincipalType,
    /// `organizationId`: the tenant; it replaces the layer's default organization.
    pub organization_id: Option<String>,
    /// `sessionContext.sessionId`: the application session the request belongs to.
    pub session_id: Option<String>,
}

impl AuditPrincipal {
    /// A principal with no organization and no session.
    pub fn new(id: impl Into<String>, kind: PrincipalType) -> Self {
        Self {
            id: id.into(),
            kind,
            organization_id: None,
            session_id: None,
        }
    }

    /// Sets the tenant the principal acts for.
    pub fn organization(mut self, organization_id: impl Into<String>) -> Self {
        self.organization_id = Some(organization_id.into());
        self
    }

    /// Sets the application session id.
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }
}

/// The peer address of a connection, for services served by hyper directly (axum users get it
/// from `ConnectInfo<SocketAddr>` instead): insert it into each request's extensions and the
/// layer records its IP as `sessionContext.ipAddress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub SocketAddr);

/// What a handler adds to its request's audit event.
///
/// The layer puts one into every request's extensions; take it in an axum handler with
/// `Extension<AuditContext>` (or `request.extensions().get::<AuditContext>()` in a tower
/// service). Clones share one state, so an inner layer and the handler write to the same
/// event. Additions made after the response has left the handler are ignored: the event is
/// built from what the context holds at that moment.
///
/// ```
/// use vellum_client::PrincipalType;
/// use vellum_client::middleware::{AuditContext, AuditPrincipal};
/// let ctx = AuditContext::default();
/// ctx.set_principal(AuditPrincipal::new("dr-ana", PrincipalType::Professional));
/// ctx.set_emergency_access("patient unconscious in ER");
/// ctx.add_detail("reason", "break-glass");
/// ```
#[derive(Clone, Default)]
pub struct AuditContext {
    state: Arc<Mutex<ContextState>>,
}

/// The additions, as the event builder reads them.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContextState {
    pub(crate) principal: Option<AuditPrincipal>,
    pub(crate) patient: Option<String>,
    pub(crate) target: Option<(String, String)>,
    /// The clinical justification of a break-glass access.
    pub(crate) emergency: Option<String>,
    pub(crate) details: Map<String, Value>,
    pub(crate) skip: bool,
}

impl std::fmt::Debug for AuditContext {
    // Details and ids can be PHI: only their presence is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("AuditContext")
            .field("principal", &state.principal.is_some())
            .field("patient", &state.patient.is_some())
            .field("target", &state.target.is_some())
            .field("emergency", &state.emergency.is_some())
            .field("details", &state.details.len())
            .field("skip", &state.skip)
            .finish()
    }
}

impl AuditContext {
    /// Names who made the request, for an authentication step that runs inside the layer
    /// (a principal found in the request's extensions on entry still wins).
    pub fn set_principal(&self, principal: AuditPrincipal) {
        self.state.lock().principal = Some(principal);
    }

    /// Sets `healthcareContext.patientId`, replacing the one taken from the path (for routes
    /// whose patient is not in the URL, such as a search by MRN).
    pub fn set_patient(&self, patient_id: impl Into<String>) {
        self.state.lock().patient = Some(patient_id.into());
    }

    /// Sets `targetResourceType` and `targetResourceId`, replacing what the path gave.
    pub fn set_target(&self, kind: impl Into<String>, id: impl Into<String>) {
        self.state.lock().target = Some((kind.into(), id.into()));
    }

    /// Marks the request as a break-glass access: sets `healthcareContext.emergencyAccess`
    /// and `clinicalJustification`, and raises the event to high priority, because emergency
    /// access bypasses the usual authorization and is reviewed first.
    pub fn set_emergency_access(&self, justification: impl Into<String>) {
        self.state.lock().emergency = Some(justification.into());
    }

    /// Adds a member to the event's `details` (redacted with the preset's rules like the
    /// rest of the event). It replaces a member of the same name set by the layer.
    pub fn add_detail(&self, name: impl Into<String>, value: impl Into<Value>) {
        self.state.lock().details.insert(name.into(), value.into());
    }

    /// Records nothing for this request (for a handler that audits it itself, or a request
    /// that is not an access, such as a cache probe).
    pub fn skip(&self) {
        self.state.lock().skip = true;
    }

    /// A copy of the additions made so far.
    pub(crate) fn snapshot(&self) -> ContextState {
        self.state.lock().clone()
    }

    /// Whether [`AuditContext::skip`] was called.
    pub(crate) fn skipped(&self) -> bool {
        self.state.lock().skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_state_and_debug_hides_values() {
        let ctx = AuditContext::default();
        let other = ctx.clone();
        other.set_patient("p-secret");
        other.add_detail("note", "diagnosis: flu");
        other.set_target("Observation", "o-1");
        let state = ctx.snapshot();
        assert_eq!(state.patient.as_deref(), Some("p-secret"));
        assert_eq!(
            state.target,
            Some(("Observation".to_owned(), "o-1".to_owned()))
        );
        let debug = format!("{ctx:?}");
        assert!(
            !debug.contains("p-secret") && !debug.contains("flu"),
            "{debug}"
        );
        assert!(!ctx.skipped());
        other.skip();
        assert!(ctx.skipped());
    }

    #[test]
    fn principal_builder_sets_every_field() {
        let p = AuditPrincipal::new("u-1", PrincipalType::User)
            .organization("org-1")
            .session("s-1");
        assert_eq!(p.organization_id.as_deref(), Some("org-1"));
        assert_eq!(p.session_id.as_deref(), Some("s-1"));
    }
}
