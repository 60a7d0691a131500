//! The client's content cache: verified pieces on disk, a durable record of which are
//! present, accounting against a cap, and LRU eviction of unpinned content.
//!
//! Locking: one cache-wide mutex (`inner`: the ledger and the table of entries) and one
//! mutex per content (`Entry::state`: its bitfield and flags). The order is always
//! cache-wide first, then per-content; no code takes the cache-wide lock while holding a
//! per-content one. Piece data is verified and written (with its fsync) holding neither
//! lock, so pieces of many contents, and of one content, are written in parallel; only
//! the one-byte bitfield update is serialised per content. The memory of recently stored
//! pieces (`recent`) has a mutex of its own, always taken last and never held while
//! another lock is taken.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::bitfield::{Bitfield, HAVE_HEADER_LEN, decode_have, encode_have, have_file_len};
use crate::error::StoreError;
use crate::id::ContentId;
use crate::ledger::{Item, Ledger};
use crate::map::{PieceError, PieceMap, PieceSize, VerifiedPiece};
use crate::storage::{Aux, DiskSpace, FsStorage, Storage, is_disk_full};

/// How often, at most, a content's last-access time is written to disk while it is in
/// use (milliseconds). Between writes the time lives in memory, so after a crash the LRU
/// order can be off by up to this much.
pub const LRU_PERSIST_INTERVAL_MS: u64 = 60_000;

/// Default memory for the verified bytes of recently stored pieces, kept to serve peers
/// without re-reading and re-hashing them ([`Cache::write_pieces_shared`],
/// [`Cache::read_piece_shared`]): 64 MiB.
pub const DEFAULT_RECENT_PIECES_BYTES: usize = 64 << 20;

/// The cache size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheCap {
    /// A fixed number of bytes.
    Bytes(u64),
    /// A percentage (1 to 100) of the capacity of the file system holding the cache,
    /// measured once when the cache is opened.
    PercentOfDisk(u8),
}

impl CacheCap {
    /// The cap in bytes on a disk of the given size.
    pub fn resolve(self, disk: DiskSpace) -> Result<u64, StoreError> {
        match self {
            CacheCap::Bytes(b) => Ok(b),
            CacheCap::PercentOfDisk(p) if (1..=100).contains(&p) => {
                Ok((u128::from(disk.total) * u128::from(p) / 100) as u64)
            }
            CacheCap::PercentOfDisk(p) => Err(StoreError::BadCap(format!(
                "{p}% of the disk: a percentage must be from 1 to 100"
            ))),
        }
    }
}

impl fmt::Display for CacheCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheCap::Bytes(b) => write!(f, "{b}"),
            CacheCap::PercentOfDisk(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for CacheCap {
    type Err = StoreError;

    /// Parses `"25%"`, a byte count `"1073741824"`, or a count with a unit: `KiB`, `MiB`,
    /// `GiB`, `TiB` (powers of 1024) or `KB`, `MB`, `GB`, `TB` (powers of 1000).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || {
            StoreError::BadCap(format!(
                "{s:?}: write a percentage like \"25%\" or a size like \"20GiB\", \"500MB\" or \"1073741824\""
            ))
        };
        if let Some(p) = t.strip_suffix('%') {
            let p: u8 = p.trim().parse().map_err(|_| bad())?;
            return CacheCap::PercentOfDisk(p)
                .resolve(DiskSpace {
                    total: 0,
                    available: 0,
                })
                .map(|_| CacheCap::PercentOfDisk(p));
        }
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult).map(CacheCap::Bytes).ok_or_else(bad)
    }
}

/// State of one content in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentStatus {
    /// The content.
    pub id: ContentId,
    /// Content size (bytes).
    pub size: u64,
    /// Piece size.
    pub piece_size: PieceSize,
    /// Number of pieces.
    pub pieces_total: u32,
    /// Verified pieces durably stored.
    pub pieces_present: u32,
    /// Bytes of the verified pieces durably stored.
    pub bytes_present: u64,
    /// All pieces present and verified: the content can be handed out.
    pub complete: bool,
    /// Pinned content is never evicted.
    pub pinned: bool,
    /// Last use (Unix milliseconds).
    pub last_access_ms: u64,
    /// The last piece write failed because the disk is full; the download is paused
    /// until a write succeeds.
    pub paused_disk_full: bool,
}

/// Cache-wide accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheUsage {
    /// Cap (bytes).
    pub cap: u64,
    /// Bytes charged by all content, partial downloads at their full size (bytes).
    pub used: u64,
    /// Bytes charged by pinned content.
    pub pinned: u64,
    /// Number of contents.
    pub entries: usize,
}

/// Counters of cache events since it was opened. Read with [`CacheMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct CacheMetrics {
    /// Verified pieces written and recorded.
    pub pieces_written: AtomicU64,
    /// Bytes of those pieces.
    pub bytes_written: AtomicU64,
    /// Pieces handed out for serving (re-read and re-verified, or from the memory of
    /// recently stored pieces).
    pub pieces_served: AtomicU64,
    /// Of those, pieces served from the memory of recently stored pieces: the very bytes
    /// that were verified when they were stored, so neither read nor hashed again.
    pub pieces_served_from_memory: AtomicU64,
    /// Of those, pieces read from disk but not hashed again: verified by this cache
    /// earlier in this run, and the file unchanged since (see [`Cache::read_piece_shared`]).
    pub pieces_served_unhashed: AtomicU64,
    /// Bytes of those pieces.
    pub bytes_served: AtomicU64,
    /// Pieces from peers that failed verification (the peer is at fault).
    pub bad_pieces_received: AtomicU64,
    /// Stored pieces found corrupt when re-read, and discarded.
    pub corrupt_pieces_on_disk: AtomicU64,
    /// Writes refused because the disk was full.
    pub disk_full_events: AtomicU64,
    /// Contents evicted to make room.
    pub evictions: AtomicU64,
    /// Bytes freed by eviction.
    pub bytes_evicted: AtomicU64,
    /// Half-created or damaged contents discarded when the cache was opened.
    pub discarded_on_open: AtomicU64,
    /// Last-access or pin records that could not be written (the cache went on).
    pub meta_write_failures: AtomicU64,
}

/// A copy of [`CacheMetrics`] at one moment; fields as there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct MetricsSnapshot {
    pub pieces_written: u64,
    pub bytes_written: u64,
    pub pieces_served: u64,
    pub pieces_served_from_memory: u64,
    pub pieces_served_unhashed: u64,
    pub bytes_served: u64,
    pub bad_pieces_received: u64,
    pub corrupt_pieces_on_disk: u64,
    pub disk_full_events: u64,
    pub evictions: u64,
    pub bytes_evicted: u64,
    pub discarded_on_open: u64,
    pub meta_write_failures: u64,
}

