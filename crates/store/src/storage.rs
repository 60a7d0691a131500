//! Where the cache's bytes live: the [`Storage`] trait, the real file-system backend
//! [`FsStorage`], and [`MemStorage`], an in-memory backend with fault injection for tests
//! and simulators.
//!
//! Contract for every backend: when a write method returns `Ok`, its effect survives a
//! crash (power loss, `kill -9`), except [`Storage::write_data`], whose bytes are durable
//! only once a later [`Storage::sync_data`] of the same content returns `Ok`. When a
//! method returns `Err`, the cache treats the write as not having happened, and the
//! backend must leave the other files untouched.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::id::ContentId;

/// The small per-content files beside the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Aux {
    /// The encoded, verified [`crate::PieceMap`].
    Map,
    /// The persistent bitfield of verified, durable pieces.
    Have,
    /// Last access time and pin flag.
    Meta,
}

impl Aux {
    fn file_name(self) -> &'static str {
        match self {
            Aux::Map => "map",
            Aux::Have => "have",
            Aux::Meta => "meta",
        }
    }
}

/// Size of the file system holding the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Capacity of the file system (bytes).
    pub total: u64,
    /// Space an unprivileged writer can still use (bytes).
    pub available: u64,
}

/// Disk operations the cache needs, keyed by content id. See the module docs for the
/// durability contract.
pub trait Storage: Send + Sync {
    /// What [`Storage::open_data`] returns for reading complete content.
    type Reader: io::Read + io::Seek + Send;

