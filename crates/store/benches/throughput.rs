//! Throughput of hashing, verification and the cache's write/read paths, in MiB/s.
//!
//! Run: `cargo bench -p branchline-store --bench throughput`. Environment:
//! `BRANCHLINE_BENCH_MIB` (content size, default 256), `BRANCHLINE_BENCH_DIR` (where the
//! test file and cache go, default the system temp dir; put it on the disk you want to
//! measure, since the cache figures include an fsync per piece).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use branchline_store::{Cache, CacheCap, DEFAULT_PIECE_SIZE, PieceMap, hash_file};

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Best of `rounds` runs of `f` (least disturbed by other work on the machine).
fn best<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best: Option<(Duration, T)> = None;
    for _ in 0..rounds {
        let t = Instant::now();
        let out = f();
        let d = t.elapsed();
        if best.as_ref().is_none_or(|(b, _)| d < *b) {
            best = Some((d, out));
        }
    }
    best.expect("rounds > 0")
}

/// Writes back all dirty pages first, so one write figure does not pay for the
/// write-back of the data before it.
#[allow(unsafe_code)] // sync(2)
fn flush_disks() {
    // SAFETY: sync(2) has no preconditions and cannot fail.
    unsafe { libc::sync() };
}

fn main() {
    let mib: u64 = std::env::var("BRANCHLINE_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let base: PathBuf = std::env::var_os("BRANCHLINE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir for the benchmark");
    let size = mib << 20;

    // Deterministic incompressible content.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..size / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let file = dir.path().join("content.bin");
    std::fs::write(&file, &data).expect("write the test file");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "branchline-store throughput: {mib} MiB content, {} KiB pieces, {threads} hardware threads, dir {}",
        DEFAULT_PIECE_SIZE.bytes() / 1024,
        base.display()
    );

    let (d, h) = best(3, || blake3::hash(&data));
    println!(
        "blake3::hash, one thread, in memory (baseline)   {:>8.0} MiB/s",
        mib_per_s(size, d)
    );

    let (d, map) = best(3, || {
        PieceMap::from_bytes(&data, DEFAULT_PIECE_SIZE).unwrap()
    });
    assert_eq!(
        map.id(),
        h.into(),
        "piece map root must equal the BLAKE3 hash"
    );
    println!(
        "PieceMap::from_bytes, one thread, in memory      {:>8.0} MiB/s",
        mib_per_s(size, d)
    );

    let (d, id) = best(3, || hash_file(&file, |_, _| {}).unwrap());
    assert_eq!(id, map.id());
    println!(
        "hash_file (publish), all threads, page cache     {:>8.0} MiB/s",
        mib_per_s(size, d)
    );

    let f = std::fs::File::open(&file).unwrap();
    let (d, m1) = best(3, || {
        PieceMap::from_reader_at(
            |off, buf| std::os::unix::fs::FileExt::read_exact_at(&f, buf, off),
            size,
            DEFAULT_PIECE_SIZE,
            1,
            |_, _| {},
        )
        .unwrap()
    });
    assert_eq!(m1, map);
    println!(
        "same, one thread                                 {:>8.0} MiB/s",
        mib_per_s(size, d)
    );

    let (d, ()) = best(3, || {
        for i in 0..map.piece_count() {
            let (off, len) = map.piece_range(i).unwrap();
            map.verify_piece(i, &data[off as usize..(off + u64::from(len)) as usize])
                .unwrap();
        }
    });
    println!(
        "PieceMap::verify_piece, one thread               {:>8.0} MiB/s",
        mib_per_s(size, d)
    );

    let enc = map.encode();
    let n = 100;
    let (d, ()) = best(3, || {
        for _ in 0..n {
            PieceMap::decode(&enc, &map.id(), map.size()).unwrap();
        }
    });
    println!(
        "PieceMap::decode+verify of a {} KiB map           {:>8.1} us each",
        enc.len() / 1024,
        d.as_secs_f64() * 1e6 / f64::from(n)
    );

    // Cache paths: verify + write + fsync data + record bit; read + re-verify.
    let cache_dir = dir.path().join("cache");
    let cache = Cache::open(&cache_dir, CacheCap::Bytes(u64::MAX), 0).unwrap();
    cache.begin(map.clone(), 0).unwrap();
    flush_disks();
    let t = Instant::now();
    for i in 0..map.piece_count() {
        let (off, len) = map.piece_range(i).unwrap();
        cache
            .write_piece(
                &map.id(),
                i,
                &data[off as usize..(off + u64::from(len)) as usize],
                1,
            )
            .unwrap();
    }
    let d = t.elapsed();
    println!(
        "Cache::write_piece (verify, write, 2 fsyncs)     {:>8.0} MiB/s",
        mib_per_s(size, d)
    );
    // Same, in batches of 16 pieces (one pair of fsyncs per batch).
    let cache2 = Cache::open(&dir.path().join("cache2"), CacheCap::Bytes(u64::MAX), 0).unwrap();
    cache2.begin(map.clone(), 0).unwrap();
    let pieces: Vec<(u32, &[u8])> = (0..map.piece_count())
        .map(|i| {
            let (off, len) = map.piece_range(i).unwrap();
            (i, &data[off as usize..(off + u64::from(len)) as usize])
        })
        .collect();
    flush_disks();
    let t = Instant::now();
    for batch in pieces.chunks(16) {
        cache2.write_pieces(&map.id(), batch, 1).unwrap();
    }
    let d = t.elapsed();
    println!(
        "Cache::write_pieces, batches of 16 pieces        {:>8.0} MiB/s",
        mib_per_s(size, d)
    );
    drop(cache2);

    let (d, ()) = best(3, || {
        for i in 0..map.piece_count() {
            cache.read_piece(&map.id(), i, 2).unwrap();
        }
    });
    println!(
        "Cache::read_piece (read, re-verify), page cache  {:>8.0} MiB/s",
        mib_per_s(size, d)
    );
}