impl CacheMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            pieces_written: g(&self.pieces_written),
            bytes_written: g(&self.bytes_written),
            pieces_served: g(&self.pieces_served),
            pieces_served_from_memory: g(&self.pieces_served_from_memory),
            pieces_served_unhashed: g(&self.pieces_served_unhashed),
            bytes_served: g(&self.bytes_served),
            bad_pieces_received: g(&self.bad_pieces_received),
            corrupt_pieces_on_disk: g(&self.corrupt_pieces_on_disk),
            disk_full_events: g(&self.disk_full_events),
            evictions: g(&self.evictions),
            bytes_evicted: g(&self.bytes_evicted),
            discarded_on_open: g(&self.discarded_on_open),
            meta_write_failures: g(&self.meta_write_failures),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Result of [`Cache::write_piece`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The piece was verified, stored durably and recorded.
    Stored {
        /// This piece completed the content.
        complete: bool,
    },
    /// The piece was already present; nothing was written.
    AlreadyPresent,
}

/// Result of [`Cache::write_pieces`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Pieces verified, stored durably and recorded by this call.
    pub stored: Vec<u32>,
    /// Pieces that were already present; nothing was written for them.
    pub already_present: Vec<u32>,
    /// Pieces that failed verification: drop and report the peers that sent them.
    pub bad: Vec<(u32, PieceError)>,
    /// The content is complete after this call.
    pub complete: bool,
}

/// A complete, verified content handed out for reading.
#[derive(Debug)]
pub struct CompleteContent<R> {
    /// The content.
    pub id: ContentId,
    /// Size (bytes).
    pub size: u64,
    /// Path of the data file, for backends that have files. The file stays readable
    /// through `reader` even if the content is evicted later.
    pub path: Option<PathBuf>,
    /// The content's bytes from the start.
    pub reader: R,
}

/// Result of [`Cache::verify_content`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Pieces re-read and checked.
    pub checked: u32,
    /// Pieces found corrupt and discarded (to be fetched again).
    pub corrupt: Vec<u32>,
}

const META_MAGIC: &[u8; 4] = b"BLMT";
const META_VERSION: u8 = 1;
const META_LEN: usize = 16;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    pinned: bool,
    last_access: u64,
}

fn encode_meta(m: Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(META_LEN);
    out.extend_from_slice(META_MAGIC);
    out.push(META_VERSION);
    out.push(u8::from(m.pinned));
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&m.last_access.to_le_bytes());
    out
}

fn decode_meta(b: &[u8]) -> Option<Meta> {
    if b.len() != META_LEN || &b[0..4] != META_MAGIC || b[4] != META_VERSION || b[5] > 1 {
        return None;
    }
    Some(Meta {
        pinned: b[5] == 1,
        last_access: u64::from_le_bytes(b[8..16].try_into().ok()?),
    })
}

/// Bytes a content is charged against the cap: its full size (reserved when the download
/// begins, so a download never has to stop for the cap) plus its small files.
fn charged_bytes(map: &PieceMap) -> u64 {
    map.size() + map.encoded_len() as u64 + have_file_len(map.piece_count()) + META_LEN as u64
}

struct EntryState {
    have: Bitfield,
    /// The data's stamp ([`Storage::data_stamp`]) right after this cache's last write to
    /// it, or `None` once something else changed it (or it cannot be told): pieces kept in
    /// memory are served only while the data still carries this stamp.
    stamp: Option<[i64; 4]>,
    /// Pieces this cache verified (before writing them, or when re-reading them) while the
    /// data carried `stamp`: served from disk without hashing them again, as long as the
    /// data still carries it. Cleared with `stamp`.
    trusted: Bitfield,
    /// Set (under this lock) before the content's files are deleted; writers that see
    /// it stop.
    removed: bool,
    disk_full: bool,
}

/// How a piece about to be served may be had (see [`Cache::read_piece_shared`]).
enum Kept {
    /// From the memory of recently stored pieces.
    Memory(Bytes),
    /// Read from disk without hashing it again.
    Trusted,
    /// Read and verified; `unchanged` says the file still carries this cache's stamp.
    No { unchanged: bool },
}

struct Entry {
    map: Arc<PieceMap>,
    state: Mutex<EntryState>,
}

struct Slot {
    entry: Arc<Entry>,
    /// Last-access time last written to the `meta` file (Unix ms).
    meta_written_at: u64,
}

struct Inner {
    ledger: Ledger,
    entries: HashMap<ContentId, Slot>,
}

/// The verified bytes of recently stored pieces, oldest dropped first, within `cap` bytes.
/// A content's pieces are dropped when it is evicted or removed, and only pieces whose bit
/// is set are ever served from here, so what this holds is always exactly the bytes that
/// were verified against the content's map when they were stored.
#[derive(Default)]
struct Recent {
    pieces: HashMap<(ContentId, u32), Bytes>,
    order: VecDeque<(ContentId, u32)>,
    bytes: usize,
    cap: usize,
}

impl Recent {
    fn insert(&mut self, id: ContentId, index: u32, data: Bytes) {
        if data.len() > self.cap || self.pieces.contains_key(&(id, index)) {
            return;
        }
        self.bytes += data.len();
        self.pieces.insert((id, index), data);
        self.order.push_back((id, index));
        while self.bytes > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(d) = self.pieces.remove(&old) {
                self.bytes -= d.len();
            }
        }
    }

    fn forget_content(&mut self, id: &ContentId) {
        if self.pieces.is_empty() {
            return;
        }
        self.pieces.retain(|(c, _), _| c != id);
        self.order.retain(|(c, _)| c != id);
        self.bytes = self.pieces.values().map(Bytes::len).sum();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The content cache. See the crate docs for the model and `DESIGN.md` for the on-disk
/// layout and crash-consistency argument.
///
/// Every method that counts as a use takes `now_ms`, the current time in milliseconds
/// since the Unix epoch, so the LRU policy is deterministic under test.
pub struct Cache<S: Storage = FsStorage> {
    storage: S,
    inner: Mutex<Inner>,
    recent: Mutex<Recent>,
    metrics: CacheMetrics,
    /// Exclusive lock on the cache directory (file-system caches only), released by the
    /// kernel when the process exits, however it exits.
    _dir_lock: Option<std::fs::File>,
}

impl Cache<FsStorage> {
    /// Opens (or creates) the cache in directory `dir`, resuming every partial download
    /// recorded there. A cache left by `kill -9` or power loss opens like any other.
    ///
    /// The directory is locked for as long as the cache is open; a second open (in this
    /// or another process) fails with [`StoreError::InUse`].
    pub fn open(dir: &Path, cap: CacheCap, now_ms: u64) -> Result<Self, StoreError> {
        let storage = FsStorage::new(dir).map_err(|e| {
            StoreError::io(format!("creating the cache directory {}", dir.display()), e)
        })?;
        let lock_path = dir.join("lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(format!("opening {}", lock_path.display()), e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::InUse(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::io(
                    format!("locking {}", lock_path.display()),
                    e,
                ));
            }
        }
        let mut cache = Self::with_storage(storage, cap, now_ms)?;
        cache._dir_lock = Some(lock_file);
        Ok(cache)
    }
}

