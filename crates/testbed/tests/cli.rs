//! The command line against real namespaces (root only: ignored unless run with
//! `-- --include-ignored`): `up` in the
//! background, `exec`, `counters`, and teardown by SIGINT and by `down`.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use branchline_testbed::netns;

const BIN: &str = env!("CARGO_BIN_EXE_branchline-testbed");

const TOPO: &str = r#"
[[office]]
name = "central"
subnet = "198.18.1.0/24"
hosts = ["server", "origin"]

[[office]]
name = "branch"
subnet = "198.18.2.0/24"
hosts = ["c1", "c2"]
wan = { rate_mbit = 20, queue_ms = 100, delay_ms = 10 }
"#;

fn topo_file(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("bl-cli-{}-{tag}.toml", std::process::id()));
    std::fs::write(&p, TOPO).unwrap();
    p
}

/// Kills `up` (SIGTERM: it tears down) if a test fails while it runs.
struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// Starts `up` and returns it with its run name once it printed "ready".
fn start_up(topo: &PathBuf) -> (Up, String) {
    let mut up = Command::new(BIN)
        .arg("up")
        .arg(topo)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(up.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let run = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(run.starts_with("bl"), "first line: {first}");
    for l in lines.by_ref() {
        if l.unwrap().starts_with("ready") {
            break;
        }
    }
    // Keep draining stdout so `up` never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Up(up), run)
}

fn run_netns(run: &str) -> Vec<String> {
    let prefix = format!("{run}-");
    netns::list_netns()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

fn wait_exit(c: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + limit;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > end {
            let _ = c.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root: network namespaces"]
fn cli_up_exec_counters_then_interrupt_tears_down() {
    let topo = topo_file("int");
    let (mut up, run) = start_up(&topo);
    assert_eq!(run_netns(&run).len(), 6);

    let out = Command::new(BIN)
        .args([
            "exec", "--run", &run, "c1", "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("198.18.2.2/24"));
    let st = Command::new(BIN)
        .args(["exec", "--run", &run, "c2", "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(3), "exec passes the exit code through");

    // Ctrl-C at a terminal reaches the whole foreground process group: the
    // command in the host stops, `exec` passes that on and the run stays up.
    let mut ex = Command::new(BIN)
        .args(["exec", "--run", &run, "c1", "--", "sleep", "30"])
        .process_group(0)
        .spawn()
        .unwrap();
    // Signal only once the command runs in the host.
    let host_ns = format!("{run}-h-c1");
    let end = Instant::now() + Duration::from_secs(10);
    while netns::netns_pids(&host_ns).is_empty() {
        assert!(Instant::now() < end, "sleep never started in c1");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling the process group we just created.
    unsafe { libc::kill(-(ex.id() as i32), libc::SIGINT) };
    let st = wait_exit(&mut ex, Duration::from_secs(5));
    assert_eq!(st.code(), Some(128 + libc::SIGINT));
    assert_eq!(run_netns(&run).len(), 6);

    let out = Command::new(BIN)
        .args(["counters", "--run", &run, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        2,
        "branch inbound and outbound: {v}"
    );

    // SAFETY: signalling our own child.
    unsafe { libc::kill(up.0.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut up.0, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
    assert!(
        run_netns(&run).is_empty(),
        "left behind: {:?}",
        run_netns(&run)
    );
    assert!(!PathBuf::from(format!("/run/branchline-testbed/{run}.json")).exists());
    // The final counters stay readable after the run.
    let out = Command::new(BIN)
        .args(["counters", "--run", &run, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2);
    let _ = std::fs::remove_file(format!("/run/branchline-testbed/{run}.final.json"));
    let _ = std::fs::remove_file(topo);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn cli_down_stops_a_running_up() {
    let topo = topo_file("down");
    let (mut up, run) = start_up(&topo);
    let out = Command::new(BIN).args(["down", &run]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = wait_exit(&mut up.0, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(run_netns(&run).is_empty());
    let _ = std::fs::remove_file(format!("/run/branchline-testbed/{run}.final.json"));
    let _ = std::fs::remove_file(topo);
}

#[test]
#[ignore = "needs root: network namespaces"]
fn cli_rejects_a_bad_topology_clearly() {
    let p = std::env::temp_dir().join(format!("bl-cli-{}-bad.toml", std::process::id()));
    std::fs::write(&p, TOPO.replace("198.18.2.0/24", "10.1.2.0/24")).unwrap();
    let out = Command::new(BIN).arg("up").arg(&p).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("198.18.0.0/15"), "{err}");
    let _ = std::fs::remove_file(p);
}
