//! Cache behaviour: resume after restart (including a real `kill -9`), verification of
//! received and stored pieces, accounting and eviction, and full-disk handling.

use std::io::Read;
use std::path::Path;

use branchline_store::storage::{Aux, Op};
use branchline_store::{
    Cache, CacheCap, ContentId, DiskSpace, FsStorage, MemStorage, PieceMap, PieceSize, Storage,
    StoreError, WriteOutcome,
};
use proptest::prelude::*;

const P: u32 = 16 * 1024;

fn ps() -> PieceSize {
    PieceSize::new(P).unwrap()
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn piece<'a>(map: &PieceMap, d: &'a [u8], i: u32) -> &'a [u8] {
    let (off, len) = map.piece_range(i).unwrap();
    &d[off as usize..off as usize + len as usize]
}

fn content(pieces: usize, seed: u64) -> (Vec<u8>, PieceMap) {
    let d = data(pieces * P as usize - 100, seed);
    let m = PieceMap::from_bytes(&d, ps()).unwrap();
    (d, m)
}

fn read_all<R: Read>(mut r: R) -> Vec<u8> {
    let mut v = Vec::new();
    r.read_to_end(&mut v).unwrap();
    v
}

#[test]
fn partial_download_survives_restart_without_refetch() {
    let dir = tempfile::tempdir().unwrap();
    let (d, map) = content(10, 1);
    let id = map.id();
    {
        let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 1).unwrap();
        cache.begin(map.clone(), 1).unwrap();
        for i in [0, 3, 9] {
            assert_eq!(
                cache.write_piece(&id, i, piece(&map, &d, i), 2).unwrap(),
                WriteOutcome::Stored { complete: false }
            );
        }
        assert!(cache.open_complete(&id, 3).unwrap().is_none());
        // Dropped without any shutdown call, as after `kill -9`.
    }
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 10).unwrap();
    let st = cache.status(&id).unwrap();
    assert_eq!((st.pieces_present, st.pieces_total), (3, 10));
    assert_eq!(
        st.bytes_present,
        2 * u64::from(P) + piece(&map, &d, 9).len() as u64
    );
    assert_eq!(
        cache.have(&id).unwrap().missing().collect::<Vec<_>>(),
        vec![1, 2, 4, 5, 6, 7, 8]
    );
    // A verified piece is never fetched twice: the cache says it is already there.
    assert_eq!(
        cache.write_piece(&id, 3, piece(&map, &d, 3), 11).unwrap(),
        WriteOutcome::AlreadyPresent
    );
    let mut last = None;
    for i in cache.have(&id).unwrap().missing().collect::<Vec<_>>() {
        last = Some(cache.write_piece(&id, i, piece(&map, &d, i), 12).unwrap());
    }
    assert_eq!(last, Some(WriteOutcome::Stored { complete: true }));
    let c = cache.open_complete(&id, 13).unwrap().unwrap();
    assert_eq!(c.size, d.len() as u64);
    assert_eq!(read_all(c.reader), d);
    assert_eq!(std::fs::read(c.path.unwrap()).unwrap(), d);
    assert_eq!(
        cache.verify_content(&id).unwrap().corrupt,
        Vec::<u32>::new()
    );
}

/// Child half of [`real_kill_9_keeps_every_recorded_piece`], which runs this test binary
/// again in a child process with `BRANCHLINE_STORE_KILL9_DIR` set: writes pieces,
/// printing each index once `write_piece` has returned, then waits to be killed.
fn kill9_child(dir: &str) -> ! {
    let (d, map) = content(256, 9);
    let id = map.id();
    let cache = Cache::open(Path::new(&dir), CacheCap::Bytes(1 << 30), 1).unwrap();
    cache.begin(map.clone(), 1).unwrap();
    for i in 0..map.piece_count() {
        cache.write_piece(&id, i, piece(&map, &d, i), 2).unwrap();
        println!("stored {i}");
    }
    std::thread::sleep(std::time::Duration::from_secs(60));
    std::process::exit(1)
}

