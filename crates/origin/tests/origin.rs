//! Real-socket and real-file tests of `Origin` against `CountingServer` (loopback only).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use branchline_origin::range::{RangeRequest, parse_range_header};
use branchline_origin::testserver::{CountingServer, parse_request};
use branchline_origin::{Origin, OriginConfig, OriginError, RetryPolicy, TlsRoots};
use bytes::Bytes;

const LOOPBACK: &str = "127.0.0.1:0";

fn loopback() -> SocketAddr {
    LOOPBACK.parse().unwrap()
}

fn data(len: usize) -> Bytes {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn config(max_attempts: u32) -> OriginConfig {
    OriginConfig {
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_secs(20),
        },
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(20),
        use_env_proxy: false,
        ..OriginConfig::default()
    }
}

async fn serve(name: &str, content: &Bytes) -> CountingServer {
    CountingServer::start(loopback(), [(name.to_string(), content.clone())])
        .await
        .unwrap()
}

fn origin(url: &str, attempts: u32) -> Origin {
    Origin::with_config(url, config(attempts)).unwrap()
}

#[tokio::test]
async fn file_origin_reads_ranges() {
    let content = data(100_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkg.bin");
    std::fs::write(&path, &content).unwrap();
    for s in [
        path.display().to_string(),
        format!("file://{}", path.display()),
    ] {
        let o = Origin::parse(&s).unwrap();
        assert_eq!(o.size().await.unwrap(), 100_000);
        assert_eq!(o.read_range(0, 10).await.unwrap(), content.slice(0..10));
        assert_eq!(
            o.read_range(99_990, 10).await.unwrap(),
            content.slice(99_990..)
        );
        assert_eq!(o.read_range(5, 0).await.unwrap().len(), 0);
        let e = o.read_range(99_999, 2).await.unwrap_err();
        assert!(
            matches!(e, OriginError::OutOfRange { size: 100_000, .. }),
            "{e}"
        );
        let e = o.read_range(u64::MAX, 2).await.unwrap_err();
        assert!(matches!(e, OriginError::OutOfRange { .. }), "{e}");
    }
    let missing = Origin::parse(&dir.path().join("nope").display().to_string()).unwrap();
    let e = missing.read_range(0, 1).await.unwrap_err();
    assert!(matches!(e, OriginError::NotFound { .. }), "{e}");
    let e = Origin::parse(&dir.path().display().to_string())
        .unwrap()
        .size()
        .await
        .unwrap_err();
    assert!(matches!(e, OriginError::File { .. }), "{e}");
}

#[tokio::test]
async fn file_origin_notices_a_changed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pkg.bin");
    std::fs::write(&path, data(4096)).unwrap();
    let o = Origin::parse(&path.display().to_string()).unwrap();
    o.read_range(0, 1024).await.unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(b"more").unwrap();
    drop(f);
    let e = o.read_range(1024, 1024).await.unwrap_err();
    assert!(matches!(e, OriginError::Changed { .. }), "{e}");
    assert!(e.to_string().contains("size went from 4096 to 4100"), "{e}");
}

#[tokio::test]
async fn http_size_and_ranges_read_exactly_what_was_asked() {
    let content = data(3 * 1024 * 1024 + 17);
    let server = serve("pkg.bin", &content).await;
    let o = origin(&server.url("pkg.bin"), 1);
    assert_eq!(o.size().await.unwrap(), content.len() as u64);
    assert_eq!(server.bytes_served(), 0, "HEAD must not send a body");
    let ranges = [
        (0u64, 1u64),
        (1, 1024 * 1024),
        (2 * 1024 * 1024, 1024 * 1024 + 17),
        (777, 4321),
    ];
    let mut asked = 0;
    for (off, len) in ranges {
        let got = o.read_range(off, len).await.unwrap();
        assert_eq!(got, content.slice(off as usize..(off + len) as usize));
        asked += len;
    }
    assert_eq!(server.bytes_served(), asked);
    assert_eq!(server.bytes_served_for("pkg.bin"), asked);
    assert_eq!(server.requests(), 1 + ranges.len() as u64);
    let e = o.read_range(content.len() as u64 - 1, 2).await.unwrap_err();
    assert!(matches!(e, OriginError::OutOfRange { .. }), "{e}");
}