impl<S: Storage> Cache<S> {
    /// Opens a cache on any storage backend. `now_ms` is only used to clamp recorded
    /// last-use times that lie in the future; opening does not count as a use.
    pub fn with_storage(storage: S, cap: CacheCap, now_ms: u64) -> Result<Self, StoreError> {
        let cap = match cap {
            CacheCap::Bytes(b) => b,
            pct => pct.resolve(
                storage
                    .disk_space()
                    .map_err(|e| StoreError::io("measuring the disk for the cache cap", e))?,
            )?,
        };
        let cache = Self {
            storage,
            inner: Mutex::new(Inner {
                ledger: Ledger::new(cap),
                entries: HashMap::new(),
            }),
            recent: Mutex::new(Recent {
                cap: DEFAULT_RECENT_PIECES_BYTES,
                ..Recent::default()
            }),
            metrics: CacheMetrics::default(),
            _dir_lock: None,
        };
        let ids = cache
            .storage
            .list()
            .map_err(|e| StoreError::io("listing the cache", e))?;
        let mut inner = lock(&cache.inner);
        for id in ids {
            match cache.load(&id)? {
                Some((entry, meta)) => {
                    let item = Item {
                        bytes: charged_bytes(&entry.map),
                        // A time in the future (the clock was stepped back) would keep
                        // this content looking recent for ever; clamp it to now.
                        last_access: meta.last_access.min(now_ms),
                        pinned: meta.pinned,
                    };
                    inner.ledger.insert(id, item);
                    inner.entries.insert(
                        id,
                        Slot {
                            entry: Arc::new(entry),
                            meta_written_at: item.last_access,
                        },
                    );
                }
                None => {
                    cache
                        .storage
                        .remove(&id)
                        .map_err(|e| StoreError::io(format!("discarding damaged {id}"), e))?;
                    bump(&cache.metrics.discarded_on_open, 1);
                }
            }
        }
        // The cap may have shrunk since the last run.
        for victim in inner.ledger.plan_shrink() {
            cache.evict(&mut inner, &victim)?;
        }
        drop(inner);
        Ok(cache)
    }

    /// Loads one content's record; `None` if it is half-created or damaged.
    fn load(&self, id: &ContentId) -> Result<Option<(Entry, Meta)>, StoreError> {
        let read = |aux| {
            self.storage
                .read_aux(id, aux)
                .map_err(|e| StoreError::io(format!("reading the {aux:?} file of {id}"), e))
        };
        let (Some(map), Some(have)) = (read(Aux::Map)?, read(Aux::Have)?) else {
            return Ok(None);
        };
        let Ok(map) = PieceMap::decode_stored(&map, id) else {
            return Ok(None);
        };
        let Some(have) = decode_have(&have, id, map.piece_count()) else {
            return Ok(None);
        };
        let data_len = self
            .storage
            .data_len(id)
            .map_err(|e| StoreError::io(format!("measuring the data file of {id}"), e))?;
        if data_len != Some(map.size()) {
            return Ok(None);
        }
        let meta = read(Aux::Meta)?
            .and_then(|b| decode_meta(&b))
            .unwrap_or_default();
        let stamp = self.storage.data_stamp(id).ok().flatten();
        Ok(Some((
            Entry {
                map: Arc::new(map),
                state: Mutex::new(EntryState {
                    trusted: Bitfield::new(have.len()),
                    have,
                    stamp,
                    removed: false,
                    disk_full: false,
                }),
            },
            meta,
        )))
    }

    /// Removes one content under the cache-wide lock.
    fn evict(&self, inner: &mut Inner, id: &ContentId) -> Result<(), StoreError> {
        if let Some(slot) = inner.entries.remove(id) {
            lock(&slot.entry.state).removed = true;
        }
        lock(&self.recent).forget_content(id);
        // If the files cannot be removed, the ledger keeps charging them, so the cap still
        // holds and the next eviction retries.
        self.storage
            .remove(id)
            .map_err(|e| StoreError::io(format!("evicting {id}"), e))?;
        if let Some(item) = inner.ledger.remove(id) {
            bump(&self.metrics.evictions, 1);
            bump(&self.metrics.bytes_evicted, item.bytes);
        }
        Ok(())
    }

    fn write_meta(&self, id: &ContentId, meta: Meta) -> Result<(), StoreError> {
        self.storage
            .replace_aux(id, Aux::Meta, &encode_meta(meta))
            .map_err(|e| {
                bump(&self.metrics.meta_write_failures, 1);
                StoreError::io(format!("recording last use and pin of {id}"), e)
            })
    }

    /// Records a use; writes it to disk at most every [`LRU_PERSIST_INTERVAL_MS`].
    fn touch(&self, inner: &mut Inner, id: &ContentId, now_ms: u64) {
        inner.ledger.touch(id, now_ms);
        let Some(item) = inner.ledger.get(id).copied() else {
            return;
        };
        let Some(slot) = inner.entries.get_mut(id) else {
            return;
        };
        if item.last_access >= slot.meta_written_at.saturating_add(LRU_PERSIST_INTERVAL_MS) {
            let meta = Meta {
                pinned: item.pinned,
                last_access: item.last_access,
            };
            // A lost LRU update only makes this content look older; not worth failing for.
            if self.write_meta(id, meta).is_ok() {
                slot.meta_written_at = item.last_access;
            }
        }
    }

    fn entry(&self, id: &ContentId) -> Result<Arc<Entry>, StoreError> {
        lock(&self.inner)
            .entries
            .get(id)
            .map(|s| s.entry.clone())
            .ok_or(StoreError::UnknownContent(*id))
    }