#[test]
fn real_kill_9_keeps_every_recorded_piece() {
    use std::io::BufRead;
    if let Ok(dir) = std::env::var("BRANCHLINE_STORE_KILL9_DIR") {
        kill9_child(&dir);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "real_kill_9_keeps_every_recorded_piece",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BRANCHLINE_STORE_KILL9_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stored = Vec::new();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    while stored.len() < 20 {
        let line = lines.next().expect("child exited early").unwrap();
        if let Some(i) = line.strip_prefix("stored ") {
            stored.push(i.parse::<u32>().unwrap());
        }
    }
    // SIGKILL mid-download: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();

    let (d, map) = content(256, 9);
    let id = map.id();
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 5).unwrap();
    let have = cache.have(&id).expect("content survives kill -9");
    for i in &stored {
        assert!(have.get(*i), "piece {i} was reported stored but is missing");
    }
    // Whatever is recorded is intact.
    let report = cache.verify_content(&id).unwrap();
    assert!(report.corrupt.is_empty());
    assert_eq!(report.checked, have.count_ones());
    println!(
        "killed after {} reported pieces; {} of {} recorded after restart",
        stored.len(),
        have.count_ones(),
        have.len()
    );
    for i in have.missing().collect::<Vec<_>>() {
        cache.write_piece(&id, i, piece(&map, &d, i), 6).unwrap();
    }
    assert_eq!(
        read_all(cache.open_complete(&id, 7).unwrap().unwrap().reader),
        d
    );
}

#[test]
fn cache_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Cache>();
    assert_send_sync::<Cache<MemStorage>>();
}

#[test]
fn bad_piece_from_peer_is_refused_and_nothing_recorded() {
    let cache = Cache::with_storage(MemStorage::new(), CacheCap::Bytes(1 << 30), 0).unwrap();
    let (d, map) = content(4, 2);
    let id = map.id();
    cache.begin(map.clone(), 0).unwrap();
    let mut bad = piece(&map, &d, 1).to_vec();
    bad[100] ^= 0x20;
    let e = cache.write_piece(&id, 1, &bad, 1).unwrap_err();
    assert!(e.is_peer_fault(), "{e}");
    assert!(e.to_string().contains("Drop this peer"), "{e}");
    // Another piece's bytes under this index, and a short piece, are refused too.
    assert!(
        cache
            .write_piece(&id, 1, piece(&map, &d, 2), 1)
            .unwrap_err()
            .is_peer_fault()
    );
    assert!(
        cache
            .write_piece(&id, 1, &piece(&map, &d, 1)[1..], 1)
            .unwrap_err()
            .is_peer_fault()
    );
    assert!(
        cache
            .write_piece(&id, 99, piece(&map, &d, 1), 1)
            .unwrap_err()
            .is_peer_fault()
    );
    assert_eq!(cache.status(&id).unwrap().pieces_present, 0);
    assert_eq!(cache.metrics().snapshot().bad_pieces_received, 4);
    let unknown = ContentId::of_bytes(b"nope");
    assert!(matches!(
        cache.write_piece(&unknown, 0, b"x", 1),
        Err(StoreError::UnknownContent(_))
    ));
}

