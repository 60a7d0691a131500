//! The content catalogue and piece-map uploads. Pure: time is passed in, the database
//! copy is written by the caller.
//!
//! A publisher (the connector) sends a content item's metadata in one small message, then
//! its piece map in chunks of [`CHUNK`] bytes (one small message each, so publishing
//! uses only the connector's row of the port table), then a commit. The server verifies
//! the assembled map against the content id and size before the item is published: a
//! map that does not hash to the id is refused, so no client is ever handed one.

use std::collections::HashMap;
use std::sync::Arc;

use branchline_store::{ContentId, PieceMap};
use branchline_wire::validate::Meta;

/// Bytes of piece map per chunk message.
pub const CHUNK: usize = 1024;
/// Largest piece map accepted (bytes): 256 GiB of content at 1 MiB pieces.
pub const MAX_MAP: usize = 8 << 20;
/// Most uploads in progress at once (an upload is memory until committed).
pub const MAX_UPLOADS: usize = 64;
/// Most published items (a quota, so a catalogue cannot grow without bound).
pub const MAX_ITEMS: usize = 100_000;
/// An upload with no chunk for this long is dropped (ms).
pub const UPLOAD_IDLE_MS: u64 = 10 * 60 * 1000;

/// A published content item.
#[derive(Clone, Debug)]
pub struct Item {
    /// The metadata the publisher sent in `PublishBegin` (validated): id, name, version,
    /// size, origin, piece size.
    pub meta: Meta,
    /// The piece map, verified against the content id and size at commit.
    pub map: Arc<PieceMap>,
    /// The same map in its wire encoding (`docs/wire.md` §7), as uploaded: what the
    /// database stores.
    pub encoded_map: Arc<Vec<u8>>,
    /// When it was published (Unix ms): the commit, or the stored time after a restart.
    pub published_ms: u64,
}

struct Upload {
    meta: Meta,
    buf: Vec<u8>,
    got: Vec<bool>,
    touched_ms: u64,
}

/// Why a publish step was refused. Displayed to the publisher.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    /// `PublishBegin.map_len` is over [`MAX_MAP`].
    #[error("a piece map of {0} bytes is larger than the {MAX_MAP}-byte limit")]
    MapTooLarge(usize),
    /// [`MAX_UPLOADS`] other uploads are in progress.
    #[error("the server has {MAX_UPLOADS} uploads in progress; try again in a few minutes")]
    TooManyUploads,
    /// A chunk or commit for a content id with no upload (never begun, or idle for
    /// [`UPLOAD_IDLE_MS`]).
    #[error("no upload in progress for {0}; start again with PublishBegin")]
    NoUpload(ContentId),
    /// A chunk whose offset is not a multiple of [`CHUNK`] inside the map, or whose length
    /// is not the [`CHUNK`] bytes (less for the last one) expected there.
    #[error(
        "chunk at offset {offset} does not fit a map of {map_len} bytes in {CHUNK}-byte chunks"
    )]
    BadChunk {
        /// The chunk's offset in the map (bytes).
        offset: usize,
        /// The map length given by `PublishBegin` (bytes).
        map_len: usize,
    },
    /// A commit before every chunk arrived.
    #[error("{missing} of {total} map chunks have not arrived")]
    Incomplete {
        /// Chunks not received.
        missing: usize,
        /// Chunks in the whole map.
        total: usize,
    },
    /// The assembled map does not decode, or does not match the content id and size; the
    /// upload is dropped.
    #[error("the piece map does not match the content id and size: {0}")]
    BadMap(#[source] branchline_store::MapError),
    /// The map's piece size differs from `meta.piece_size`; the upload is dropped.
    #[error("the map has {map}-byte pieces, the metadata says {meta}")]
    PieceSizeMismatch {
        /// The map's piece size (bytes).
        map: u32,
        /// The metadata's piece size (bytes).
        meta: u32,
    },
    /// The content id is published already under other metadata.
    #[error(
        "{id} is already published with different metadata ({what}); publish it under one name and version"
    )]
    Conflict {
        /// The content id.
        id: ContentId,
        /// Which fields differ, old and new.
        what: String,
    },
    /// The name and version belong to another content id.
    #[error(
        "{name}@{version} is already published with other bytes ({existing}); a name and version name one content item for ever: publish the new bytes under a new version"
    )]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The version asked for.
        version: String,
        /// The content id published (or being stored) under that name and version.
        existing: ContentId,
    },
    /// [`MAX_ITEMS`] items are published already.
    #[error("the catalogue holds its maximum of {MAX_ITEMS} items")]
    TooManyItems,
}

