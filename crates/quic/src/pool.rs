//! Reusing connections: one open connection per peer.
//!
//! A handshake costs two signatures and two verifications; a client fetching
//! hundreds of pieces from a handful of peers should pay it once per peer. The
//! pool keys connections by (address, expected identity), hands out clones of an
//! open connection, and reconnects when the last one has closed (idle timeout,
//! peer restart). Concurrent callers for the same peer wait for one handshake
//! instead of each making their own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quinn::{Connection, Endpoint};

use crate::endpoint::{self, CLOSE_REFUSED, QuicError};
use crate::identity::{PeerIdentity, Role};
use crate::tls::DeploymentTrust;

type Slot = Arc<tokio::sync::Mutex<Option<(Connection, PeerIdentity)>>>;

/// Open connections from one endpoint, one per peer.
#[derive(Debug, Clone)]
pub struct ConnectionPool {
    endpoint: Endpoint,
    trust: DeploymentTrust,
    slots: Arc<Mutex<HashMap<(SocketAddr, Role), Slot>>>,
}

impl ConnectionPool {
    /// A pool connecting from `endpoint` (which must be able to connect).
    pub fn new(endpoint: Endpoint, trust: DeploymentTrust) -> Self {
        Self {
            endpoint,
            trust,
            slots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<(SocketAddr, Role), Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An open connection to `peer` at `addr`: the pooled one if it is still
    /// open and the peer not revoked, else a new one.
    pub async fn get(
        &self,
        addr: SocketAddr,
        peer: &Role,
    ) -> Result<(Connection, PeerIdentity), QuicError> {
        let slot = self
            .slots()
            .entry((addr, peer.clone()))
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some((conn, identity)) = held.as_ref()
            && conn.close_reason().is_none()
            && !self.trust.revoked.is_revoked(identity)
        {
            return Ok((conn.clone(), identity.clone()));
        }
        *held = None;
        let fresh = endpoint::connect(&self.endpoint, addr, peer, &self.trust).await?;
        *held = Some(fresh.clone());
        Ok(fresh)
    }

    /// Closes and forgets the connection to `peer` at `addr`, e.g. after it gave
    /// bad data. The next [`ConnectionPool::get`] connects anew.
    pub fn forget(&self, addr: SocketAddr, peer: &Role) {
        let slot = self.slots().remove(&(addr, peer.clone()));
        if let Some(slot) = slot
            && let Ok(mut held) = slot.try_lock()
            && let Some((conn, _)) = held.take()
        {
            conn.close(endpoint::CLOSE_DONE, b"forgotten");
        }
    }

    /// Closes pooled connections whose peer is now revoked and drops closed
    /// ones. Returns how many revoked connections were closed. Call after
    /// updating the revocation list, and now and then to keep the pool small.
    pub fn prune(&self) -> usize {
        let mut closed = 0;
        self.slots().retain(|_, slot| {
            let Ok(mut held) = slot.try_lock() else {
                return true; // A handshake is in progress.
            };
            match held.as_ref() {
                Some((conn, identity)) if self.trust.revoked.is_revoked(identity) => {
                    conn.close(CLOSE_REFUSED, b"revoked");
                    closed += 1;
                    *held = None;
                    false
                }
                Some((conn, _)) => conn.close_reason().is_none(),
                None => false,
            }
        });
        closed
    }

    /// Number of peers with a pooled entry.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