    /// Starts (or resumes) caching a content described by a verified piece map: reserves
    /// its full size under the cap, evicting least-recently-used unpinned content if
    /// needed, and creates its files. If the content is already in the cache this only
    /// records a use and returns its status; its existing map stays in force (get it with
    /// [`Cache::piece_map`]).
    ///
    /// Errors: [`StoreError::NoRoom`] if it cannot fit even after evicting everything
    /// unpinned (nothing is evicted then), [`StoreError::DiskFull`] if the disk cannot
    /// hold its files.
    pub fn begin(&self, map: PieceMap, now_ms: u64) -> Result<ContentStatus, StoreError> {
        let id = map.id();
        let mut inner = lock(&self.inner);
        if inner.entries.contains_key(&id) {
            self.touch(&mut inner, &id, now_ms);
            return Ok(self.status_locked(&inner, &id).expect("present"));
        }
        let needed = charged_bytes(&map);
        let victims = inner
            .ledger
            .plan_room(needed)
            .map_err(|n| StoreError::NoRoom {
                needed: n.needed,
                cap: n.cap,
                pinned: n.pinned,
            })?;
        for v in victims {
            self.evict(&mut inner, &v)?;
        }
        let have = Bitfield::new(map.piece_count());
        let meta = Meta {
            pinned: false,
            last_access: now_ms,
        };
        // The `have` file is written last: its presence marks a fully created content.
        let created = self
            .storage
            .create(&id, map.size())
            .and_then(|()| self.storage.replace_aux(&id, Aux::Map, &map.encode()))
            .and_then(|()| self.storage.replace_aux(&id, Aux::Meta, &encode_meta(meta)))
            .and_then(|()| {
                self.storage
                    .replace_aux(&id, Aux::Have, &encode_have(&id, &have))
            });
        if let Err(e) = created {
            // The error that matters is `e`, returned below; a directory this removal
            // leaves behind is half-created, and the next open discards it.
            let _ = self.storage.remove(&id);
            return Err(if is_disk_full(&e) {
                bump(&self.metrics.disk_full_events, 1);
                StoreError::DiskFull {
                    id,
                    what: "the new download's files".into(),
                }
            } else {
                StoreError::io(format!("creating the files of {id}"), e)
            });
        }
        inner.ledger.insert(
            id,
            Item {
                bytes: needed,
                last_access: now_ms,
                pinned: false,
            },
        );
        let stamp = self.storage.data_stamp(&id).ok().flatten();
        inner.entries.insert(
            id,
            Slot {
                entry: Arc::new(Entry {
                    map: Arc::new(map),
                    state: Mutex::new(EntryState {
                        trusted: Bitfield::new(have.len()),
                        have,
                        stamp,
                        removed: false,
                        disk_full: false,
                    }),
                }),
                meta_written_at: now_ms,
            },
        );
        Ok(self.status_locked(&inner, &id).expect("just inserted"))
    }

    /// Stores a piece received from a peer (or the origin): verifies it against the piece
    /// map, writes it, makes it durable, and only then records it as present. This costs
    /// two fsyncs; [`Cache::write_pieces`] stores several pieces for the same two.
    ///
    /// Errors: [`StoreError::BadPiece`] if it fails verification (drop the peer for this
    /// content and report it; nothing was written), [`StoreError::DiskFull`] if the disk
    /// is full (the download pauses; nothing is recorded and nothing stored is damaged),
    /// [`StoreError::UnknownContent`] if the content was never begun or was evicted.
    pub fn write_piece(
        &self,
        id: &ContentId,
        index: u32,
        data: &[u8],
        now_ms: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut out = self.write_pieces(id, &[(index, data)], now_ms)?;
        if let Some((_, source)) = out.bad.pop() {
            return Err(StoreError::BadPiece { id: *id, source });
        }
        Ok(if out.stored.is_empty() {
            WriteOutcome::AlreadyPresent
        } else {
            WriteOutcome::Stored {
                complete: out.complete,
            }
        })
    }

    /// Stores a batch of pieces of one content with one data fsync and one bitfield
    /// fsync for the whole batch (group commit): every piece is verified; the good ones
    /// are written, the data is made durable, and only then are their bits recorded.
    ///
    /// Pieces that fail verification do not stop the batch: they are listed in
    /// [`BatchOutcome::bad`] so the caller can drop the peers that sent them. A disk
    /// error (including [`StoreError::DiskFull`]) records none of the batch; it can be
    /// retried as is.
    pub fn write_pieces(
        &self,
        id: &ContentId,
        pieces: &[(u32, &[u8])],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let entry = self.entry(id)?;
        let mut out = BatchOutcome::default();
        let mut good: Vec<(u32, &[u8])> = Vec::with_capacity(pieces.len());
        for &(index, data) in pieces {
            match entry.map.verify_piece(index, data) {
                Ok(()) => good.push((index, data)),
                Err(e) => {
                    bump(&self.metrics.bad_pieces_received, 1);
                    out.bad.push((index, e));
                }
            }
        }
        self.commit(id, &entry, good, out, now_ms)
    }

    /// [`Cache::write_pieces`] for pieces verified already ([`PieceMap::verify_shared`],
    /// typically as they arrived): written and recorded the same way (one data fsync and
    /// one bitfield fsync for the batch), without hashing them again. Like
    /// [`Cache::write_pieces_shared`], the pieces stored are also kept in the bounded
    /// memory of recently stored pieces, to serve peers without a re-read.
    ///
    /// A piece verified for another content is refused into [`BatchOutcome::bad`]
    /// ([`PieceError::OtherContent`]); the others are stored.
    pub fn write_verified(
        &self,
        id: &ContentId,
        pieces: &[VerifiedPiece],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let entry = self.entry(id)?;
        let mut out = BatchOutcome::default();
        let mut good: Vec<(u32, &[u8])> = Vec::with_capacity(pieces.len());
        for p in pieces {
            if p.content() == id {
                good.push((p.index(), &p.data()[..]));
            } else {
                out.bad.push((
                    p.index(),
                    PieceError::OtherContent {
                        index: p.index(),
                        verified_for: *p.content(),
                    },
                ));
            }
        }
        let out = self.commit(id, &entry, good, out, now_ms)?;
        self.remember(id, &out, pieces.iter().map(|p| (p.index(), p.data())));
        Ok(out)
    }