#[test]
fn piece_corrupted_on_disk_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let (d, map) = content(4, 3);
    let id = map.id();
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 0).unwrap();
    cache.begin(map.clone(), 0).unwrap();
    for i in 0..4 {
        cache.write_piece(&id, i, piece(&map, &d, i), 1).unwrap();
    }
    assert_eq!(cache.read_piece(&id, 2, 2).unwrap(), piece(&map, &d, 2));
    // Bit rot in piece 2, behind the cache's back.
    let path = FsStorage::new(dir.path()).unwrap().data_path(&id).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * P as usize + 77] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let e = cache.read_piece(&id, 2, 3).unwrap_err();
    assert!(
        matches!(e, StoreError::CorruptOnDisk { index: 2, .. }),
        "{e}"
    );
    assert!(matches!(
        cache.read_piece(&id, 2, 3),
        Err(StoreError::PieceMissing { index: 2, .. })
    ));
    let st = cache.status(&id).unwrap();
    assert_eq!(st.pieces_present, 3);
    assert!(!st.complete);
    assert!(cache.open_complete(&id, 4).unwrap().is_none());
    assert_eq!(cache.metrics().snapshot().corrupt_pieces_on_disk, 1);
    drop(cache);
    // The dropped record is durable; the piece is fetched again and all is well.
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 5).unwrap();
    assert!(!cache.have(&id).unwrap().get(2));
    cache.write_piece(&id, 2, piece(&map, &d, 2), 6).unwrap();
    assert_eq!(
        read_all(cache.open_complete(&id, 7).unwrap().unwrap().reader),
        d
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// A bit flipped anywhere in stored content is caught when that piece is read for
    /// serving; every other piece is still served intact.
    #[test]
    fn flipped_bit_on_disk_is_caught(offset in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mem = MemStorage::new();
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
        let (d, map) = content(5, 4);
        let id = map.id();
        cache.begin(map.clone(), 0).unwrap();
        for i in 0..map.piece_count() {
            cache.write_piece(&id, i, piece(&map, &d, i), 1).unwrap();
        }
        let at = offset.index(d.len()) as u64;
        prop_assert!(mem.corrupt_data(&id, at, 1 << bit));
        let bad = (at / u64::from(P)) as u32;
        for i in 0..map.piece_count() {
            let r = cache.read_piece(&id, i, 2);
            if i == bad {
                let is_corrupt = matches!(r, Err(StoreError::CorruptOnDisk { .. }));
                prop_assert!(is_corrupt);
            } else {
                prop_assert_eq!(r.unwrap(), piece(&map, &d, i));
            }
        }
    }
}

#[test]
fn full_disk_pauses_without_damage_and_resumes() {
    let mem = MemStorage::new();
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
    let (d, map) = content(4, 5);
    let id = map.id();
    cache.begin(map.clone(), 0).unwrap();
    cache.write_piece(&id, 0, piece(&map, &d, 0), 1).unwrap();

    mem.set_fault(Op::WriteData, Some(std::io::ErrorKind::StorageFull));
    let e = cache
        .write_piece(&id, 1, piece(&map, &d, 1), 2)
        .unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert!(e.to_string().contains("disk holding the cache is full"));
    let st = cache.status(&id).unwrap();
    assert!(st.paused_disk_full);
    assert_eq!(st.pieces_present, 1);

    // Full while recording the bit: the piece is not recorded either.
    mem.set_fault(Op::WriteData, None);
    mem.set_fault(Op::PatchAux, Some(std::io::ErrorKind::StorageFull));
    assert!(
        cache
            .write_piece(&id, 1, piece(&map, &d, 1), 3)
            .unwrap_err()
            .is_disk_full()
    );
    assert_eq!(cache.status(&id).unwrap().pieces_present, 1);
    assert_eq!(cache.metrics().snapshot().disk_full_events, 2);
    drop(cache);

    // Restart with the disk still full: nothing corrupt, the same piece present.
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 4).unwrap();
    assert_eq!(cache.status(&id).unwrap().pieces_present, 1);
    mem.set_fault(Op::PatchAux, None);
    for i in 1..4 {
        cache.write_piece(&id, i, piece(&map, &d, i), 5).unwrap();
    }
    let st = cache.status(&id).unwrap();
    assert!(st.complete && !st.paused_disk_full);
    assert_eq!(
        read_all(cache.open_complete(&id, 6).unwrap().unwrap().reader),
        d
    );
}

#[test]
fn full_disk_when_starting_leaves_no_half_content() {
    let mem = MemStorage::new();
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
    let (_, map) = content(4, 6);
    mem.set_fault(Op::ReplaceAux, Some(std::io::ErrorKind::StorageFull));
    let e = cache.begin(map.clone(), 0).unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert!(cache.status(&map.id()).is_none());
    assert!(mem.list().unwrap().is_empty());
    assert_eq!(cache.usage().used, 0);
}