#[tokio::test]
async fn resumed_download_reads_each_byte_once() {
    let piece = 64 * 1024u64;
    let content = data(10 * piece as usize);
    let server = serve("pkg.bin", &content).await;
    let first = origin(&server.url("pkg.bin"), 1);
    for i in 0..4 {
        assert_eq!(
            first.read_range(i * piece, piece).await.unwrap(),
            content.slice((i * piece) as usize..((i + 1) * piece) as usize)
        );
    }
    drop(first);
    // A new process resumes with the pieces it lacks, in another order.
    let second = origin(&server.url("pkg.bin"), 1);
    for i in [9, 4, 8, 5, 7, 6] {
        assert_eq!(
            second.read_range(i * piece, piece).await.unwrap(),
            content.slice((i * piece) as usize..((i + 1) * piece) as usize)
        );
    }
    assert_eq!(server.bytes_served(), content.len() as u64);
    assert_eq!(server.bytes_served_for("pkg.bin"), content.len() as u64);
    assert_eq!(server.bytes_served_for("other"), 0);
}

#[tokio::test]
async fn retries_after_503_and_gives_up_when_it_persists() {
    let content = data(50_000);
    let server = serve("pkg.bin", &content).await;
    let o = origin(&server.url("pkg.bin"), 4);
    server.set_fail_next(2);
    assert_eq!(
        o.read_range(100, 1000).await.unwrap(),
        content.slice(100..1100)
    );
    assert_eq!(server.requests(), 3);
    assert_eq!(server.bytes_served(), 1000);

    server.set_fail_next(2);
    assert_eq!(o.size().await.unwrap(), 50_000);

    server.set_fail_next(100);
    let before = server.requests();
    let e = o.read_range(0, 10).await.unwrap_err();
    match &e {
        OriginError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, 4);
            assert!(
                matches!(**last, OriginError::ServerBusy { status: 503, .. }),
                "{last}"
            );
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
    assert!(e.to_string().contains("try again later"), "{e}");
    assert_eq!(server.requests() - before, 4);
}

#[tokio::test]
async fn retries_a_body_cut_short() {
    let content = data(200_000);
    let server = serve("pkg.bin", &content).await;
    let o = origin(&server.url("pkg.bin"), 3);
    server.set_truncate_next(1);
    assert_eq!(
        o.read_range(1000, 100_000).await.unwrap(),
        content.slice(1000..101_000)
    );
    assert_eq!(server.requests(), 2);
    assert_eq!(server.bytes_served(), 100_000 + 50_000);
}

#[tokio::test]
async fn a_held_server_stops_at_its_limit_until_released() {
    let content = data(3 << 20);
    let server = serve("pkg.bin", &content).await;
    server.hold_after(1 << 20);
    let o = Arc::new(origin(&server.url("pkg.bin"), 1));
    let reading = {
        let o = o.clone();
        tokio::spawn(async move { o.read_range(0, 3 << 20).await })
    };
    // The first 1 MiB chunk goes out; the next would pass the limit and waits.
    let start = std::time::Instant::now();
    while server.bytes_served() < 1 << 20 {
        assert!(start.elapsed() < Duration::from_secs(30), "nothing served");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.bytes_served(), 1 << 20, "held at the limit");
    assert!(!reading.is_finished());
    server.release();
    let got = tokio::time::timeout(Duration::from_secs(30), reading)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(got, content);
    assert_eq!(server.bytes_served(), 3 << 20);
}