    /// The part of a batch write after verification: writes the good pieces, makes them
    /// durable, then records them (see [`Cache::write_pieces`]).
    fn commit(
        &self,
        id: &ContentId,
        entry: &Entry,
        mut good: Vec<(u32, &[u8])>,
        mut out: BatchOutcome,
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        {
            let st = lock(&entry.state);
            if st.removed {
                return Err(StoreError::UnknownContent(*id));
            }
            good.sort_by_key(|(i, _)| *i);
            good.dedup_by_key(|(i, _)| *i);
            good.retain(|(i, _)| {
                let present = st.have.get(*i);
                if present {
                    out.already_present.push(*i);
                }
                !present
            });
            out.complete = st.have.is_complete();
        }
        if good.is_empty() {
            self.touch(&mut lock(&self.inner), id, now_ms);
            return Ok(out);
        }
        let what = |good: &[(u32, &[u8])]| match good {
            [(i, _)] => format!("piece {i}"),
            _ => format!("{} pieces", good.len()),
        };
        // 1. Data, then one fsync, outside any lock. The data's stamp before and after
        //    tells whether anything but this write changed it meanwhile.
        let stamp_before = self.storage.data_stamp(id).ok().flatten();
        let written = good
            .iter()
            .try_for_each(|(index, data)| {
                let (offset, _) = entry.map.piece_range(*index).expect("verified");
                self.storage.write_data(id, offset, data)
            })
            .and_then(|()| self.storage.sync_data(id));
        if let Err(e) = written {
            let mut st = lock(&entry.state);
            if st.removed {
                return Err(StoreError::UnknownContent(*id));
            }
            if is_disk_full(&e) {
                st.disk_full = true;
                bump(&self.metrics.disk_full_events, 1);
                return Err(StoreError::DiskFull {
                    id: *id,
                    what: what(&good),
                });
            }
            return Err(StoreError::io(
                format!("writing {} of {id}", what(&good)),
                e,
            ));
        }
        let stamp_after = self.storage.data_stamp(id).ok().flatten();
        // 2. Then the bits, in one write of the bytes that changed and one fsync. A crash
        //    between 1 and 2 loses only this batch.
        {
            let mut st = lock(&entry.state);
            if st.removed {
                return Err(StoreError::UnknownContent(*id));
            }
            st.stamp = match (st.stamp, stamp_before) {
                (Some(known), Some(before)) if known == before => stamp_after,
                // Changed by something else since this cache last wrote it: memory is not
                // trusted for this content again in this run.
                _ => None,
            };
            if st.stamp.is_some() {
                for (i, _) in &good {
                    st.trusted.set(*i);
                }
            } else {
                st.trusted = Bitfield::new(entry.map.piece_count());
            }
            let changed: Vec<u32> = good
                .iter()
                .map(|(i, _)| *i)
                .filter(|i| st.have.set(*i))
                .collect();
            if let (Some(first), Some(last)) = (changed.first(), changed.last()) {
                let (lo, _) = st.have.byte_of(*first);
                let (hi, _) = st.have.byte_of(*last);
                let bytes = st.have.as_bytes()[lo..=hi].to_vec();
                let off = (HAVE_HEADER_LEN + lo) as u64;
                if let Err(e) = self.storage.patch_aux(id, Aux::Have, off, &bytes) {
                    for i in &changed {
                        st.have.clear(*i);
                        st.trusted.clear(*i);
                    }
                    if is_disk_full(&e) {
                        st.disk_full = true;
                        bump(&self.metrics.disk_full_events, 1);
                        return Err(StoreError::DiskFull {
                            id: *id,
                            what: format!("the record of {}", what(&good)),
                        });
                    }
                    return Err(StoreError::io(
                        format!("recording {} of {id}", what(&good)),
                        e,
                    ));
                }
            }
            bump(&self.metrics.pieces_written, changed.len() as u64);
            let bytes: usize = good
                .iter()
                .filter(|(i, _)| changed.contains(i))
                .map(|(_, d)| d.len())
                .sum();
            bump(&self.metrics.bytes_written, bytes as u64);
            // Pieces another writer recorded meanwhile count as already present.
            for (i, _) in &good {
                if changed.contains(i) {
                    out.stored.push(*i);
                } else {
                    out.already_present.push(*i);
                }
            }
            st.disk_full = false;
            out.complete = st.have.is_complete();
        }
        self.touch(&mut lock(&self.inner), id, now_ms);
        Ok(out)
    }

    /// [`Cache::write_pieces`] for pieces held in shared buffers (as they came off the
    /// network): the pieces stored by this call are also kept in a bounded memory of
    /// recently stored pieces ([`Cache::set_recent_capacity`], default
    /// [`DEFAULT_RECENT_PIECES_BYTES`]), so that peers asking for them soon after are served
    /// the verified bytes themselves by [`Cache::read_piece_shared`], without a re-read and
    /// a second hash. No copy is made: the memory shares the caller's buffers.
    pub fn write_pieces_shared(
        &self,
        id: &ContentId,
        pieces: &[(u32, Bytes)],
        now_ms: u64,
    ) -> Result<BatchOutcome, StoreError> {
        let refs: Vec<(u32, &[u8])> = pieces.iter().map(|(i, b)| (*i, &b[..])).collect();
        let out = self.write_pieces(id, &refs, now_ms)?;
        self.remember(id, &out, pieces.iter().map(|(i, b)| (*i, b)));
        Ok(out)
    }

    /// Keeps the buffers of the pieces `out` says were stored in the memory of recent
    /// pieces (shared, not copied).
    fn remember<'a>(
        &self,
        id: &ContentId,
        out: &BatchOutcome,
        pieces: impl Iterator<Item = (u32, &'a Bytes)>,
    ) {
        if out.stored.is_empty() {
            return;
        }
        let Ok(entry) = self.entry(id) else {
            return; // evicted meanwhile: nothing to serve from memory
        };
        // Under the content's lock: an eviction marks it removed under this lock before it
        // drops the content's pieces from the memory, so none is left behind.
        let st = lock(&entry.state);
        if !st.removed {
            let mut recent = lock(&self.recent);
            for (index, data) in pieces {
                if out.stored.contains(&index) && st.have.get(index) {
                    recent.insert(*id, index, data.clone());
                }
            }
        }
    }

    /// Sets how many bytes of recently stored pieces are kept in memory for serving (0
    /// keeps none; every piece served is then re-read and re-verified).
    pub fn set_recent_capacity(&self, bytes: usize) {
        let mut recent = lock(&self.recent);
        recent.cap = bytes;
        while recent.bytes > recent.cap {
            let Some(old) = recent.order.pop_front() else {
                break;
            };
            if let Some(d) = recent.pieces.remove(&old) {
                recent.bytes -= d.len();
            }
        }
    }

    /// Reads a piece to serve to a peer, like [`Cache::read_piece`], in a shared buffer. A
    /// piece stored by [`Cache::write_pieces_shared`] that is still in the memory of
    /// recently stored pieces is served from there: those are the bytes that were verified
    /// when it was stored, so they are neither read nor hashed again. A piece this cache
    /// verified in this run (when it wrote it, or at an earlier serve) is read but not
    /// hashed again, while the data file carries the stamp (mtime, ctime, size, inode)
    /// this cache's own last write left: anything else that writes to the file changes
    /// its ctime, and from then on every piece is re-read and re-verified
    /// ([`StoreError::CorruptOnDisk`] as there). (Rot that changes no metadata is caught
    /// by the receiving peer, which verifies every piece.)
    pub fn read_piece_shared(
        &self,
        id: &ContentId,
        index: u32,
        now_ms: u64,
    ) -> Result<Bytes, StoreError> {
        let entry = self.entry(id)?;
        let kept = {
            let st = lock(&entry.state);
            if st.removed {
                return Err(StoreError::UnknownContent(*id));
            }
            if index >= entry.map.piece_count() || !st.have.get(index) {
                return Err(StoreError::PieceMissing { id: *id, index });
            }
            // Trusted only while the data file is as this cache last left it: a file changed
            // by anything else (a disk tool, tampering) is read and verified again.
            let unchanged =
                st.stamp.is_some() && self.storage.data_stamp(id).ok().flatten() == st.stamp;
            let kept = lock(&self.recent).pieces.get(&(*id, index)).cloned();
            match kept {
                Some(data) if unchanged => Kept::Memory(data),
                _ if unchanged && st.trusted.get(index) => Kept::Trusted,
                _ => Kept::No { unchanged },
            }
        };
        let data = match kept {
            Kept::Memory(data) => {
                bump(&self.metrics.pieces_served_from_memory, 1);
                data
            }
            Kept::Trusted => {
                let data = self.read_unverified(&entry, id, index)?;
                bump(&self.metrics.pieces_served_unhashed, 1);
                Bytes::from(data)
            }
            Kept::No { unchanged } => {
                let data = self.read_verified(&entry, id, index)?;
                if unchanged {
                    let mut st = lock(&entry.state);
                    // Still as it was when checked: the bytes just verified are on disk.
                    if st.stamp.is_some() && st.have.get(index) {
                        st.trusted.set(index);
                    }
                }
                Bytes::from(data)
            }
        };
        bump(&self.metrics.pieces_served, 1);
        bump(&self.metrics.bytes_served, data.len() as u64);
        self.touch(&mut lock(&self.inner), id, now_ms);
        Ok(data)
    }

