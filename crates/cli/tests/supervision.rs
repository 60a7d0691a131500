//! Supervision (issue #10): a serving task that stops takes the process down with a
//! non-zero exit and a message naming the task, so the service manager (packaging's
//! systemd units, `Restart=on-failure`) restarts it instead of leaving it up but deaf.
//! Real processes on loopback. The task is failed with the debug-build-only
//! `BRANCHLINE_TEST_FAIL_TASK` (release builds cannot reach it; see
//! `branchline_transport::supervise`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// Runs `branchline args` with the task `task` failing; returns (exit code, output).
fn run_failing(bed: &Bed, task: &str, args: &[&str]) -> (Option<i32>, String) {
    let log = bed.dir.path().join(format!("{task}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .args(args)
        .env("BRANCHLINE_LOG", "info")
        .env("BRANCHLINE_TEST_FAIL_TASK", task)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{task}: the process stayed up\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

#[test]
fn a_server_whose_receive_loop_dies_exits_non_zero_naming_it() {
    let bed = Bed::new();
    let data = bed.path("server");
    let ip = bed.ip(1);
    let (code, log) = run_failing(
        &bed,
        "server.small_request",
        &["server", "--data-dir", &data, "--bind", &ip],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("serving task server.small_request stopped")
            && log.contains("service manager restarts"),
        "{log}"
    );
}

#[test]
fn a_client_whose_serving_task_dies_exits_non_zero_naming_it() {
    let bed = Bed::new();
    let server = bed.server();
    let key = bed.path("server/deployment.key");
    wait_for("the server", Duration::from_secs(20), &[&server], || {
        bed.health(&key)
    });
    let data = bed.path("client1");
    let (ip, server_ip) = (bed.ip(11), bed.ip(1));
    let (code, log) = run_failing(
        &bed,
        "client.local_socket",
        &[
            "client",
            "--server",
            &server_ip,
            "--key-file",
            &key,
            "--data-dir",
            &data,
            "--bind",
            &ip,
        ],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("serving task client.local_socket stopped"),
        "{log}"
    );
    // The server itself is unaffected.
    assert!(bed.health(&key).is_some());
}