#[test]
fn crash_between_data_and_record_refetches_only_that_piece() {
    let mem = MemStorage::new();
    let (d, map) = content(4, 7);
    let id = map.id();
    {
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
        cache.begin(map.clone(), 0).unwrap();
        cache.write_piece(&id, 0, piece(&map, &d, 0), 1).unwrap();
        // The data of piece 1 reaches the disk, then the process dies before its bit is
        // recorded (modelled by the bit write failing, then dropping the cache).
        mem.set_fault(Op::PatchAux, Some(std::io::ErrorKind::Other));
        assert!(cache.write_piece(&id, 1, piece(&map, &d, 1), 2).is_err());
    }
    mem.set_fault(Op::PatchAux, None);
    mem.crash();
    // The data was durable (synced) before the record was attempted.
    assert_eq!(
        &mem.data(&id).unwrap()[P as usize..2 * P as usize],
        piece(&map, &d, 1)
    );
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 3).unwrap();
    assert_eq!(
        cache.have(&id).unwrap().present().collect::<Vec<_>>(),
        vec![0]
    );
    assert_eq!(
        cache.write_piece(&id, 1, piece(&map, &d, 1), 4).unwrap(),
        WriteOutcome::Stored { complete: false }
    );
}

#[test]
fn half_created_or_damaged_content_is_discarded_on_open() {
    let mem = MemStorage::new();
    let (_, a) = content(2, 10);
    let (_, b) = content(2, 11);
    {
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
        cache.begin(a.clone(), 0).unwrap();
        cache.begin(b.clone(), 0).unwrap();
    }
    // a: crash before its `have` file was written. b: its map damaged.
    mem.put_aux(&a.id(), Aux::Have, None);
    let mut m = b.encode();
    m[60] ^= 1;
    mem.put_aux(&b.id(), Aux::Map, Some(m));
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 1).unwrap();
    assert!(cache.list().is_empty());
    assert!(mem.list().unwrap().is_empty());
    assert_eq!(cache.metrics().snapshot().discarded_on_open, 2);
    assert_eq!(cache.usage().used, 0);
}

/// Bytes one content of `pieces` pieces is charged (size + map + have + meta).
fn charge(map: &PieceMap) -> u64 {
    let cache = Cache::with_storage(MemStorage::new(), CacheCap::Bytes(u64::MAX), 0).unwrap();
    cache.begin(map.clone(), 0).unwrap();
    cache.usage().used
}

#[test]
fn eviction_is_lru_respects_pins_and_never_exceeds_cap() {
    let contents: Vec<_> = (0..4).map(|s| content(4, 20 + s)).collect();
    let one = charge(&contents[0].1);
    let mem = MemStorage::new();
    // Room for exactly three contents.
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(3 * one), 0).unwrap();
    let ids: Vec<_> = contents.iter().map(|(_, m)| m.id()).collect();
    for (t, (_, m)) in contents.iter().take(3).enumerate() {
        cache.begin(m.clone(), t as u64).unwrap();
    }
    // Use content 0 again, so content 1 is now the least recently used.
    cache.begin(contents[0].1.clone(), 10).unwrap();
    cache.begin(contents[3].1.clone(), 11).unwrap();
    assert!(cache.status(&ids[1]).is_none(), "LRU content evicted");
    assert!(!mem.list().unwrap().contains(&ids[1]), "its files removed");
    assert!(cache.usage().used <= cache.usage().cap);
    assert_eq!(cache.metrics().snapshot().evictions, 1);

    // Pin everything but content 3 (the most recent): it is evicted next even though
    // the pinned ones are older.
    cache.set_pinned(&ids[0], true).unwrap();
    cache.set_pinned(&ids[2], true).unwrap();
    cache.begin(contents[1].1.clone(), 12).unwrap();
    assert!(cache.status(&ids[3]).is_none());
    assert!(cache.status(&ids[0]).unwrap().pinned);

    // Now everything is pinned or newer: a fourth does not fit if all three are pinned.
    cache.set_pinned(&ids[1], true).unwrap();
    let e = cache.begin(contents[3].1.clone(), 13).unwrap_err();
    assert!(matches!(e, StoreError::NoRoom { .. }), "{e}");
    assert_eq!(
        cache.usage().entries,
        3,
        "a refused reservation evicts nothing"
    );
    assert!(e.to_string().contains("unpin"));

    // Pins survive a restart.
    drop(cache);
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(3 * one), 14).unwrap();
    for id in &ids[0..3] {
        assert!(cache.status(id).unwrap().pinned);
    }
    cache.set_pinned(&ids[2], false).unwrap();
    cache.begin(contents[3].1.clone(), 15).unwrap();
    assert!(cache.status(&ids[2]).is_none());
}