    /// Reads a piece to serve to a peer. The piece is re-verified first; a piece corrupt
    /// on disk is never returned: its record is dropped (so it is fetched again) and
    /// [`StoreError::CorruptOnDisk`] is returned.
    pub fn read_piece(
        &self,
        id: &ContentId,
        index: u32,
        now_ms: u64,
    ) -> Result<Vec<u8>, StoreError> {
        let entry = self.entry(id)?;
        let data = self.read_verified(&entry, id, index)?;
        bump(&self.metrics.pieces_served, 1);
        bump(&self.metrics.bytes_served, data.len() as u64);
        self.touch(&mut lock(&self.inner), id, now_ms);
        Ok(data)
    }

    /// Reads a present piece without hashing it (see [`Cache::read_piece_shared`] for
    /// when that is allowed).
    fn read_unverified(
        &self,
        entry: &Entry,
        id: &ContentId,
        index: u32,
    ) -> Result<Vec<u8>, StoreError> {
        let Some((offset, len)) = entry.map.piece_range(index) else {
            return Err(StoreError::PieceMissing { id: *id, index });
        };
        let mut buf = vec![0u8; len as usize];
        if let Err(e) = self.storage.read_data(id, offset, &mut buf) {
            if lock(&entry.state).removed {
                return Err(StoreError::UnknownContent(*id));
            }
            return Err(StoreError::io(format!("reading piece {index} of {id}"), e));
        }
        Ok(buf)
    }

    fn read_verified(
        &self,
        entry: &Entry,
        id: &ContentId,
        index: u32,
    ) -> Result<Vec<u8>, StoreError> {
        {
            let st = lock(&entry.state);
            if st.removed {
                return Err(StoreError::UnknownContent(*id));
            }
            if !st.have.get(index) {
                return Err(StoreError::PieceMissing { id: *id, index });
            }
        }
        let buf = self.read_unverified(entry, id, index)?;
        if entry.map.verify_piece(index, &buf).is_ok() {
            return Ok(buf);
        }
        bump(&self.metrics.corrupt_pieces_on_disk, 1);
        let mut st = lock(&entry.state);
        st.trusted.clear(index);
        if !st.removed && st.have.clear(index) {
            let (at, byte) = st.have.byte_of(index);
            // If this write fails the bit may come back after a restart; the piece is then
            // caught again by this same check before it is ever served.
            let _ = self
                .storage
                .patch_aux(id, Aux::Have, (HAVE_HEADER_LEN + at) as u64, &[byte]);
        }
        Err(StoreError::CorruptOnDisk { id: *id, index })
    }

