//! The admin's calls on client identities (`branchline connector client ...`): list,
//! approve, reset and revoke. See [`crate::identities`] for the rules.

use serde::{Deserialize, Serialize};

use branchline_wire::ClientId;

use crate::admin::{AdminCall, AdminResult};
use crate::handler::ServerState;
use crate::identities::{IdError, IdState, Identities, Identity};

/// `connector client list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentitiesView {
    /// `open` or `approve`.
    pub enrollment: String,
    /// Every bound identity (pending, active or revoked), sorted by client id.
    pub clients: Vec<IdentityView>,
}

/// One client identity in `client list`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityView {
    /// The client's id (32 hex digits).
    pub client_id: String,
    /// Its host name: from the registry, else the one its registration gave.
    pub hostname: String,
    /// The office it is placed in; `None` when it is not placed (e.g. pending).
    pub office: Option<String>,
    /// pending, active or revoked.
    pub state: String,
    /// First 16 hex digits of BLAKE3 of the client's public key.
    pub key_fingerprint: String,
    /// Unix ms: the last heartbeat or registration attempt; `None` when never heard
    /// from since the server started (pending) or unknown.
    pub last_seen_ms: Option<u64>,
    /// When its key was bound to the id (Unix ms).
    pub bound_ms: u64,
}

/// The result of approve, reset and revoke.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentityChange {
    /// The client's id (32 hex digits).
    pub client_id: String,
    /// The state now (`unbound` after a reset).
    pub state: String,
    /// The key fingerprint of the binding (first 16 hex digits of BLAKE3 of the public
    /// key).
    pub key_fingerprint: String,
    /// The revocation list's epoch after the change.
    pub revocation_epoch: u64,
}

/// Runs `client list`, `approve`, `reset` or `revoke` ([`AdminCall`]'s `Client*` calls);
/// other calls are answered `invalid`. An id that is not 32 hex digits is `invalid`, an
/// unknown one `not_found`; a revoked or reset client is also dropped from the registry,
/// the locations and the reports, and the revocation list is updated before the change is
/// stored.
pub(crate) async fn execute(state: &ServerState, call: AdminCall) -> AdminResult {
    let parse = |id: &str| {
        id.parse::<ClientId>().map_err(|e| {
            AdminResult::invalid(format!(
                "{id:?} is not a client id (32 hex digits, see `branchline connector client list`): {e}"
            ))
        })
    };
    let now = state.clock.now_ms();
    let (text, change): (String, fn(&mut Identities, &ClientId, u64) -> _) = match call {
        AdminCall::ClientList => return AdminResult::ok(view(state)),
        AdminCall::ClientApprove { id } => (id, |ids, id, now| ids.approve(id, now)),
        AdminCall::ClientRevoke { id } => (id, |ids, id, now| ids.revoke(id, now)),
        AdminCall::ClientReset { id } => (id, |ids, id, _| ids.reset(id)),
        _ => return AdminResult::invalid("not a client identity call"),
    };
    let id = match parse(&text) {
        Ok(id) => id,
        Err(e) => return e,
    };
    let result = change(&mut crate::lock(&state.identities), &id, now);
    let identity = match result {
        Ok(i) => i,
        Err(e @ IdError::Unknown(_)) => return AdminResult::not_found(e.to_string()),
        Err(e) => return AdminResult::invalid(e.to_string()),
    };
    let removed = crate::lock(&state.identities).get(&id).is_none();
    if removed || identity.state == IdState::Revoked {
        forget_everywhere(state, &id);
    }
    let (epoch, fingerprint) = {
        let ids = crate::lock(&state.identities);
        crate::apply_revocations(&ids, &state.revoked);
        (ids.epoch(), identity.fingerprint())
    };
    let stored = state
        .writer
        .save_identity(id, (!removed).then(|| identity.clone()))
        .await;
    let now_state = if removed {
        "unbound"
    } else {
        identity.state.as_str()
    };
    tracing::info!(client = %id, state = now_state, key = %fingerprint, "client identity changed by the admin");
    if let Err(e) = stored {
        return AdminResult::failed(format!(
            "client {id} is {now_state} until the server restarts, but the database write failed ({e}); run the command again"
        ));
    }
    AdminResult::ok(IdentityChange {
        client_id: id.to_string(),
        state: now_state.into(),
        key_fingerprint: fingerprint,
        revocation_epoch: epoch,
    })
}

/// A revoked or reset client is no longer listed, located or trusted for reports; its
/// heartbeat gets "unknown" and it must register again (and is then checked again).
fn forget_everywhere(state: &ServerState, id: &ClientId) {
    crate::lock(&state.registry).remove(id);
    crate::lock(&state.locations).forget_client(id);
    crate::lock(&state.reports).forget_client(id);
}

fn view(state: &ServerState) -> IdentitiesView {
    let identities: Vec<Identity> = crate::lock(&state.identities).snapshot();
    let enrollment = match crate::lock(&state.identities).mode() {
        crate::identities::Enrollment::Open => "open",
        crate::identities::Enrollment::Approve => "approve",
    };
    let registry = crate::lock(&state.registry);
    let offices = crate::lock(&state.offices);
    let clients = identities
        .into_iter()
        .map(|i| {
            let record = registry.get(&i.id);
            let last_seen = record
                .map(|r| r.last_seen_ms)
                .into_iter()
                .chain((i.last_attempt_ms > 0).then_some(i.last_attempt_ms))
                .max();
            IdentityView {
                client_id: i.id.to_string(),
                hostname: record
                    .map(|r| r.hostname.clone())
                    .unwrap_or_else(|| i.hostname.clone()),
                office: offices
                    .office_of(&i.id)
                    .map(|o| offices.tree().office(o).name.clone()),
                state: i.state.as_str().into(),
                key_fingerprint: i.fingerprint(),
                last_seen_ms: last_seen,
                bound_ms: i.bound_ms,
            }
        })
        .collect();
    IdentitiesView {
        enrollment: enrollment.into(),
        clients,
    }
}