#[test]
fn lru_times_survive_restart() {
    let contents: Vec<_> = (0..3).map(|s| content(2, 30 + s)).collect();
    let one = charge(&contents[0].1);
    let mem = MemStorage::new();
    let step = branchline_store::LRU_PERSIST_INTERVAL_MS;
    {
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(2 * one), 0).unwrap();
        cache.begin(contents[0].1.clone(), 0).unwrap();
        cache.begin(contents[1].1.clone(), step).unwrap();
        // Content 0 used again well after: its new time is written through.
        let (d0, m0) = &contents[0];
        cache
            .write_piece(&m0.id(), 0, piece(m0, d0, 0), 3 * step)
            .unwrap();
    }
    let cache = Cache::with_storage(mem, CacheCap::Bytes(2 * one), 4 * step).unwrap();
    assert_eq!(
        cache.status(&contents[0].1.id()).unwrap().last_access_ms,
        3 * step
    );
    cache.begin(contents[2].1.clone(), 5 * step).unwrap();
    assert!(
        cache.status(&contents[1].1.id()).is_none(),
        "content 1 was older"
    );
    assert!(cache.status(&contents[0].1.id()).is_some());
}

#[test]
fn shrunken_cap_evicts_on_open_and_percent_cap_uses_disk_size() {
    let contents: Vec<_> = (0..3).map(|s| content(2, 40 + s)).collect();
    let one = charge(&contents[0].1);
    let mem = MemStorage::new();
    mem.set_disk_space(DiskSpace {
        total: 100 * one,
        available: 50 * one,
    });
    {
        let cache = Cache::with_storage(mem.clone(), CacheCap::PercentOfDisk(3), 0).unwrap();
        assert_eq!(cache.usage().cap, 3 * one);
        for (t, (_, m)) in contents.iter().enumerate() {
            cache.begin(m.clone(), t as u64 * 100_000).unwrap();
        }
        assert_eq!(cache.usage().entries, 3);
    }
    let cache = Cache::with_storage(mem, CacheCap::PercentOfDisk(1), 300_000).unwrap();
    assert_eq!(cache.usage().entries, 1);
    assert!(cache.status(&contents[2].1.id()).is_some(), "newest kept");
}

#[test]
fn import_file_and_empty_content() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("pkg.bin");
    let d = data(5 * P as usize + 3, 50);
    std::fs::write(&src, &d).unwrap();
    let cache = Cache::open(&dir.path().join("cache"), CacheCap::Bytes(1 << 30), 0).unwrap();
    let id = ContentId::of_bytes(&d);
    let st = cache
        .import_file(&src, Some(&id), ps(), 1, |_, _| {})
        .unwrap();
    assert!(st.complete && st.bytes_present == d.len() as u64);
    let wrong = ContentId::of_bytes(b"other");
    assert!(matches!(
        cache.import_file(&src, Some(&wrong), ps(), 1, |_, _| {}),
        Err(StoreError::ImportMismatch { .. })
    ));
    // Empty content is complete as soon as it begins.
    let empty = PieceMap::from_bytes(b"", ps()).unwrap();
    let st = cache.begin(empty.clone(), 2).unwrap();
    assert!(st.complete && st.pieces_total == 0);
    assert!(read_all(cache.open_complete(&empty.id(), 3).unwrap().unwrap().reader).is_empty());
    assert!(cache.remove(&id).unwrap());
    assert!(!cache.remove(&id).unwrap());
    assert!(cache.open_complete(&id, 4).unwrap().is_none());
}

#[derive(Debug, Clone)]
enum CacheOp {
    Begin(usize),
    Write(usize, u32),
    Corrupt(usize, u32),
    Read(usize, u32),
    Pin(usize, bool),
    Restart,
}