/// What a `PublishBegin` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// The same bytes are already published: nothing to upload.
    AlreadyPublished,
    /// Send the chunks.
    NeedsMap,
}

/// The published items, the uploads in progress and the name@version index.
#[derive(Default)]
pub struct Catalogue {
    items: HashMap<ContentId, Item>,
    uploads: HashMap<ContentId, Upload>,
    /// name@version of every item published or committed (being stored), so two
    /// different contents can never share one.
    names: HashMap<(String, String), ContentId>,
}

impl Catalogue {
    /// An empty catalogue (nothing published, nothing uploading).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an item read back from the database.
    pub fn load(&mut self, item: Item) {
        let id = ContentId::from_bytes(item.meta.content_id);
        self.names
            .entry((item.meta.name.clone(), item.meta.version.clone()))
            .or_insert(id);
        self.items.insert(id, item);
    }

    /// Refuses `meta` when its name@version belongs to another content item.
    fn check_name(&self, id: &ContentId, meta: &Meta) -> Result<(), PublishError> {
        match self.names.get(&(meta.name.clone(), meta.version.clone())) {
            Some(existing) if existing != id => Err(PublishError::NameTaken {
                name: meta.name.clone(),
                version: meta.version.clone(),
                existing: *existing,
            }),
            _ => Ok(()),
        }
    }

    /// The published item with content id `id`.
    pub fn get(&self, id: &ContentId) -> Option<&Item> {
        self.items.get(id)
    }

    /// The newest item called `name` (with `version`, when given).
    pub fn find(&self, name: &str, version: Option<&str>) -> Option<&Item> {
        self.items
            .values()
            .filter(|i| i.meta.name == name && version.is_none_or(|v| i.meta.version == v))
            .max_by_key(|i| (i.published_ms, i.meta.content_id))
    }

    /// Items sorted by name, then version.
    pub fn list(&self) -> Vec<&Item> {
        let mut v: Vec<&Item> = self.items.values().collect();
        v.sort_by(|a, b| (&a.meta.name, &a.meta.version).cmp(&(&b.meta.name, &b.meta.version)));
        v
    }

