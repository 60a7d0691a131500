//! Network-namespace plumbing: running `ip`/`tc`/`nft`, entering a namespace
//! on a thread, listing and removing namespaces, killing what runs in them.
//!
//! Named namespaces are the ones `ip netns add` creates: a bind mount under
//! `/run/netns/NAME`. A thread enters one with `setns(2)`; sockets it creates
//! afterwards belong to that namespace for their whole life, wherever they
//! are used later.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For benchmarks and tools: returns true when running as root; otherwise prints
/// a clear skip message (naming `what`) on stderr and returns false. Tests do not
/// use it: a root-only test is `#[ignore = "needs root: ..."]` instead, so it is
/// never reported as passed when it did not run.
///
/// ```no_run
/// if !branchline_testbed::require_root("two_offices_come_up") { return; }
/// ```
pub fn require_root(what: &str) -> bool {
    if is_root() {
        true
    } else {
        // Straight to the stderr handle, not eprintln!: the test harness
        // captures the macros' output of passing tests, and a skip must
        // never be silent.
        let _ = writeln!(
            std::io::stderr(),
            "skipping {what}: needs root for network namespaces (run the tests as root, as CI does)"
        );
        false
    }
}

/// Path of a named namespace.
pub fn netns_path(name: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(name)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn package_of(program: &OsStr) -> &'static str {
    match program.to_str() {
        Some("nft") => "nftables",
        Some("aria2c") => "aria2",
        _ => "iproute2",
    }
}

/// Runs a command to completion; fails with its stderr unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    run_with_input(cmd, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::MissingProgram {
                program: cmd.get_program().to_string_lossy().into_owned(),
                package: package_of(cmd.get_program()).into(),
                source: e,
            }
        } else {
            Error::io(format!("starting `{desc}`"), e)
        }
    })?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("stdin was piped");
        // A command that exits early closes its stdin; its status tells why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for `{desc}`"), e))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(text) = input {
            stderr.push_str(&format!(
                " [input was: {}]",
                text.trim().replace('\n', "; ")
            ));
        }
        return Err(Error::Command {
            command: desc,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(out)
}

/// Runs `ip [-n NS] -batch -` with one command per line.
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    run_with_input(&mut cmd, Some(&(lines.join("\n") + "\n")))?;
    Ok(())
}

/// Runs `tc -n NS -batch -` with one command per line.
pub fn tc_batch(ns: &str, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("tc");
    cmd.args(["-n", ns, "-batch", "-"]);
    run_with_input(&mut cmd, Some(&(lines.join("\n") + "\n")))?;
    Ok(())
}

/// Finds an executable on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Loads an nftables ruleset inside a namespace (`ip netns exec NS nft -f -`).
pub fn nft_load(ns: &str, ruleset: &str) -> Result<()> {
    if find_program("nft").is_none() {
        return Err(Error::MissingProgram {
            program: "nft".into(),
            package: "nftables".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft", "-f", "-"]);
    run_with_input(&mut cmd, Some(ruleset))?;
    Ok(())
}

/// Moves the calling thread into the named network namespace.
///
/// Only the calling thread moves; threads it creates afterwards inherit
/// the namespace. Use it on a thread you own (see [`in_netns`]).
pub fn enter_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    let f = File::open(&path)
        .map_err(|e| Error::io(format!("opening network namespace {}", path.display()), e))?;
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::last_os(format!("entering network namespace {name}")));
    }
    Ok(())
}

/// Runs `f` on a fresh OS thread inside network namespace `name` and
/// returns its result. Sockets `f` creates live in that namespace. A panic
/// in `f` is propagated to the caller.
pub fn in_netns<T, F>(name: &str, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name(format!("netns-{}", short(name)))
            .spawn_scoped(s, move || -> Result<T> {
                enter_netns(name)?;
                Ok(f())
            })
            .map_err(|e| Error::io("spawning a namespace thread", e))?;
        match h.join() {
            Ok(r) => r,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// Spawns a detached OS thread inside namespace `name` running `f`.
pub fn spawn_in_netns<T, F>(name: &str, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns = name.to_string();
    std::thread::Builder::new()
        .name(format!("netns-{}", short(name)))
        .spawn(move || -> Result<T> {
            enter_netns(&ns)?;
            Ok(f())
        })
        .map_err(|e| Error::io("spawning a namespace thread", e))
}

fn short(name: &str) -> &str {
    // Thread names are cut at 15 bytes by the kernel; keep the tail.
    let start = name.len().saturating_sub(9);
    name.get(start..).unwrap_or(name)
}

/// Writes a sysctl under `/proc/sys/` for namespace `ns`, e.g.
/// `("net/ipv4/ip_forward", "1")`.
pub fn write_sysctls(ns: &str, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        for (key, value) in settings {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value)
                .map_err(|e| Error::io(format!("setting {path} = {value} in namespace {ns}"), e))?;
        }
        Ok(())
    })?
}

/// Names of all named network namespaces.
pub fn list_netns() -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("listing {NETNS_DIR}"), e)),
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    Ok(v)
}

/// Whether a named namespace exists.
pub fn netns_exists(name: &str) -> bool {
    netns_path(name).exists()
}

/// Process ids whose (main thread's) network namespace is `name`, other
/// than this process.
pub fn netns_pids(name: &str) -> Vec<i32> {
    let Ok(target) = std::fs::metadata(netns_path(name)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == target.ino() && m.dev() == target.dev())
                .unwrap_or(false)
        })
        .collect()
}

/// Kills (SIGKILL) every process in namespace `name` and waits briefly for
/// them to go. Returns how many were signalled.
pub fn kill_netns_processes(name: &str) -> usize {
    let mut total = 0;
    for _round in 0..5 {
        let pids = netns_pids(name);
        if pids.is_empty() {
            break;
        }
        for &pid in &pids {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        total += pids.len();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    total
}

/// Deletes named namespaces after killing their processes. Errors for
/// individual namespaces are collected, not fatal.
pub fn delete_netns(names: &[String]) -> Result<()> {
    for n in names {
        kill_netns_processes(n);
    }
    let existing: Vec<&String> = names.iter().filter(|n| netns_exists(n)).collect();
    if existing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = existing.iter().map(|n| format!("netns del {n}")).collect();
    let mut cmd = Command::new("ip");
    cmd.args(["-force", "-batch", "-"]);
    let res = run_with_input(&mut cmd, Some(&(lines.join("\n") + "\n")));
    // What counts is that they are gone: another process reaping the same
    // stale run may have removed some first, failing our `netns del`.
    let left: Vec<&String> = names.iter().filter(|n| netns_exists(n)).collect();
    if left.is_empty() {
        return Ok(());
    }
    let mut problems = vec![format!("namespaces still present: {left:?}")];
    if let Err(e) = res {
        problems.push(e.to_string());
    }
    Err(Error::Teardown(problems.join("; ")))
}

/// Whether a process with this pid exists and has not exited (a zombie
/// waiting to be reaped by its parent counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // /proc/PID/stat: "pid (comm) S ..."; comm may contain spaces or ')'.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}