fn cache_op() -> impl Strategy<Value = CacheOp> {
    prop_oneof![
        (0usize..5).prop_map(CacheOp::Begin),
        (0usize..5, 0u32..3).prop_map(|(c, i)| CacheOp::Write(c, i)),
        (0usize..5, 0u32..3).prop_map(|(c, i)| CacheOp::Corrupt(c, i)),
        (0usize..5, 0u32..3).prop_map(|(c, i)| CacheOp::Read(c, i)),
        (0usize..5, any::<bool>()).prop_map(|(c, p)| CacheOp::Pin(c, p)),
        Just(CacheOp::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Random downloads, bit rot, pins and restarts: the cap is never exceeded, pinned
    /// content is never evicted, nothing corrupt is ever served or handed out, and a
    /// restart shows exactly the pieces recorded before it.
    #[test]
    fn cache_model(ops in proptest::collection::vec(cache_op(), 1..60)) {
        let contents: Vec<_> = (0..5).map(|s| content(3, 60 + s)).collect();
        let one = charge(&contents[0].1);
        let cap = CacheCap::Bytes(3 * one);
        let mem = MemStorage::new();
        let mut cache = Cache::with_storage(mem.clone(), cap, 0).unwrap();
        let mut pinned = std::collections::HashSet::new();
        for (t, op) in ops.into_iter().enumerate() {
            let now = t as u64 * 1000;
            match op {
                CacheOp::Begin(c) => {
                    match cache.begin(contents[c].1.clone(), now) {
                        Ok(_) | Err(StoreError::NoRoom { .. }) => {}
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                CacheOp::Write(c, i) => {
                    let (d, m) = &contents[c];
                    match cache.write_piece(&m.id(), i, piece(m, d, i), now) {
                        Ok(_) | Err(StoreError::UnknownContent(_)) => {}
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                CacheOp::Corrupt(c, i) => {
                    mem.corrupt_data(&contents[c].1.id(), u64::from(i * P) + 5, 0x40);
                }
                CacheOp::Read(c, i) => {
                    let (d, m) = &contents[c];
                    if let Ok(bytes) = cache.read_piece(&m.id(), i, now) {
                        prop_assert_eq!(bytes, piece(m, d, i));
                    }
                    if let Ok(Some(cc)) = cache.open_complete(&m.id(), now) {
                        let got = read_all(cc.reader);
                        // Handed out only when complete; rot since then is caught by a
                        // scrub, so only check the length here and scrub below.
                        prop_assert_eq!(got.len(), d.len());
                        let report = cache.verify_content(&m.id()).unwrap();
                        if report.corrupt.is_empty() {
                            prop_assert_eq!(&got, d);
                        }
                    }
                }
                CacheOp::Pin(c, p) => {
                    if cache.set_pinned(&contents[c].1.id(), p).is_ok() {
                        if p { pinned.insert(c); } else { pinned.remove(&c); }
                    }
                }
                CacheOp::Restart => {
                    // Sorted by id: last-use times are persisted only every
                    // LRU_PERSIST_INTERVAL_MS, so the LRU order may differ slightly.
                    let mut before = cache.list();
                    before.sort_by_key(|s| s.id);
                    drop(cache);
                    mem.crash();
                    cache = Cache::with_storage(mem.clone(), cap, now).unwrap();
                    let mut after = cache.list();
                    after.sort_by_key(|s| s.id);
                    prop_assert_eq!(before.len(), after.len());
                    for (b, a) in before.iter().zip(&after) {
                        prop_assert_eq!(b.id, a.id);
                        prop_assert_eq!(b.pieces_present, a.pieces_present);
                        prop_assert_eq!(b.pinned, a.pinned);
                    }
                }
            }
            let u = cache.usage();
            prop_assert!(u.used <= u.cap, "used {} > cap {}", u.used, u.cap);
            for c in &pinned {
                prop_assert!(cache.status(&contents[*c].1.id()).is_some(), "pinned content {} evicted", c);
            }
        }
    }
}

#[test]
fn concurrent_writers_record_every_piece() {
    // Many pieces share one bitfield byte; writers race on it from several threads.
    let dir = tempfile::tempdir().unwrap();
    let (d, map) = content(40, 70);
    let id = map.id();
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 0).unwrap();
    cache.begin(map.clone(), 0).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (cache, map, d) = (&cache, &map, &d);
            s.spawn(move || {
                for i in (t..map.piece_count()).step_by(4) {
                    cache.write_piece(&id, i, piece(map, d, i), 1).unwrap();
                }
            });
        }
    });
    assert!(cache.status(&id).unwrap().complete);
    drop(cache);
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 2).unwrap();
    assert!(cache.status(&id).unwrap().complete);
    assert_eq!(
        read_all(cache.open_complete(&id, 3).unwrap().unwrap().reader),
        d
    );
}

/// A small tmpfs mounted for one test and unmounted when dropped (also on failure).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes, or says why it cannot.
    #[allow(unsafe_code)] // geteuid
    fn mount(size: u64) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn resize(&self, size: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remounting the test tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
#[ignore = "needs root: mounts a tmpfs"]
fn real_enospc_on_a_tiny_tmpfs_pauses_then_resumes() {
    let fs = Tmpfs::mount(256 * 1024).unwrap_or_else(|why| panic!("{why}"));
    let (d, map) = content(40, 80); // 640 KiB, more than the 256 KiB disk.
    let id = map.id();
    let cache = Cache::open(fs.dir.path(), CacheCap::Bytes(1 << 30), 0).unwrap();
    cache.begin(map.clone(), 0).unwrap();
    let mut full_at = None;
    for i in 0..map.piece_count() {
        match cache.write_piece(&id, i, piece(&map, &d, i), 1) {
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_disk_full(), "expected a full disk, got: {e}");
                full_at = Some(i);
                break;
            }
        }
    }
    let full_at = full_at.expect("a 256 KiB disk must fill up");
    let st = cache.status(&id).unwrap();
    assert!(st.paused_disk_full);
    assert!(st.pieces_present <= full_at);
    // Everything recorded is intact.
    assert!(cache.verify_content(&id).unwrap().corrupt.is_empty());
    drop(cache);

    // Space is freed (the disk grows); after a restart the download resumes and
    // completes with correct bytes.
    fs.resize(4 << 20);
    let cache = Cache::open(fs.dir.path(), CacheCap::Bytes(1 << 30), 2).unwrap();
    let before = cache.status(&id).unwrap().pieces_present;
    assert_eq!(before, st.pieces_present);
    for i in cache.have(&id).unwrap().missing().collect::<Vec<_>>() {
        cache.write_piece(&id, i, piece(&map, &d, i), 3).unwrap();
    }
    assert_eq!(
        read_all(cache.open_complete(&id, 4).unwrap().unwrap().reader),
        d
    );
    drop(cache);
}