    /// Number of published items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        self.uploads
            .retain(|_, u| now_ms.saturating_sub(u.touched_ms) < UPLOAD_IDLE_MS);
    }

    /// Starts (or restarts) the upload of `meta`'s piece map of `map_len` bytes.
    pub fn begin(
        &mut self,
        meta: Meta,
        map_len: usize,
        now_ms: u64,
    ) -> Result<Begin, PublishError> {
        let id = ContentId::from_bytes(meta.content_id);
        if let Some(item) = self.items.get(&id) {
            return if same_publication(&item.meta, &meta) {
                Ok(Begin::AlreadyPublished)
            } else {
                Err(PublishError::Conflict {
                    id,
                    what: differences(&item.meta, &meta),
                })
            };
        }
        self.check_name(&id, &meta)?;
        if self.items.len() >= MAX_ITEMS {
            return Err(PublishError::TooManyItems);
        }
        if map_len > MAX_MAP {
            return Err(PublishError::MapTooLarge(map_len));
        }
        self.expire(now_ms);
        if !self.uploads.contains_key(&id) && self.uploads.len() >= MAX_UPLOADS {
            return Err(PublishError::TooManyUploads);
        }
        let chunks = map_len.div_ceil(CHUNK);
        let restart = self
            .uploads
            .get(&id)
            .is_none_or(|u| u.meta != meta || u.buf.len() != map_len);
        if restart {
            self.uploads.insert(
                id,
                Upload {
                    meta,
                    buf: vec![0; map_len],
                    got: vec![false; chunks],
                    touched_ms: now_ms,
                },
            );
        }
        Ok(Begin::NeedsMap)
    }

    /// Stores one chunk (idempotent).
    pub fn chunk(
        &mut self,
        id: &ContentId,
        offset: usize,
        data: &[u8],
        now_ms: u64,
    ) -> Result<(), PublishError> {
        if self.items.contains_key(id) {
            return Ok(());
        }
        let u = self
            .uploads
            .get_mut(id)
            .ok_or(PublishError::NoUpload(*id))?;
        let map_len = u.buf.len();
        let expected = map_len.saturating_sub(offset).min(CHUNK);
        if !offset.is_multiple_of(CHUNK) || offset >= map_len || data.len() != expected {
            return Err(PublishError::BadChunk { offset, map_len });
        }
        u.buf[offset..offset + data.len()].copy_from_slice(data);
        u.got[offset / CHUNK] = true;
        u.touched_ms = now_ms;
        Ok(())
    }

    /// Verifies the assembled map. On success the upload is removed and the item
    /// returned for the caller to store durably and then [`Catalogue::insert`].
    pub fn commit(&mut self, id: &ContentId, now_ms: u64) -> Result<Option<Item>, PublishError> {
        if self.items.contains_key(id) {
            return Ok(None);
        }
        let u = self.uploads.get(id).ok_or(PublishError::NoUpload(*id))?;
        self.check_name(id, &u.meta)?;
        let missing = u.got.iter().filter(|g| !**g).count();
        if missing > 0 {
            return Err(PublishError::Incomplete {
                missing,
                total: u.got.len(),
            });
        }
        let map = match PieceMap::decode(&u.buf, id, u.meta.size) {
            Ok(m) => m,
            Err(e) => {
                self.uploads.remove(id);
                return Err(PublishError::BadMap(e));
            }
        };
        if map.piece_size().bytes() != u.meta.piece_size {
            let e = PublishError::PieceSizeMismatch {
                map: map.piece_size().bytes(),
                meta: u.meta.piece_size,
            };
            self.uploads.remove(id);
            return Err(e);
        }
        let u = self.uploads.remove(id).expect("checked above");
        self.names
            .insert((u.meta.name.clone(), u.meta.version.clone()), *id);
        Ok(Some(Item {
            meta: u.meta,
            map: Arc::new(map),
            encoded_map: Arc::new(u.buf),
            published_ms: now_ms,
        }))
    }

    /// Publishes an item (after it was stored durably).
    pub fn insert(&mut self, item: Item) {
        self.load(item);
    }
}

fn same_publication(a: &Meta, b: &Meta) -> bool {
    a.name == b.name && a.version == b.version && a.size == b.size && a.piece_size == b.piece_size
}