#[tokio::test]
async fn missing_file_is_a_permanent_error() {
    let server = serve("pkg.bin", &data(10)).await;
    let o = origin(&server.url("nope.bin"), 5);
    let e = o.read_range(0, 5).await.unwrap_err();
    assert!(matches!(e, OriginError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("check the URL"), "{e}");
    let e = o.size().await.unwrap_err();
    assert!(matches!(e, OriginError::NotFound { .. }), "{e}");
    assert_eq!(server.requests(), 2, "a 404 must not be retried");
}

#[tokio::test]
async fn server_ignoring_ranges_is_an_error_except_for_the_whole_file() {
    let content = data(100_000);
    let server = serve("pkg.bin", &content).await;
    server.set_ignore_ranges(true);
    let o = origin(&server.url("pkg.bin"), 5);
    let e = o.read_range(1000, 1000).await.unwrap_err();
    assert!(
        matches!(
            e,
            OriginError::RangesIgnored {
                body_len: Some(100_000),
                offset: 1000,
                len: 1000,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(server.requests(), 1, "not retried");
    assert_eq!(o.read_range(0, 100_000).await.unwrap(), content);
}

#[tokio::test]
async fn range_past_the_end_gets_416() {
    let server = serve("pkg.bin", &data(1000)).await;
    let o = origin(&server.url("pkg.bin"), 5);
    let e = o.read_range(1000, 10).await.unwrap_err();
    assert!(
        matches!(
            e,
            OriginError::RangeNotSatisfiable {
                size: Some(1000),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn file_replaced_mid_download_is_reported() {
    let server = serve("pkg.bin", &data(10_000)).await;
    let o = origin(&server.url("pkg.bin"), 3);
    o.read_range(0, 5000).await.unwrap();
    let pinned = o.version().unwrap();
    assert_eq!(pinned.size, Some(10_000));
    assert!(pinned.etag.is_some());
    server.set_file("pkg.bin", data(10_001));
    let e = o.read_range(5000, 5000).await.unwrap_err();
    assert!(matches!(e, OriginError::Changed { .. }), "{e}");
    assert!(e.to_string().contains("412"), "{e}");
    assert_eq!(server.bytes_served(), 5000);

    // Without consistency checks the new version is read (upstream hashing catches it).
    let lax = Origin::with_config(
        &server.url("pkg.bin"),
        OriginConfig {
            check_consistency: false,
            ..config(1)
        },
    )
    .unwrap();
    assert_eq!(lax.read_range(5000, 5000).await.unwrap().len(), 5000);
}

#[tokio::test]
async fn empty_file_has_size_zero() {
    let server = serve("empty", &Bytes::new()).await;
    let o = origin(&server.url("empty"), 1);
    assert_eq!(o.size().await.unwrap(), 0);
    assert_eq!(o.read_range(0, 0).await.unwrap().len(), 0);
}

#[tokio::test]
async fn directory_server_serves_files_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let content = data(3 * 1024 * 1024);
    std::fs::write(dir.path().join("a.bin"), &content).unwrap();
    std::fs::write(dir.path().join("b.bin"), b"hello").unwrap();
    let server = CountingServer::start_dir(loopback(), dir.path())
        .await
        .unwrap();
    let a = origin(&server.url("a.bin"), 1);
    let b = origin(&server.url("b.bin"), 1);
    assert_eq!(a.size().await.unwrap(), content.len() as u64);
    assert_eq!(
        a.read_range(1, 2 * 1024 * 1024 + 5).await.unwrap(),
        content.slice(1..2 * 1024 * 1024 + 6)
    );
    assert_eq!(
        b.read_range(0, 5).await.unwrap(),
        Bytes::from_static(b"hello")
    );
    assert_eq!(server.bytes_served_for("a.bin"), 2 * 1024 * 1024 + 5);
    assert_eq!(server.bytes_served_for("b.bin"), 5);
    server.reset_counters();
    assert_eq!((server.bytes_served(), server.requests()), (0, 0));
}

#[tokio::test]
async fn unreachable_origin_is_retried_then_reported() {
    let port = {
        let l = TcpListener::bind(LOOPBACK).unwrap();
        l.local_addr().unwrap().port()
    };
    let o = origin(&format!("http://127.0.0.1:{port}/x"), 2);
    let e = o.read_range(0, 1).await.unwrap_err();
    match e {
        OriginError::RetriesExhausted {
            attempts: 2, last, ..
        } => {
            assert!(matches!(*last, OriginError::Transport { .. }), "{last}");
        }
        other => panic!("expected RetriesExhausted, got {other}"),
    }
}

#[test]
fn garbage_origin_strings_are_rejected() {
    for s in [
        "",
        "pkg.bin",
        "ftp://h/x",
        "http//h/x",
        "https://",
        "file://h/x",
        "C:\\pkg.bin",
        "http://h:x/",
    ] {
        let e = Origin::parse(s).unwrap_err();
        assert!(
            matches!(e, OriginError::InvalidLocation { .. }),
            "{s:?}: {e}"
        );
    }
}

/// Sends raw bytes on a fresh connection and returns what the server answered.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    // End of our side: the server sees EOF instead of waiting for more.
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn test_server_survives_garbage() {
    let content = data(1000);
    let server = serve("pkg.bin", &content).await;
    let addr = server.local_addr();
    assert!(
        raw_exchange(addr, b"\x00\xff garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    assert!(
        raw_exchange(addr, b"GET /pkg.bin HTTP/1.1\r\nX: y\r\n")
            .await
            .is_empty()
    );
    let huge = format!("GET /pkg.bin HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert!(
        raw_exchange(addr, huge.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    let body = raw_exchange(
        addr,
        b"POST /pkg.bin HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await;
    assert!(body.starts_with("HTTP/1.1 400"), "{body}");
    let r = raw_exchange(
        addr,
        b"DELETE /pkg.bin HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let r = raw_exchange(
        addr,
        b"GET /pkg.bin HTTP/1.1\r\nRange: bytes=5-\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 206"), "{r}");
    assert!(r.contains("Content-Range: bytes 5-999/1000"), "{r}");
    let r = raw_exchange(addr, b"GET /pkg.bin HTTP/1.0\r\nRange: bytes=2000-\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 416") && r.contains("bytes */1000"),
        "{r}"
    );
    // Two requests on one keep-alive connection.
    let r = raw_exchange(
        addr,
        b"HEAD /pkg.bin HTTP/1.1\r\n\r\nGET /pkg.bin HTTP/1.1\r\nRange: bytes=0-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.matches("HTTP/1.1 ").count(), 2, "{r}");
    assert_eq!(server.bytes_served(), 995 + 2);
    // Still serving normally.
    let o = origin(&server.url("pkg.bin"), 1);
    assert_eq!(o.read_range(10, 10).await.unwrap(), content.slice(10..20));
}

/// A one-thread HTTPS server (rustls, blocking) answering ranged GETs of `content`
/// with `Connection: close`, for up to `conns` connections.
fn https_server(
    content: Bytes,
    conns: usize,
) -> (SocketAddr, Vec<u8>, std::thread::JoinHandle<()>) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let cfg = Arc::new(cfg);
    let listener = TcpListener::bind(LOOPBACK).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        // Bounded in time as well as count: a missing client must not hang the test.
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut served = 0;
        while served < conns && std::time::Instant::now() < deadline {
            let tcp = match listener.accept() {
                Ok((tcp, _)) => tcp,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => return,
            };
            served += 1;
            tcp.set_nonblocking(false).unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            tcp.set_write_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let conn = rustls::ServerConnection::new(Arc::clone(&cfg)).unwrap();
            let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
            let mut head = Vec::new();
            loop {
                let mut line = Vec::new();
                match tls.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let end = line == b"\r\n";
                head.extend_from_slice(&line);
                if end {
                    break;
                }
            }
            let Ok(req) = parse_request(&head) else {
                continue;
            };
            let RangeRequest::Partial { start, end } =
                parse_range_header(req.header("range").unwrap_or(""), content.len() as u64)
            else {
                continue;
            };
            let stream = tls.get_mut();
            let _ = write!(
                stream,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{}\r\nConnection: close\r\n\r\n",
                end - start + 1,
                content.len()
            );
            let _ = stream.write_all(&content[start as usize..=end as usize]);
            stream.conn.send_close_notify();
            let _ = stream.flush();
        }
    });
    (addr, cert.to_vec(), handle)
}

#[tokio::test]
async fn https_with_a_private_ca_and_a_rejected_self_signed_cert() {
    let content = data(100_000);
    let (addr, cert, handle) = https_server(content.clone(), 2);
    let url = format!("https://{addr}/pkg.bin");
    let trusting = Origin::with_config(
        &url,
        OriginConfig {
            tls_roots: TlsRoots::Der(vec![cert]),
            ..config(1)
        },
    )
    .unwrap();
    assert_eq!(
        trusting.read_range(500, 20_000).await.unwrap(),
        content.slice(500..20_500)
    );

    // The default (webpki) roots do not trust a self-signed certificate: permanent error.
    let strict = origin(&url, 3);
    let e = strict.read_range(0, 10).await.unwrap_err();
    assert!(matches!(e, OriginError::Tls { .. }), "{e}");
    assert!(e.to_string().contains("certificate"), "{e}");
    tokio::task::spawn_blocking(move || handle.join().unwrap())
        .await
        .unwrap();
}