#[test]
fn content_whose_data_file_vanished_is_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (d, map) = content(3, 90);
    let id = map.id();
    {
        let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 0).unwrap();
        cache.begin(map.clone(), 0).unwrap();
        cache.write_piece(&id, 0, piece(&map, &d, 0), 1).unwrap();
    }
    let data = FsStorage::new(dir.path()).unwrap().data_path(&id).unwrap();
    std::fs::remove_file(&data).unwrap();
    let cache = Cache::open(dir.path(), CacheCap::Bytes(1 << 30), 2).unwrap();
    assert!(cache.status(&id).is_none());
    assert_eq!(cache.metrics().snapshot().discarded_on_open, 1);
    assert!(!data.parent().unwrap().exists());
    // It can be downloaded afresh.
    cache.begin(map.clone(), 3).unwrap();
    assert_eq!(cache.status(&id).unwrap().pieces_present, 0);
}

#[test]
fn batch_write_reports_each_piece_and_records_only_good_ones() {
    let mem = MemStorage::new();
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
    let (d, map) = content(20, 100);
    let id = map.id();
    cache.begin(map.clone(), 0).unwrap();
    cache.write_piece(&id, 4, piece(&map, &d, 4), 1).unwrap();
    let mut bad = piece(&map, &d, 7).to_vec();
    bad[0] ^= 0x80;
    let batch: Vec<(u32, &[u8])> = vec![
        (3, piece(&map, &d, 3)),
        (4, piece(&map, &d, 4)), // already present
        (7, &bad),               // corrupt
        (12, piece(&map, &d, 12)),
        (3, piece(&map, &d, 3)), // duplicate in the batch
        (19, piece(&map, &d, 19)),
    ];
    let out = cache.write_pieces(&id, &batch, 2).unwrap();
    assert_eq!(out.stored, vec![3, 12, 19]);
    assert_eq!(out.already_present, vec![4]);
    assert_eq!(out.bad.len(), 1);
    assert_eq!(out.bad[0].0, 7);
    assert!(!out.complete);
    drop(cache);
    mem.crash();
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 3).unwrap();
    assert_eq!(
        cache.have(&id).unwrap().present().collect::<Vec<_>>(),
        vec![3, 4, 12, 19]
    );
    let rest: Vec<(u32, &[u8])> = cache
        .have(&id)
        .unwrap()
        .missing()
        .map(|i| (i, piece(&map, &d, i)))
        .collect();
    let out = cache.write_pieces(&id, &rest, 4).unwrap();
    assert!(out.complete && out.bad.is_empty());
    assert_eq!(
        read_all(cache.open_complete(&id, 5).unwrap().unwrap().reader),
        d
    );
}