fn differences(old: &Meta, new: &Meta) -> String {
    let mut d = Vec::new();
    if old.name != new.name || old.version != new.version {
        d.push(format!(
            "published as {}@{}, now {}@{}",
            old.name, old.version, new.name, new.version
        ));
    }
    if old.size != new.size {
        d.push(format!("size {} vs {}", old.size, new.size));
    }
    if old.piece_size != new.piece_size {
        d.push(format!(
            "piece size {} vs {}",
            old.piece_size, new.piece_size
        ));
    }
    d.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use branchline_store::PieceSize;

    fn content(len: usize) -> (Meta, PieceMap) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let map = PieceMap::from_bytes(&data, PieceSize::new(16 * 1024).unwrap()).unwrap();
        let meta = Meta {
            content_id: *map.id().as_bytes(),
            name: "app".into(),
            version: "1.0".into(),
            size: len as u64,
            origin: "/srv/app.bin".into(),
            piece_size: 16 * 1024,
        };
        (meta, map)
    }

    fn upload(c: &mut Catalogue, meta: &Meta, bytes: &[u8]) {
        let id = ContentId::from_bytes(meta.content_id);
        assert_eq!(
            c.begin(meta.clone(), bytes.len(), 0).unwrap(),
            Begin::NeedsMap
        );
        // Out of order and with a duplicate: chunks are idempotent.
        let offsets: Vec<usize> = (0..bytes.len()).step_by(CHUNK).rev().collect();
        for off in offsets.iter().chain(offsets.first()) {
            let end = (off + CHUNK).min(bytes.len());
            c.chunk(&id, *off, &bytes[*off..end], 1).unwrap();
        }
    }

    #[test]
    fn publish_verifies_and_is_idempotent() {
        let (meta, map) = content(3_000_000);
        let bytes = map.encode();
        assert!(bytes.len() > CHUNK, "several chunks");
        let mut c = Catalogue::new();
        upload(&mut c, &meta, &bytes);
        let id = map.id();
        let item = c.commit(&id, 5).unwrap().expect("new item");
        assert_eq!(item.map.piece_count(), map.piece_count());
        c.insert(item);
        assert_eq!(
            c.begin(meta.clone(), bytes.len(), 6).unwrap(),
            Begin::AlreadyPublished
        );
        assert!(c.commit(&id, 7).unwrap().is_none());
        assert_eq!(c.find("app", None).unwrap().meta, meta);
        assert_eq!(c.find("app", Some("1.0")).unwrap().meta, meta);
        assert!(c.find("app", Some("2.0")).is_none());
    }

    /// Issue #10: app@1.0 names one content item for ever; other bytes are refused, even
    /// while the first is still being stored.
    #[test]
    fn name_and_version_are_unique() {
        let (meta, map) = content(100_000);
        let (mut other_meta, other_map) = content(100_001);
        other_meta.name = meta.name.clone();
        other_meta.version = meta.version.clone();
        let mut c = Catalogue::new();
        upload(&mut c, &meta, &map.encode());
        let item = c.commit(&map.id(), 1).unwrap().unwrap();
        // Committed, not yet inserted (being stored): already taken.
        assert!(matches!(
            c.begin(other_meta.clone(), other_map.encode().len(), 2),
            Err(PublishError::NameTaken { .. })
        ));
        c.insert(item);
        let err = c
            .begin(other_meta.clone(), other_map.encode().len(), 3)
            .unwrap_err();
        assert!(err.to_string().contains("app@1.0"), "{err}");
        other_meta.version = "1.1".into();
        upload(&mut c, &other_meta, &other_map.encode());
        assert!(c.commit(&other_map.id(), 4).unwrap().is_some());
    }

    #[test]
    fn a_map_that_does_not_match_the_id_is_refused() {
        let (meta, map) = content(100_000);
        let mut bytes = map.encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let mut c = Catalogue::new();
        upload(&mut c, &meta, &bytes);
        assert!(matches!(
            c.commit(&map.id(), 1),
            Err(PublishError::BadMap(_))
        ));
        assert!(c.is_empty());
    }

    #[test]
    fn missing_and_misplaced_chunks() {
        let (meta, map) = content(3_000_000);
        let bytes = map.encode();
        let id = map.id();
        let mut c = Catalogue::new();
        c.begin(meta.clone(), bytes.len(), 0).unwrap();
        c.chunk(&id, 0, &bytes[..CHUNK], 0).unwrap();
        assert!(matches!(
            c.commit(&id, 0),
            Err(PublishError::Incomplete { .. })
        ));
        assert!(matches!(
            c.chunk(&id, 3, &bytes[3..10], 0),
            Err(PublishError::BadChunk { .. })
        ));
        assert!(matches!(
            c.chunk(&ContentId::from_bytes([9; 32]), 0, &bytes[..CHUNK], 0),
            Err(PublishError::NoUpload(_))
        ));
    }

    #[test]
    fn same_bytes_under_another_name_is_a_conflict() {
        let (meta, map) = content(100_000);
        let bytes = map.encode();
        let mut c = Catalogue::new();
        upload(&mut c, &meta, &bytes);
        let item = c.commit(&map.id(), 1).unwrap().unwrap();
        c.insert(item);
        let mut other = meta.clone();
        other.name = "other".into();
        assert!(matches!(
            c.begin(other, bytes.len(), 2),
            Err(PublishError::Conflict { .. })
        ));
    }

    #[test]
    fn idle_uploads_expire() {
        let (meta, map) = content(100_000);
        let mut c = Catalogue::new();
        c.begin(meta, map.encoded_len(), 0).unwrap();
        let (meta2, map2) = content(200_000);
        c.begin(meta2, map2.encoded_len(), UPLOAD_IDLE_MS + 1)
            .unwrap();
        assert!(matches!(
            c.chunk(&map.id(), 0, &[0; 10], UPLOAD_IDLE_MS + 2),
            Err(PublishError::NoUpload(_))
        ));
    }
}
