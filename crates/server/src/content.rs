//! Content the server holds itself, sent to Central Office clients on their 34760 (the
//! seed's "server sends content to clients in the Central Office" row).
//!
//! Opt-in (`server.content_cache_size`, 0 = off). When a package is published with a
//! file origin that the server host can read, the server imports it into its own cache
//! (verified against the content id). A client placed in the Central Office (by the
//! source address the server sees, never by the subnet it reports: the /24 or /64 of the
//! server's bind address until a topology says otherwise) is then told `server_sends` by
//! `Locate` and never reads the origin: it asks with `SendContent`, which the server
//! refuses to clients placed elsewhere;
//! the server opens a QUIC connection from an ephemeral port to the client's content port
//! and serves the client's piece requests on it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use branchline_quic::cache_source::CacheSource;
use branchline_quic::{ClientName, ContentNode, Role};
use branchline_store::{Cache, ContentId, FsStorage, PieceSize};
use tokio::task::JoinHandle;

use crate::catalogue::Item;
use crate::registry::ClientRecord;

/// The server's own content: its cache and the endpoint it sends from.
pub struct ServerContent {
    /// The server's content cache (`DATA_DIR/content`, capped by
    /// `server.content_cache_size`).
    cache: Arc<Cache<FsStorage>>,
    /// The QUIC endpoint it sends from (an ephemeral port).
    node: ContentNode,
    /// Open sending connections, one per client.
    sending: Mutex<HashMap<String, (quinn::Connection, JoinHandle<()>)>>,
}

impl Drop for ServerContent {
    fn drop(&mut self) {
        for (_, (conn, task)) in self
            .sending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            conn.close(0u32.into(), b"server shutting down");
            task.abort();
        }
        self.node.close();
    }
}

impl ServerContent {
    /// Content served from `cache` through `node`.
    pub fn new(cache: Arc<Cache<FsStorage>>, node: ContentNode) -> Self {
        ServerContent {
            cache,
            node,
            sending: Mutex::new(HashMap::new()),
        }
    }

    /// True when the server holds `id` complete and verified.
    pub fn holds(&self, id: &ContentId) -> bool {
        self.cache.status(id).is_some_and(|s| s.complete)
    }

    /// Imports a newly published item when its origin is a file this host can read.
    pub fn import_after_publish(self: &Arc<Self>, item: &Item) {
        let origin = item.meta.origin.trim_start_matches("file://").to_owned();
        if !Path::new(&origin).is_absolute() || !Path::new(&origin).is_file() {
            return;
        }
        let Ok(piece_size) = PieceSize::new(item.meta.piece_size) else {
            return;
        };
        let id = ContentId::from_bytes(item.meta.content_id);
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || {
            let now = crate::now_ms();
            match cache.import_file(Path::new(&origin), Some(&id), piece_size, now, |_, _| {}) {
                Ok(s) if s.complete => {
                    tracing::info!(content = %id, %origin, "the server holds the content now")
                }
                Ok(_) => tracing::warn!(content = %id, %origin, "import incomplete"),
                Err(e) => {
                    tracing::warn!(content = %id, %origin, error = %e, "cannot hold the content")
                }
            }
        });
    }

    /// Opens (or reuses) a connection to `client`'s content port and serves its piece
    /// requests on it.
    pub async fn send_to(&self, client: &ClientRecord) -> Result<(), String> {
        let key = client.id.to_string();
        if let Some((conn, _)) = crate::lock(&self.sending).get(&key)
            && conn.close_reason().is_none()
        {
            return Ok(());
        }
        let addr = client
            .content_addr()
            .ok_or("the client reported no address")?;
        let name = ClientName::from_id(&client.id.0).map_err(|e| e.to_string())?;
        let (conn, peer) = self
            .node
            .connect(addr, &Role::Client(name))
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let task = self.node.serve_on(
            conn.clone(),
            peer,
            Arc::new(CacheSource {
                cache: self.cache.clone(),
                corrupted: None,
            }),
        );
        if let Some((old, old_task)) = crate::lock(&self.sending).insert(key, (conn, task)) {
            old.close(0u32.into(), b"replaced");
            old_task.abort();
        }
        Ok(())
    }
}