    /// Ids of every content present, including half-created ones.
    fn list(&self) -> io::Result<Vec<ContentId>>;
    /// Creates the content's place and a data area of `size` bytes (may be sparse).
    fn create(&self, id: &ContentId, size: u64) -> io::Result<()>;
    /// Writes `data` at `offset` of the data area; readable at once, durable only after
    /// [`Storage::sync_data`].
    fn write_data(&self, id: &ContentId, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes every earlier [`Storage::write_data`] of this content durable (`fdatasync`).
    fn sync_data(&self, id: &ContentId) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset` of the data area.
    fn read_data(&self, id: &ContentId, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Length of the data area (bytes), `None` if it does not exist.
    fn data_len(&self, id: &ContentId) -> io::Result<Option<u64>>;
    /// Opens the data area for reading from the start.
    fn open_data(&self, id: &ContentId) -> io::Result<Self::Reader>;
    /// Path of the data file, for backends that have one.
    fn data_path(&self, id: &ContentId) -> Option<PathBuf>;
    /// A cheap fingerprint of the data area's last change (for a file: its modification
    /// and change times, size and inode), so the cache can tell that something other than
    /// its own writes changed it. `None` when the backend cannot tell; the cache then
    /// re-verifies every piece it serves.
    fn data_stamp(&self, id: &ContentId) -> io::Result<Option<[i64; 4]>> {
        let _ = id;
        Ok(None)
    }
    /// Reads a small file; `None` if it does not exist.
    fn read_aux(&self, id: &ContentId, aux: Aux) -> io::Result<Option<Vec<u8>>>;
    /// Replaces a small file atomically (old or new content after a crash, never a mix)
    /// and durably.
    fn replace_aux(&self, id: &ContentId, aux: Aux, bytes: &[u8]) -> io::Result<()>;
    /// Overwrites bytes inside an existing small file in place, durably. Used for one
    /// byte of the `have` bitfield at a time, which a crash cannot tear.
    fn patch_aux(&self, id: &ContentId, aux: Aux, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Removes everything of one content, the `have` file first so that a crash part-way
    /// leaves a content the next open discards. Not an error if it is already gone.
    fn remove(&self, id: &ContentId) -> io::Result<()>;
    /// Size of the file system holding the cache.
    fn disk_space(&self) -> io::Result<DiskSpace>;
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The real backend: one directory per content under `<root>/v1/`, holding `data`,
/// `map`, `have` and `meta` (see `DESIGN.md` in this crate).
///
/// Data files being written are kept open (up to [`MAX_OPEN_DATA_FILES`]) so that the
/// `fdatasync` that makes a batch durable runs on the same descriptor as its writes and
/// sees any write-back error they caused.
#[derive(Debug)]
pub struct FsStorage {
    base: PathBuf,
    open: Mutex<HashMap<ContentId, Arc<File>>>,
}

/// Most data files [`FsStorage`] keeps open for writing at once; past this the cache of
/// descriptors is emptied and refilled on demand.
pub const MAX_OPEN_DATA_FILES: usize = 64;

/// Name of the layout version directory under the cache root.
const LAYOUT_DIR: &str = "v1";

impl FsStorage {
    /// Uses (and creates if needed) the cache directory `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let base = root.join(LAYOUT_DIR);
        fs::create_dir_all(&base)?;
        Ok(Self {
            base,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn dir(&self, id: &ContentId) -> PathBuf {
        self.base.join(id.to_hex())
    }

    fn data_file(&self, id: &ContentId) -> PathBuf {
        self.dir(id).join("data")
    }

    fn open_handles(&self) -> std::sync::MutexGuard<'_, HashMap<ContentId, Arc<File>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open write handle of a content's data file.
    fn writer(&self, id: &ContentId) -> io::Result<Arc<File>> {
        if let Some(f) = self.open_handles().get(id) {
            return Ok(f.clone());
        }
        let f = Arc::new(OpenOptions::new().write(true).open(self.data_file(id))?);
        let mut open = self.open_handles();
        if open.len() >= MAX_OPEN_DATA_FILES {
            open.clear();
        }
        Ok(open.entry(*id).or_insert(f).clone())
    }
}

/// Makes a directory entry change (create, rename) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Storage for FsStorage {
    type Reader = File;

    fn list(&self) -> io::Result<Vec<ContentId>> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.base)? {
            let e = e?;
            if let Some(id) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
                out.push(id);
            }
        }
        Ok(out)
    }

    fn create(&self, id: &ContentId, size: u64) -> io::Result<()> {
        let dir = self.dir(id);
        fs::create_dir_all(&dir)?;
        sync_dir(&self.base)?;
        self.open_handles().remove(id);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("data"))?;
        f.set_len(size)?;
        f.sync_all()?;
        sync_dir(&dir)
    }

    fn write_data(&self, id: &ContentId, offset: u64, data: &[u8]) -> io::Result<()> {
        self.writer(id)?.write_all_at(data, offset)
    }

    fn sync_data(&self, id: &ContentId) -> io::Result<()> {
        self.writer(id)?.sync_data()
    }

    fn read_data(&self, id: &ContentId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        File::open(self.data_file(id))?.read_exact_at(buf, offset)
    }

    fn data_len(&self, id: &ContentId) -> io::Result<Option<u64>> {
        match fs::metadata(self.data_file(id)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn open_data(&self, id: &ContentId) -> io::Result<File> {
        File::open(self.data_file(id))
    }

    fn data_path(&self, id: &ContentId) -> Option<PathBuf> {
        Some(self.data_file(id))
    }

    fn data_stamp(&self, id: &ContentId) -> io::Result<Option<[i64; 4]>> {
        use std::os::unix::fs::MetadataExt;
        match fs::metadata(self.data_file(id)) {
            Ok(m) => Ok(Some([
                m.mtime().wrapping_mul(1_000_000_000) + m.mtime_nsec(),
                m.ctime().wrapping_mul(1_000_000_000) + m.ctime_nsec(),
                m.size() as i64,
                m.ino() as i64,
            ])),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn read_aux(&self, id: &ContentId, aux: Aux) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir(id).join(aux.file_name())) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn replace_aux(&self, id: &ContentId, aux: Aux, bytes: &[u8]) -> io::Result<()> {
        let dir = self.dir(id);
        let tmp = dir.join(format!("{}.tmp", aux.file_name()));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, dir.join(aux.file_name()))?;
        sync_dir(&dir)
    }

    fn patch_aux(&self, id: &ContentId, aux: Aux, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .open(self.dir(id).join(aux.file_name()))?;
        f.write_all_at(bytes, offset)?;
        f.sync_data()
    }

    fn remove(&self, id: &ContentId) -> io::Result<()> {
        self.open_handles().remove(id);
        let dir = self.dir(id);
        match fs::remove_file(dir.join(Aux::Have.file_name())) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => sync_dir(&self.base),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn disk_space(&self) -> io::Result<DiskSpace> {
        statvfs(&self.base)
    }
}

/// Capacity and available space of the file system holding `path` (`fs4`: `statvfs` on
/// Unix, `GetDiskFreeSpaceExW` on Windows). `available` is what this user may still
/// write, which excludes any blocks reserved for root.
pub fn statvfs(path: &Path) -> io::Result<DiskSpace> {
    let st = fs4::statvfs(path)?;
    Ok(DiskSpace {
        total: st.total_space(),
        available: st.available_space(),
    })
}

/// A storage operation, for fault injection in [`MemStorage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// [`Storage::create`].
    Create,
    /// [`Storage::write_data`].
    WriteData,
    /// [`Storage::sync_data`].
    SyncData,
    /// [`Storage::read_data`].
    ReadData,
    /// [`Storage::replace_aux`].
    ReplaceAux,
    /// [`Storage::patch_aux`].
    PatchAux,
    /// [`Storage::remove`].
    Remove,
}

#[derive(Default, Debug)]
struct MemContent {
    /// What reads see.
    data: Vec<u8>,
    /// What survives a crash: `data` as of the last `sync_data`.
    durable: Vec<u8>,
    aux: BTreeMap<Aux, Vec<u8>>,
    /// Changes to `data` so far (writes and injected corruption): its stamp.
    changes: i64,
}

#[derive(Default, Debug)]
struct MemState {
    contents: HashMap<ContentId, MemContent>,
    faults: HashMap<Op, io::ErrorKind>,
    disk: Option<DiskSpace>,
}

/// In-memory storage that models durability: data written but not yet synced is lost by
/// [`MemStorage::crash`]. Dropping a [`crate::Cache`], calling `crash`, and opening a
/// new cache on a clone of the same `MemStorage` simulates power loss and restart.
/// Faults can be injected per operation (for example [`io::ErrorKind::StorageFull`] on
/// [`Op::WriteData`] for a full disk).
#[derive(Clone, Default, Debug)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

impl MemStorage {
    /// An empty store reporting a 1 TiB disk.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes every later `op` fail with `kind` (`None` heals it).
    pub fn set_fault(&self, op: Op, kind: Option<io::ErrorKind>) {
        let mut s = self.lock();
        match kind {
            Some(k) => s.faults.insert(op, k),
            None => s.faults.remove(&op),
        };
    }

    /// Sets the disk size [`Storage::disk_space`] reports.
    pub fn set_disk_space(&self, space: DiskSpace) {
        self.lock().disk = Some(space);
    }

    /// Flips bits of the stored data of `id` at `offset`, durably (simulated bit rot).
    /// Returns false if there is no such byte.
    pub fn corrupt_data(&self, id: &ContentId, offset: u64, xor: u8) -> bool {
        let mut s = self.lock();
        let Some(c) = s.contents.get_mut(id) else {
            return false;
        };
        let at = offset as usize;
        if at >= c.data.len() {
            return false;
        }
        c.data[at] ^= xor;
        c.durable[at] ^= xor;
        c.changes += 1;
        true
    }

    /// Replaces (or with `None` deletes) a small file directly, bypassing faults, to
    /// simulate damage or a crash half-way through creating a content.
    pub fn put_aux(&self, id: &ContentId, aux: Aux, bytes: Option<Vec<u8>>) {
        let mut s = self.lock();
        let c = s.contents.entry(*id).or_default();
        match bytes {
            Some(b) => c.aux.insert(aux, b),
            None => c.aux.remove(&aux),
        };
    }

    /// A copy of the stored data of `id` (including writes not yet synced).
    pub fn data(&self, id: &ContentId) -> Option<Vec<u8>> {
        self.lock().contents.get(id).map(|c| c.data.clone())
    }

    /// Simulates power loss: every data write not followed by a sync is lost.
    pub fn crash(&self) {
        for c in self.lock().contents.values_mut() {
            c.data.clone_from(&c.durable);
        }
    }

    fn check(s: &MemState, op: Op) -> io::Result<()> {
        match s.faults.get(&op) {
            Some(k) => Err(io::Error::new(*k, format!("injected fault on {op:?}"))),
            None => Ok(()),
        }
    }
}

fn not_found() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "no such content in memory storage")
}

