//! Serving pieces and have queries from the content store (`branchline-store`'s cache).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use branchline_store::{Cache, ContentId, FsStorage, StoreError};
use bytes::Bytes;

use crate::content::{PieceError, PieceSource};
use crate::identity::PeerIdentity;

use branchline_time::now_ms;

/// Serves pieces from the cache. A piece this node stored recently is served from the
/// cache's bounded memory of the very bytes it verified when it stored them
/// (`Cache::read_piece_shared`); every other piece is verified again as it is read, so a
/// piece corrupted on disk is never passed on (the cache forgets it and it is fetched
/// again).
pub struct CacheSource {
    /// The cache pieces are read from (and re-verified).
    pub cache: Arc<Cache<FsStorage>>,
    /// Where to note content in which a corrupted piece was found (so the holder can tell
    /// the server it no longer has it); `None` to only log.
    pub corrupted: Option<Arc<Mutex<HashSet<ContentId>>>>,
}

impl PieceSource for CacheSource {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        let cache = self.cache.clone();
        let id = ContentId::from_bytes(*content);
        let read =
            tokio::task::spawn_blocking(move || cache.read_piece_shared(&id, piece, now_ms()))
                .await
                .map_err(|e| PieceError::Unavailable(e.to_string()))?;
        match read {
            Ok(bytes) => Ok(bytes),
            Err(StoreError::UnknownContent(_) | StoreError::PieceMissing { .. }) => {
                Err(PieceError::NotFound)
            }
            Err(e @ StoreError::CorruptOnDisk { .. }) => {
                tracing::error!(error = %e, "a cached piece failed verification; it will be fetched again");
                if let Some(c) = &self.corrupted {
                    c.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
                }
                Err(PieceError::NotFound)
            }
            Err(e) => Err(PieceError::Unavailable(e.to_string())),
        }
    }

    /// The cache's bitfield of the content: its bits are set only for pieces that were
    /// verified and made durable. NotFound for unknown content and for content of which
    /// no piece is held yet.
    async fn have(&self, _peer: &PeerIdentity, content: &[u8; 32]) -> Result<Bytes, PieceError> {
        let cache = self.cache.clone();
        let id = ContentId::from_bytes(*content);
        // The cache holds a content's state lock while it records pieces on disk (an
        // fsync), so this may block: keep it off the async workers, like reads.
        let have = tokio::task::spawn_blocking(move || cache.have(&id))
            .await
            .map_err(|e| PieceError::Unavailable(e.to_string()))?;
        match have {
            Some(bits) if bits.count_ones() > 0 => Ok(Bytes::copy_from_slice(bits.as_bytes())),
            _ => Err(PieceError::NotFound),
        }
    }
}
