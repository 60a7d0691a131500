//! `branchline get --timeout`: gives up with a clear message when the daemon does not
//! finish in time. The daemon here is a stand-in on the socket that reports progress and
//! never finishes, so the test needs no server and no network.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use branchline_client::local::{LocalReply, ProgressLine, SOCKET};

const BIN: &str = env!("CARGO_BIN_EXE_branchline");

#[test]
fn get_gives_up_after_its_timeout_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join(SOCKET)).unwrap();
    let daemon = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut request = String::new();
        BufReader::new(&stream).read_line(&mut request).unwrap();
        let mut w = &stream;
        // A download that stalls at 1000 of 4096 bytes; the connection stays open.
        let progress = LocalReply::Progress(ProgressLine {
            name: "app".into(),
            size: 4096,
            have_bytes: 1000,
            sources: 1,
            ..ProgressLine::default()
        });
        let _ = writeln!(w, "{}", serde_json::to_string(&progress).unwrap());
        std::thread::sleep(Duration::from_secs(3));
        request
    });
    let start = Instant::now();
    let out = Command::new(BIN)
        .args(["get", "app@1", "--json", "--timeout", "1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("gave up on app@1 after 1 s (--timeout)"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(3), "get returned after {took:?}");
    assert!(
        stderr.contains("(1000 of 4096 bytes verified so far)"),
        "{stderr}"
    );
    assert!(daemon.join().unwrap().contains("app@1"));
}