impl Storage for MemStorage {
    type Reader = io::Cursor<Vec<u8>>;

    fn list(&self) -> io::Result<Vec<ContentId>> {
        Ok(self.lock().contents.keys().copied().collect())
    }

    fn create(&self, id: &ContentId, size: u64) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::Create)?;
        let size = usize::try_from(size).map_err(|_| io::Error::other("too large for memory"))?;
        s.contents.insert(
            *id,
            MemContent {
                data: vec![0; size],
                durable: vec![0; size],
                aux: BTreeMap::new(),
                changes: 0,
            },
        );
        Ok(())
    }

    fn write_data(&self, id: &ContentId, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::WriteData)?;
        let c = s.contents.get_mut(id).ok_or_else(not_found)?;
        let off = offset as usize;
        let dst = c
            .data
            .get_mut(off..off + data.len())
            .ok_or_else(|| io::Error::other("write past the end of the data area"))?;
        dst.copy_from_slice(data);
        c.changes += 1;
        Ok(())
    }

    fn sync_data(&self, id: &ContentId) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::SyncData)?;
        let c = s.contents.get_mut(id).ok_or_else(not_found)?;
        c.durable.clone_from(&c.data);
        Ok(())
    }

    fn read_data(&self, id: &ContentId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let s = self.lock();
        Self::check(&s, Op::ReadData)?;
        let c = s.contents.get(id).ok_or_else(not_found)?;
        let off = offset as usize;
        let src = c
            .data
            .get(off..off + buf.len())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn data_len(&self, id: &ContentId) -> io::Result<Option<u64>> {
        Ok(self.lock().contents.get(id).map(|c| c.data.len() as u64))
    }

    fn open_data(&self, id: &ContentId) -> io::Result<Self::Reader> {
        let s = self.lock();
        let c = s.contents.get(id).ok_or_else(not_found)?;
        Ok(io::Cursor::new(c.data.clone()))
    }

    fn data_path(&self, _id: &ContentId) -> Option<PathBuf> {
        None
    }

    fn data_stamp(&self, id: &ContentId) -> io::Result<Option<[i64; 4]>> {
        let s = self.lock();
        Ok(s.contents
            .get(id)
            .map(|c| [c.changes, 0, c.data.len() as i64, 0]))
    }

    fn read_aux(&self, id: &ContentId, aux: Aux) -> io::Result<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .contents
            .get(id)
            .and_then(|c| c.aux.get(&aux).cloned()))
    }

    fn replace_aux(&self, id: &ContentId, aux: Aux, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::ReplaceAux)?;
        let c = s.contents.get_mut(id).ok_or_else(not_found)?;
        c.aux.insert(aux, bytes.to_vec());
        Ok(())
    }

    fn patch_aux(&self, id: &ContentId, aux: Aux, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::PatchAux)?;
        let f = s
            .contents
            .get_mut(id)
            .and_then(|c| c.aux.get_mut(&aux))
            .ok_or_else(not_found)?;
        let off = offset as usize;
        let dst = f
            .get_mut(off..off + bytes.len())
            .ok_or_else(|| io::Error::other("patch past the end of the file"))?;
        dst.copy_from_slice(bytes);
        Ok(())
    }

    fn remove(&self, id: &ContentId) -> io::Result<()> {
        let mut s = self.lock();
        Self::check(&s, Op::Remove)?;
        s.contents.remove(id);
        Ok(())
    }

    fn disk_space(&self) -> io::Result<DiskSpace> {
        Ok(self.lock().disk.unwrap_or(DiskSpace {
            total: 1 << 40,
            available: 1 << 40,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_recognised() {
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(is_disk_full(&io::Error::from(io::ErrorKind::StorageFull)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
    }

    #[test]
    fn statvfs_reports_a_disk() {
        let d = tempfile::tempdir().unwrap();
        let s = statvfs(d.path()).unwrap();
        assert!(s.total > 0 && s.available <= s.total);
        assert!(statvfs(Path::new("/nonexistent/branchline")).is_err());
    }

    #[test]
    fn fs_storage_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let s = FsStorage::new(d.path()).unwrap();
        let id = ContentId::of_bytes(b"x");
        s.create(&id, 10).unwrap();
        s.write_data(&id, 3, b"abc").unwrap();
        s.sync_data(&id).unwrap();
        let mut buf = [0u8; 5];
        s.read_data(&id, 2, &mut buf).unwrap();
        assert_eq!(&buf, b"\0abc\0");
        assert_eq!(s.read_aux(&id, Aux::Have).unwrap(), None);
        s.replace_aux(&id, Aux::Have, b"hello").unwrap();
        s.patch_aux(&id, Aux::Have, 1, b"E").unwrap();
        assert_eq!(s.read_aux(&id, Aux::Have).unwrap().unwrap(), b"hEllo");
        assert_eq!(s.list().unwrap(), vec![id]);
        s.remove(&id).unwrap();
        s.remove(&id).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(s.write_data(&id, 0, b"a").is_err());
    }
}
