//! Throughput of `Origin::read_range` in 1 MiB ranges: a local file vs. loopback HTTP
//! against `CountingServer` (serving the same file from disk).
//!
//! Run: `cargo bench -p branchline-origin --bench http`
//! Size: `BRANCHLINE_ORIGIN_BENCH_MIB` (default 256).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use branchline_origin::testserver::CountingServer;
use branchline_origin::{Origin, OriginConfig};

const MIB: u64 = 1024 * 1024;

fn main() {
    let mib: u64 = std::env::var("BRANCHLINE_ORIGIN_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(256);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pkg.bin");
    write_file(&path, mib);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = OriginConfig {
            use_env_proxy: false,
            ..OriginConfig::default()
        };
        let file = Origin::with_config(&path.display().to_string(), config.clone()).expect("file origin");
        assert_eq!(file.size().await.expect("size"), mib * MIB);
        let server = CountingServer::start_dir("127.0.0.1:0".parse().expect("addr"), dir.path())
            .await
            .expect("server");
        let http = Origin::with_config(&server.url("pkg.bin"), config).expect("http origin");
        assert_eq!(http.size().await.expect("size"), mib * MIB);

        println!("origin read_range throughput, {mib} MiB file, 1 MiB ranges (page-cached file, loopback HTTP)");
        for in_flight in [1u64, 4] {
            let t = read_all(&file, mib, in_flight).await;
            report("file", in_flight, mib, t);
            server.reset_counters();
            let t = read_all(&http, mib, in_flight).await;
            report("http", in_flight, mib, t);
            assert_eq!(server.bytes_served(), mib * MIB, "HTTP served bytes != bytes asked for");
            println!(
                "  http: {} requests, {} body bytes served (= bytes asked for)",
                server.requests(),
                server.bytes_served()
            );
        }
    });
}

fn write_file(path: &std::path::Path, mib: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    let mut buf = vec![0u8; MIB as usize];
    for _ in 0..mib {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).expect("write");
    }
    f.flush().expect("flush");
}

/// Reads every 1 MiB range once with `in_flight` concurrent readers; checks the lengths
/// and that the ranges tile the file.
async fn read_all(origin: &Origin, mib: u64, in_flight: u64) -> Duration {
    let next = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (origin, next, total) = (origin.clone(), Arc::clone(&next), Arc::clone(&total));
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= mib {
                    return;
                }
                let b = origin.read_range(i * MIB, MIB).await.expect("read_range");
                assert_eq!(b.len() as u64, MIB);
                total.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("reader task");
    }
    let elapsed = start.elapsed();
    assert_eq!(total.load(Ordering::Relaxed), mib * MIB);
    elapsed
}

fn report(kind: &str, in_flight: u64, mib: u64, t: Duration) {
    println!(
        "{kind:>5} origin, {in_flight} in flight: {:8.1} MiB/s ({mib} MiB in {:.3} s)",
        mib as f64 / t.as_secs_f64(),
        t.as_secs_f64()
    );
}