    /// Re-reads and re-verifies every present piece of a content (a scrub), discarding
    /// corrupt ones so they are fetched again. Use before handing content to an installer
    /// when disks are suspect; costs one full read and hash of the content.
    pub fn verify_content(&self, id: &ContentId) -> Result<VerifyReport, StoreError> {
        let entry = self.entry(id)?;
        let present: Vec<u32> = lock(&entry.state).have.present().collect();
        let mut report = VerifyReport {
            checked: 0,
            corrupt: Vec::new(),
        };
        for index in present {
            match self.read_verified(&entry, id, index) {
                Ok(_) => report.checked += 1,
                Err(StoreError::CorruptOnDisk { .. }) => {
                    report.checked += 1;
                    report.corrupt.push(index);
                }
                // Cleared concurrently by another reader: nothing to check.
                Err(StoreError::PieceMissing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Hands out a content for reading, only if it is complete (every piece verified
    /// before it was stored). `Ok(None)` if it is absent or incomplete.
    pub fn open_complete(
        &self,
        id: &ContentId,
        now_ms: u64,
    ) -> Result<Option<CompleteContent<S::Reader>>, StoreError> {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.entries.get(id) else {
            return Ok(None);
        };
        let entry = slot.entry.clone();
        if !lock(&entry.state).have.is_complete() {
            return Ok(None);
        }
        let reader = self
            .storage
            .open_data(id)
            .map_err(|e| StoreError::io(format!("opening complete content {id}"), e))?;
        self.touch(&mut inner, id, now_ms);
        Ok(Some(CompleteContent {
            id: *id,
            size: entry.map.size(),
            path: self.storage.data_path(id),
            reader,
        }))
    }

    /// Pins (never evicted) or unpins a content, durably.
    pub fn set_pinned(&self, id: &ContentId, pinned: bool) -> Result<(), StoreError> {
        let mut inner = lock(&self.inner);
        let Some(item) = inner.ledger.get(id).copied() else {
            return Err(StoreError::UnknownContent(*id));
        };
        if !inner.entries.contains_key(id) {
            return Err(StoreError::UnknownContent(*id));
        }
        self.write_meta(
            id,
            Meta {
                pinned,
                last_access: item.last_access,
            },
        )?;
        inner.ledger.set_pinned(id, pinned);
        if let Some(slot) = inner.entries.get_mut(id) {
            slot.meta_written_at = item.last_access;
        }
        Ok(())
    }

    /// Removes a content (pinned or not). Returns whether it was there.
    pub fn remove(&self, id: &ContentId) -> Result<bool, StoreError> {
        let mut inner = lock(&self.inner);
        let was = inner.ledger.get(id).is_some();
        if !was {
            return Ok(false);
        }
        if let Some(slot) = inner.entries.remove(id) {
            lock(&slot.entry.state).removed = true;
        }
        lock(&self.recent).forget_content(id);
        self.storage
            .remove(id)
            .map_err(|e| StoreError::io(format!("removing {id}"), e))?;
        inner.ledger.remove(id);
        Ok(true)
    }

    fn status_locked(&self, inner: &Inner, id: &ContentId) -> Option<ContentStatus> {
        let slot = inner.entries.get(id)?;
        let item = inner.ledger.get(id)?;
        let map = &slot.entry.map;
        let st = lock(&slot.entry.state);
        let mut bytes_present =
            u64::from(st.have.count_ones()) * u64::from(map.piece_size().bytes());
        if let Some(last) = map.piece_count().checked_sub(1)
            && st.have.get(last)
        {
            let (_, len) = map.piece_range(last).expect("in range");
            bytes_present -= u64::from(map.piece_size().bytes() - len);
        }
        Some(ContentStatus {
            id: *id,
            size: map.size(),
            piece_size: map.piece_size(),
            pieces_total: map.piece_count(),
            pieces_present: st.have.count_ones(),
            bytes_present,
            complete: st.have.is_complete(),
            pinned: item.pinned,
            last_access_ms: item.last_access,
            paused_disk_full: st.disk_full,
        })
    }

    /// State of one content, or `None` if it is not in the cache.
    pub fn status(&self, id: &ContentId) -> Option<ContentStatus> {
        self.status_locked(&lock(&self.inner), id)
    }

    /// State of every content, most recently used first.
    pub fn list(&self) -> Vec<ContentStatus> {
        let inner = lock(&self.inner);
        let mut v: Vec<_> = inner
            .entries
            .keys()
            .filter_map(|id| self.status_locked(&inner, id))
            .collect();
        v.sort_by(|a, b| {
            b.last_access_ms
                .cmp(&a.last_access_ms)
                .then(a.id.cmp(&b.id))
        });
        v
    }

    /// Which pieces of a content are present (for telling peers and the server).
    pub fn have(&self, id: &ContentId) -> Option<Bitfield> {
        let e = self.entry(id).ok()?;
        let st = lock(&e.state);
        Some(st.have.clone())
    }

    /// The verified piece map of a content (to send to peers that lack it).
    pub fn piece_map(&self, id: &ContentId) -> Option<Arc<PieceMap>> {
        self.entry(id).ok().map(|e| e.map.clone())
    }

    /// Cache-wide accounting.
    pub fn usage(&self) -> CacheUsage {
        let inner = lock(&self.inner);
        CacheUsage {
            cap: inner.ledger.cap(),
            used: inner.ledger.used(),
            pinned: inner.ledger.pinned_bytes(),
            entries: inner.ledger.len(),
        }
    }

    /// Event counters.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Size of the file system holding the cache, for status displays.
    pub fn disk_space(&self) -> Result<DiskSpace, StoreError> {
        self.storage
            .disk_space()
            .map_err(|e| StoreError::io("measuring the cache disk", e))
    }

    /// Copies a local file into the cache as complete content (for a server or origin
    /// host that holds the file): hashes it with progress (`progress(done, total)` in
    /// bytes), checks it against `expected` if given, then stores every piece through the
    /// same verified path as downloads.
    pub fn import_file(
        &self,
        path: &Path,
        expected: Option<&ContentId>,
        piece_size: PieceSize,
        now_ms: u64,
        progress: impl FnMut(u64, u64),
    ) -> Result<ContentStatus, StoreError> {
        let map = PieceMap::from_file(path, piece_size, progress)?;
        let id = map.id();
        if let Some(expected) = expected
            && *expected != id
        {
            return Err(StoreError::ImportMismatch {
                path: path.display().to_string(),
                expected: *expected,
                found: id,
            });
        }
        let file = std::fs::File::open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        self.begin(map.clone(), now_ms)?;
        let mut buf = Vec::new();
        for index in 0..map.piece_count() {
            let (off, len) = map.piece_range(index).expect("in range");
            buf.resize(len as usize, 0);
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, off)
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
            match self.write_piece(&id, index, &buf, now_ms) {
                Ok(_) => {}
                // The file changed while it was being imported.
                Err(StoreError::BadPiece { .. }) => {
                    return Err(StoreError::io(
                        format!("importing {}", path.display()),
                        std::io::Error::other("the file changed while it was being imported"),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self.status(&id).expect("just imported"))
    }
}

impl<S: Storage> fmt::Debug for Cache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("usage", &self.usage())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cap_parsing() {
        assert_eq!(
            "25%".parse::<CacheCap>().unwrap(),
            CacheCap::PercentOfDisk(25)
        );
        assert_eq!("1024".parse::<CacheCap>().unwrap(), CacheCap::Bytes(1024));
        assert_eq!(
            "2GiB".parse::<CacheCap>().unwrap(),
            CacheCap::Bytes(2 << 30)
        );
        assert_eq!(
            "500 MB".parse::<CacheCap>().unwrap(),
            CacheCap::Bytes(500_000_000)
        );
        for bad in [
            "0%",
            "101%",
            "x",
            "12 parsecs",
            "",
            "99999999999999999999TiB",
        ] {
            let e = bad.parse::<CacheCap>().unwrap_err();
            assert!(matches!(e, StoreError::BadCap(_)), "{bad}: {e}");
        }
        let disk = DiskSpace {
            total: 1000,
            available: 10,
        };
        assert_eq!(CacheCap::PercentOfDisk(25).resolve(disk).unwrap(), 250);
        assert_eq!(CacheCap::Bytes(7).resolve(disk).unwrap(), 7);
    }

    fn memory_cache(
        piece: u32,
        pieces: u32,
    ) -> (
        Cache<crate::MemStorage>,
        crate::MemStorage,
        PieceMap,
        Vec<u8>,
    ) {
        let content: Vec<u8> = (0..piece * pieces).map(|i| (i % 251) as u8).collect();
        let map = PieceMap::from_bytes(&content, PieceSize::new(piece).unwrap()).unwrap();
        let storage = crate::MemStorage::new();
        let cache = Cache::with_storage(storage.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
        cache.begin(map.clone(), 1).unwrap();
        (cache, storage, map, content)
    }

    fn shared(content: &[u8], piece: u32, i: u32) -> (u32, Bytes) {
        let at = (i * piece) as usize;
        (i, Bytes::copy_from_slice(&content[at..at + piece as usize]))
    }

    #[test]
    fn recent_pieces_are_served_as_verified_until_the_file_changes() {
        let piece = 16 * 1024;
        let (cache, storage, map, content) = memory_cache(piece, 4);
        let id = map.id();
        let batch: Vec<(u32, Bytes)> = (0..3).map(|i| shared(&content, piece, i)).collect();
        let out = cache.write_pieces_shared(&id, &batch, 2).unwrap();
        assert_eq!(out.stored, vec![0, 1, 2]);
        assert_eq!(cache.read_piece_shared(&id, 0, 3).unwrap(), batch[0].1);
        assert_eq!(cache.metrics().snapshot().pieces_served_from_memory, 1);
        // A piece not stored is never served, from memory or disk.
        assert!(matches!(
            cache.read_piece_shared(&id, 3, 3),
            Err(StoreError::PieceMissing { .. })
        ));
        // Something else changes the file: memory is no longer trusted, the piece is read
        // and verified again, and the rot is caught.
        assert!(storage.corrupt_data(&id, 5, 0xff));
        assert!(matches!(
            cache.read_piece_shared(&id, 0, 4),
            Err(StoreError::CorruptOnDisk { .. })
        ));
        assert_eq!(cache.read_piece_shared(&id, 1, 4).unwrap(), batch[1].1);
        // Nor after this cache's next write: the change was not its own.
        cache
            .write_pieces_shared(&id, &[shared(&content, piece, 3)], 5)
            .unwrap();
        assert_eq!(
            cache.read_piece_shared(&id, 3, 5).unwrap(),
            shared(&content, piece, 3).1
        );
        assert_eq!(cache.metrics().snapshot().pieces_served_from_memory, 1);
        // Removed content is forgotten by the memory too.
        assert!(cache.remove(&id).unwrap());
        assert!(lock(&cache.recent).pieces.is_empty());
        assert!(matches!(
            cache.read_piece_shared(&id, 3, 6),
            Err(StoreError::UnknownContent(_))
        ));
    }

    #[test]
    fn verified_pieces_are_stored_without_a_second_hash_and_only_for_their_content() {
        let piece = 16 * 1024;
        let (cache, storage, map, content) = memory_cache(piece, 4);
        let id = map.id();
        let verified: Vec<VerifiedPiece> = [0, 2]
            .iter()
            .map(|&i| {
                let (i, b) = shared(&content, piece, i);
                map.verify_shared(i, b).unwrap()
            })
            .collect();
        // A forged piece cannot become a VerifiedPiece.
        let (_, good) = shared(&content, piece, 1);
        let mut forged = good.to_vec();
        forged[0] ^= 1;
        assert!(matches!(
            map.verify_shared(1, Bytes::from(forged)),
            Err(PieceError::HashMismatch { index: 1 })
        ));
        // A piece verified for another content is refused, the rest stored.
        let other: Vec<u8> = (0..piece).map(|i| (i % 7) as u8).collect();
        let other_map = PieceMap::from_bytes(&other, PieceSize::new(piece).unwrap()).unwrap();
        let foreign = other_map.verify_shared(0, Bytes::from(other)).unwrap();
        let mut batch = verified.clone();
        batch.push(foreign);
        let out = cache.write_verified(&id, &batch, 2).unwrap();
        assert_eq!(out.stored, vec![0, 2]);
        assert!(matches!(
            out.bad.as_slice(),
            [(0, PieceError::OtherContent { .. })]
        ));
        // Served from memory, the verified buffer itself.
        assert_eq!(
            cache.read_piece_shared(&id, 2, 3).unwrap(),
            verified[1].data().clone()
        );
        assert_eq!(cache.metrics().snapshot().pieces_served_from_memory, 1);
        assert_eq!(cache.metrics().snapshot().bad_pieces_received, 0);
        // Writing them again changes nothing.
        let again = cache.write_verified(&id, &verified, 4).unwrap();
        assert_eq!(again.already_present, vec![0, 2]);
        assert!(again.stored.is_empty());
        // Durable: after a crash that loses every unsynced write, both are recorded and
        // read back verified from the data.
        drop(cache);
        storage.crash();
        let cache = Cache::with_storage(storage.clone(), CacheCap::Bytes(1 << 30), 5).unwrap();
        assert_eq!(
            cache.have(&id).unwrap().present().collect::<Vec<_>>(),
            vec![0, 2]
        );
        assert_eq!(
            &cache.read_piece(&id, 0, 6).unwrap()[..],
            &content[..piece as usize]
        );
    }

    #[test]
    fn pieces_verified_in_this_run_are_served_unhashed_until_the_file_changes() {
        let piece = 16 * 1024;
        let (cache, storage, map, content) = memory_cache(piece, 4);
        cache.set_recent_capacity(0);
        let id = map.id();
        let batch: Vec<(u32, Bytes)> = (0..3).map(|i| shared(&content, piece, i)).collect();
        cache.write_pieces_shared(&id, &batch, 2).unwrap();
        let m = || cache.metrics().snapshot();
        assert_eq!(cache.read_piece_shared(&id, 0, 3).unwrap(), batch[0].1);
        assert_eq!(
            (m().pieces_served_unhashed, m().pieces_served_from_memory),
            (1, 0)
        );
        // Rot written through the file system changes the file's stamp: every piece is
        // hashed again from then on, and the rotten one is caught.
        assert!(storage.corrupt_data(&id, u64::from(piece) + 9, 0x40));
        assert!(matches!(
            cache.read_piece_shared(&id, 1, 4),
            Err(StoreError::CorruptOnDisk { index: 1, .. })
        ));
        assert_eq!(cache.read_piece_shared(&id, 0, 4).unwrap(), batch[0].1);
        assert_eq!(m().pieces_served_unhashed, 1);
        assert_eq!(m().corrupt_pieces_on_disk, 1);

        // Reopened (a restart): nothing is trusted until this run has verified it.
        let cache = Cache::with_storage(storage.clone(), CacheCap::Bytes(1 << 30), 5).unwrap();
        cache.set_recent_capacity(0);
        assert_eq!(cache.read_piece_shared(&id, 2, 6).unwrap(), batch[2].1);
        assert_eq!(cache.metrics().snapshot().pieces_served_unhashed, 0);
        assert_eq!(cache.read_piece_shared(&id, 2, 7).unwrap(), batch[2].1);
        assert_eq!(cache.metrics().snapshot().pieces_served_unhashed, 1);
    }

    #[test]
    fn recent_pieces_stay_within_their_memory() {
        let piece = 16 * 1024;
        let (cache, _storage, map, content) = memory_cache(piece, 4);
        let id = map.id();
        cache.set_recent_capacity(2 * piece as usize);
        for i in 0..4 {
            cache
                .write_pieces_shared(&id, &[shared(&content, piece, i)], 2)
                .unwrap();
        }
        {
            let recent = lock(&cache.recent);
            assert_eq!(recent.bytes, 2 * piece as usize);
            assert_eq!(recent.pieces.len(), 2);
        }
        // The oldest were dropped: they come from the disk, re-verified.
        for i in 0..4 {
            assert_eq!(
                cache.read_piece_shared(&id, i, 3).unwrap(),
                shared(&content, piece, i).1
            );
        }
        assert_eq!(cache.metrics().snapshot().pieces_served_from_memory, 2);
        // A bad piece is not stored, so not kept either.
        let mut bad = shared(&content, piece, 0).1.to_vec();
        bad[0] ^= 1;
        let (cache, _storage, map, _) = memory_cache(piece, 4);
        let out = cache
            .write_pieces_shared(&map.id(), &[(0, Bytes::from(bad))], 2)
            .unwrap();
        assert_eq!(out.bad.len(), 1);
        assert!(lock(&cache.recent).pieces.is_empty());
    }

    proptest! {
        #[test]
        fn meta_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Some(m) = decode_meta(&bytes) {
                prop_assert_eq!(encode_meta(m), bytes);
            }
        }

        #[test]
        fn meta_round_trip(pinned in any::<bool>(), last_access in any::<u64>()) {
            let m = Meta { pinned, last_access };
            prop_assert_eq!(decode_meta(&encode_meta(m)), Some(m));
        }

        #[test]
        fn cap_parser_never_panics(s in ".{0,30}") {
            let _ = s.parse::<CacheCap>();
        }
    }
}