#[test]
fn power_loss_before_data_sync_records_nothing() {
    let mem = MemStorage::new();
    let (d, map) = content(6, 110);
    let id = map.id();
    {
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 0).unwrap();
        cache.begin(map.clone(), 0).unwrap();
        cache.write_piece(&id, 0, piece(&map, &d, 0), 1).unwrap();
        mem.set_fault(Op::SyncData, Some(std::io::ErrorKind::Other));
        let batch: Vec<(u32, &[u8])> = (1..4).map(|i| (i, piece(&map, &d, i))).collect();
        let e = cache.write_pieces(&id, &batch, 2).unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e}");
        assert!(e.to_string().contains("3 pieces"), "{e}");
        assert_eq!(cache.status(&id).unwrap().pieces_present, 1);
    }
    mem.set_fault(Op::SyncData, None);
    mem.crash();
    // The unsynced bytes are gone, and nothing claims them.
    assert!(
        mem.data(&id).unwrap()[P as usize..4 * P as usize]
            .iter()
            .all(|b| *b == 0)
    );
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(1 << 30), 3).unwrap();
    assert_eq!(
        cache.have(&id).unwrap().present().collect::<Vec<_>>(),
        vec![0]
    );
    assert!(cache.verify_content(&id).unwrap().corrupt.is_empty());
}

#[test]
fn last_use_from_the_future_is_clamped_on_open() {
    let (_, a) = content(2, 120);
    let (_, b) = content(2, 121);
    let (_, c) = content(2, 122);
    let one = charge(&a);
    let step = branchline_store::LRU_PERSIST_INTERVAL_MS;
    let future = 1_000_000_000_000;
    let setup = || {
        let mem = MemStorage::new();
        let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(2 * one), 0).unwrap();
        // The clock was far ahead when `a` was used, then corrected.
        cache.begin(a.clone(), future).unwrap();
        cache.begin(b.clone(), 5_000).unwrap();
        mem
    };

    let cache = Cache::with_storage(setup(), CacheCap::Bytes(2 * one), 3_000).unwrap();
    assert_eq!(cache.status(&a.id()).unwrap().last_access_ms, 3_000);
    cache.begin(c.clone(), 6_000).unwrap();
    assert!(
        cache.status(&a.id()).is_none(),
        "a is the oldest once clamped"
    );
    assert!(cache.status(&b.id()).is_some());

    // Once clamped, later uses of `a` are written to disk again.
    let mem = setup();
    let cache = Cache::with_storage(mem.clone(), CacheCap::Bytes(2 * one), 3_000).unwrap();
    cache.begin(a.clone(), 3_000 + step).unwrap();
    drop(cache);
    let cache = Cache::with_storage(mem, CacheCap::Bytes(2 * one), 3_000 + 5 * step).unwrap();
    assert_eq!(cache.status(&a.id()).unwrap().last_access_ms, 3_000 + step);
}

#[test]
fn a_cache_directory_is_opened_by_one_cache_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = Cache::open(dir.path(), CacheCap::Bytes(1 << 20), 0).unwrap();
    let e = Cache::open(dir.path(), CacheCap::Bytes(1 << 20), 0).unwrap_err();
    assert!(matches!(e, StoreError::InUse(_)), "{e}");
    assert!(e.to_string().contains("in use"), "{e}");
    drop(first);
    Cache::open(dir.path(), CacheCap::Bytes(1 << 20), 0).unwrap();
}
