//! Content the server assigned to this client (deployments, relaying for a child
//! office): fetched into the cache with nobody calling `branchline get`.
//!
//! Assignments arrive pushed by the server (an `Assign` small message on 34325) and again
//! in every heartbeat reply until the client holds the content complete. Each content
//! item runs at most one download at a time; one that fails is tried again when the
//! server repeats the assignment (at the next heartbeat).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use branchline_store::ContentId;
use branchline_wire::msg::Assign;
use tokio::sync::{mpsc, watch};

use crate::download::{DownloadProgress, Target, download};
use crate::services::Services;

/// Most assigned downloads running at once.
pub const MAX_RUNNING: usize = 4;

/// Runs assignments until the channel closes.
pub async fn run(
    mut rx: mpsc::Receiver<Assign>,
    mut services: watch::Receiver<Option<Arc<Services>>>,
    seed: u64,
) {
    let running: Arc<Mutex<HashSet<ContentId>>> = Arc::default();
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING));
    while let Some(a) = rx.recv().await {
        let Ok(bytes) = <[u8; 32]>::try_from(a.content_id.as_slice()) else {
            tracing::warn!("the server assigned a malformed content id; ignored");
            continue;
        };
        let id = ContentId::from_bytes(bytes);
        let svc = loop {
            if let Some(s) = services.borrow_and_update().clone() {
                break s;
            }
            if services.changed().await.is_err() {
                return;
            }
        };
        if svc.cache.status(&id).is_some_and(|s| s.complete) {
            continue;
        }
        if !running.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            continue;
        }
        let (running, limit) = (running.clone(), limit.clone());
        let span = tracing::Span::current();
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                tracing::info!(content = %id, deployment = a.deployment, "fetching assigned content");
                let (tx, _rx) = watch::channel(DownloadProgress::default());
                match download(svc, Target::Id(id), seed, tx).await {
                    Ok(d) => tracing::info!(
                        content = %id,
                        from_origin = d.from_origin,
                        from_server = d.from_server,
                        from_wan = d.from_wan,
                        from_lan = d.from_peers,
                        "assigned content complete"
                    ),
                    Err(e) => {
                        tracing::warn!(content = %id, error = %e, "assigned download failed; retried when the server repeats it")
                    }
                }
                running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            },
            span,
        ));
    }
}
