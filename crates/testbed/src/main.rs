//! `branchline-testbed`: bring a topology up, run commands in its hosts,
//! read its WAN counters, tear it down, and run the baselines.
//!
//! `up` stays in the foreground and keeps the test bed (and its delay
//! relays) alive until Ctrl-C, SIGTERM or `branchline-testbed down`; it
//! saves the run's names in `/run/branchline-testbed/RUN.json` so that
//! `exec`, `counters` and `down` in other terminals find it. At teardown it
//! prints the final WAN counters and saves them as `RUN.final.json`, which
//! `counters --run RUN` reads once the run is down.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use branchline_testbed::baseline::tcp::{TcpOptions, Until, tcp_bulk};
use branchline_testbed::baseline::{DownloadOptions, bittorrent, http};
use branchline_testbed::{
    Direction, Error, Result, RunState, Testbed, Topology, WanLink, netns, reap_stale, remove_run,
    teardown_all_live,
};
use clap::{Parser, Subcommand};

/// Where `up` saves the state of its run.
const STATE_DIR: &str = "/run/branchline-testbed";

#[derive(Parser)]
#[command(
    name = "branchline-testbed",
    version,
    about = "Offices, subnets and WAN links on one machine (network namespaces), with link counters, delay, loss and baselines"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring a topology up and keep it up until interrupted (Ctrl-C,
    /// SIGTERM, SIGHUP), `down`, or until the process that started it exits
    /// (the parent's thread, for multi-threaded parents).
    Up {
        /// Topology file (TOML).
        topology: PathBuf,
    },
    /// Run a command inside a host of a running test bed.
    Exec {
        /// Run name (default: the only run that is up).
        #[arg(long)]
        run: Option<String>,
        /// Host name.
        host: String,
        /// Command and arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the bytes and frames that crossed each WAN link.
    Counters {
        /// Run name (default: the only run that is up).
        #[arg(long)]
        run: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List runs that are up, with hosts and addresses.
    Status,
    /// Tear a run down (default: the only run that is up); with --stale,
    /// remove the leftovers of runs whose process is gone.
    Down {
        /// Run name.
        run: Option<String>,
        /// Remove runs whose owning process no longer exists.
        #[arg(long)]
        stale: bool,
    },
    /// Measure a baseline on a fresh test bed and print its figures.
    Baseline {
        #[command(subcommand)]
        which: Baseline,
    },
    /// Run a delay relay between two interfaces (used for debugging; the
    /// test bed runs its relays as threads).
    #[command(hide = true)]
    Relay {
        /// Network namespace of the interfaces (default: the current one).
        #[arg(long)]
        netns: Option<String>,
        /// First interface.
        #[arg(long)]
        a: String,
        /// Second interface.
        #[arg(long)]
        b: String,
        /// One-way delay in milliseconds.
        #[arg(long)]
        delay_ms: f64,
    },
}

#[derive(Subcommand)]
enum Baseline {
    /// A plain TCP bulk transfer between two hosts.
    Tcp {
        /// Topology file (default: two offices, 20 Mbit/s, 100 ms queue,
        /// 20 ms delay each way; hosts server, origin | c1, c2, c3).
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Sending host.
        #[arg(long, default_value = "origin")]
        from: String,
        /// Receiving host.
        #[arg(long, default_value = "c1")]
        to: String,
        /// Bytes to send.
        #[arg(long, default_value_t = 8 << 20)]
        bytes: u64,
        /// Send for this many seconds instead of a byte count.
        #[arg(long)]
        seconds: Option<f64>,
        /// Congestion control (cubic, bbr, reno).
        #[arg(long)]
        cc: Option<String>,
    },
    /// Every client downloads the package over HTTP from the origin.
    Http {
        #[command(flatten)]
        dl: DownloadArgs,
    },
    /// A BitTorrent swarm (aria2) of the same package.
    Bittorrent {
        #[command(flatten)]
        dl: DownloadArgs,
    },
}

#[derive(clap::Args)]
struct DownloadArgs {
    /// Topology file (default: see `baseline tcp --help`).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Host holding the package.
    #[arg(long, default_value = "origin")]
    origin: String,
    /// Package size in MiB.
    #[arg(long, default_value_t = 8)]
    size_mib: usize,
    /// Client hosts (default: all but the origin and `server`).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn default_topology() -> Topology {
    Topology::two_offices(
        &["server", "origin"],
        &["c1", "c2", "c3"],
        WanLink {
            rate_mbit: Some(20.0),
            queue_ms: Some(100.0),
            delay_ms: 20.0,
            ..Default::default()
        },
    )
}

fn load_topology(p: &Option<PathBuf>) -> Result<Topology> {
    match p {
        Some(p) => Topology::from_file(p),
        None => Ok(default_topology()),
    }
}

fn state_path(run: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{run}.json"))
}

/// Runs whose state file exists and whose `up` process lives.
fn live_states() -> Vec<RunState> {
    let Ok(rd) = std::fs::read_dir(STATE_DIR) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().ends_with(".final.json") {
            // Final counters are kept for a day.
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(24 * 3600));
            if old {
                let _ = std::fs::remove_file(e.path());
            }
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        match serde_json::from_str::<RunState>(&text) {
            Ok(s) if netns::pid_alive(s.pid as i32) && netns::netns_exists(&s.router_netns) => {
                v.push(s)
            }
            // A dead run's state: remove it.
            _ => {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    v.sort_by(|a, b| a.run.cmp(&b.run));
    v
}

fn pick_run(run: &Option<String>) -> Result<RunState> {
    let mut live = live_states();
    match run {
        Some(r) => live.into_iter().find(|s| &s.run == r).ok_or_else(|| {
            Error::Topology(format!(
                "no run {r:?} is up; see `branchline-testbed status`"
            ))
        }),
        None => match live.len() {
            1 => Ok(live.remove(0)),
            0 => Err(Error::Topology(
                "no test bed is up; start one with `branchline-testbed up FILE.toml`".into(),
            )),
            _ => Err(Error::Topology(format!(
                "several runs are up ({}); choose one with --run",
                live.iter()
                    .map(|s| s.run.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP and SIGQUIT in every thread and handles
/// them on one: tear down every run of this process, then exit. (Children
/// inherit the blocked mask; the test bed kills its children with SIGKILL.)
fn install_signal_teardown() {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask affects
    // only this (main) thread, before any other thread exists, so every
    // later thread inherits the mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: waits on a valid, initialised set.
        unsafe { libc::sigwait(&set, &mut sig) };
        let runs = teardown_all_live();
        // Reporting must not keep the process from exiting (stdout may be a
        // closed pipe by now).
        let _ = std::panic::catch_unwind(|| {
            for f in &runs {
                let _ = std::fs::remove_file(state_path(&f.state.run));
                save_final(&f.state.run, &f.counters);
                let _ = writeln!(
                    std::io::stderr(),
                    "branchline-testbed: signal {sig}: tore down {}",
                    f.state.run
                );
                print_counters(&f.counters);
            }
        });
        std::process::exit(128 + sig);
    });
}

/// Saves a run's last counters so `counters --run RUN` works after it.
fn save_final(run: &str, counters: &[branchline_testbed::LinkCounters]) {
    let _ = std::fs::create_dir_all(STATE_DIR);
    let json = serde_json::to_string_pretty(counters).expect("counters serialise");
    let _ = std::fs::write(final_path(run), json);
}

fn final_path(run: &str) -> PathBuf {
    PathBuf::from(STATE_DIR).join(format!("{run}.final.json"))
}

fn print_counters(c: &[branchline_testbed::LinkCounters]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:<12} {:<9} {:>14} {:>10}",
        "link", "direction", "bytes", "frames"
    );
    for x in c {
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:>14} {:>10}",
            x.link,
            x.dir.to_string(),
            x.bytes,
            x.packets
        );
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// For `exec`, like system(3): Ctrl-C and Ctrl-\ reach the command in the
/// host (a handler, unlike SIG_IGN, is reset to the default across exec),
/// while this process keeps waiting for it and passes its status on.
fn pass_interrupts_to_child() {
    for sig in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: installs a handler that does nothing (async-signal-safe);
        // sigaction is plain data, zeroed then filled in.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn print_state(s: &RunState) {
    println!("run {} (pid {})", s.run, s.pid);
    for (oi, o) in s.topology.offices.iter().enumerate() {
        let link = match &o.wan {
            None => match &o.parent {
                Some(p) => format!("LAN link to {p}'s router"),
                None => "LAN link to the router".to_string(),
            },
            Some(w) => {
                let dir = |d: Direction| match (w.rate_bps_dir(d), w.queue_limit_bytes_dir(d)) {
                    (Some(r), Some(q)) => format!("{} Mbit/s, queue {q} bytes", r as f64 / 1e6),
                    _ => "unshaped".to_string(),
                };
                format!(
                    "WAN in {}, out {}, delay {} ms, loss {} %",
                    dir(Direction::Inbound),
                    dir(Direction::Outbound),
                    w.delay_ms,
                    w.loss_percent
                )
            }
        };
        match &o.parent {
            Some(p) => println!("  office {} {} behind {p} ({link})", o.name, o.subnet),
            None => println!("  office {} {} ({link})", o.name, o.subnet),
        }
        if let (Some(ns), Some(addr)) = (
            s.office_routers.get(&o.name),
            s.topology.office_router_addr(oi),
        ) {
            println!("    router {addr:<20} netns {ns} (to the offices behind it)");
        }
        for h in &o.hosts {
            if let Ok(hs) = s.host(h) {
                println!("    host {:<12} {:<15} netns {}", h, hs.addr, hs.netns);
            }
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Up { topology } => {
            let topo = Topology::from_file(&topology)?;
            // Tear down when whoever started us goes away (a test that
            // died, a closed terminal): SIGTERM, handled like Ctrl-C.
            // SAFETY: prctl with an integer argument; getppid cannot fail.
            unsafe {
                let parent = libc::getppid();
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                if libc::getppid() != parent {
                    libc::raise(libc::SIGTERM);
                }
            }
            let tb = Testbed::up(&topo)?;
            std::fs::create_dir_all(STATE_DIR)
                .map_err(|e| Error::io(format!("creating {STATE_DIR}"), e))?;
            let json = serde_json::to_string_pretty(tb.state()).expect("state serialises");
            std::fs::write(state_path(tb.run_name()), json)
                .map_err(|e| Error::io("writing the run state", e))?;
            print_state(tb.state());
            println!(
                "ready: `branchline-testbed exec HOST -- CMD`, `counters`, `down`; Ctrl-C tears down"
            );
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if !netns::netns_exists(&tb.state().router_netns) {
                    let _ = writeln!(
                        std::io::stderr(),
                        "run {} was removed from outside; exiting",
                        tb.run_name()
                    );
                    let _ = std::fs::remove_file(state_path(tb.run_name()));
                    return Ok(ExitCode::FAILURE);
                }
                if !tb.relays_running() {
                    eprintln!("a delay relay stopped; tearing down");
                    let run = tb.run_name().to_string();
                    let r = tb.finish();
                    let _ = std::fs::remove_file(state_path(&run));
                    save_final(&run, r.as_deref().unwrap_or_default());
                    r?;
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Cmd::Exec { run, host, command } => {
            let st = pick_run(&run)?;
            let mut c = st.command(&host, &command[0])?;
            let status = c
                .args(&command[1..])
                .status()
                .map_err(|e| Error::io(format!("running {command:?} in {host}"), e))?;
            // Like a shell: a command killed by signal N exits 128 + N.
            let code = status.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)
            });
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Counters { run, json } => {
            let c = match (pick_run(&run), &run) {
                (Ok(st), _) => st.wan_counters()?,
                // A run that is down: its last counters, saved at teardown.
                (Err(e), Some(r)) => match std::fs::read_to_string(final_path(r)) {
                    Ok(text) => serde_json::from_str(&text).map_err(|_| e)?,
                    Err(_) => return Err(e),
                },
                (Err(e), None) => return Err(e),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&c).expect("serialises"));
            } else {
                print_counters(&c);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => {
            let live = live_states();
            if live.is_empty() {
                println!("no test bed is up");
            }
            for s in &live {
                print_state(s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { run, stale } => {
            if stale {
                let runs = reap_stale()?;
                println!("removed {} stale run(s) {runs:?}", runs.len());
                if run.is_none() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            let name = match &run {
                Some(r) => r.clone(),
                None => pick_run(&None)?.run,
            };
            // Ask the owning `up` to tear down itself (it stops its relays).
            if let Ok(text) = std::fs::read_to_string(state_path(&name))
                && let Ok(s) = serde_json::from_str::<RunState>(&text)
                && s.pid != std::process::id()
                && netns::pid_alive(s.pid as i32)
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(s.pid as i32, libc::SIGTERM) };
                for _ in 0..100 {
                    if !netns::pid_alive(s.pid as i32) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let n = remove_run(&name)?;
            let _ = std::fs::remove_file(state_path(&name));
            println!("run {name} is down ({n} namespaces were left to remove)");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Relay {
            netns,
            a,
            b,
            delay_ms,
        } => {
            if !(delay_ms.is_finite() && (0.0..=10_000.0).contains(&delay_ms)) {
                return Err(Error::Topology(format!(
                    "--delay-ms {delay_ms} is out of range 0 to 10000"
                )));
            }
            let relay = branchline_testbed::Relay::start(
                netns.as_deref(),
                &a,
                &b,
                Duration::from_secs_f64(delay_ms / 1000.0),
            )?;
            eprintln!("relay {} running; Ctrl-C stops it", relay.label());
            while relay.is_running() {
                std::thread::sleep(Duration::from_millis(200));
            }
            relay.stop()?;
            Ok(ExitCode::FAILURE)
        }
        Cmd::Baseline { which } => baseline(which),
    }
}

fn baseline(which: Baseline) -> Result<ExitCode> {
    match which {
        Baseline::Tcp {
            topology,
            from,
            to,
            bytes,
            seconds,
            cc,
        } => {
            let tb = Testbed::up(&load_topology(&topology)?)?;
            let opts = TcpOptions {
                until: match seconds {
                    Some(s) => Until::Duration(Duration::from_secs_f64(s.clamp(0.1, 600.0))),
                    None => Until::Bytes(bytes),
                },
                congestion: cc,
                ..Default::default()
            };
            let before = tb.wan_counters()?;
            let r = tcp_bulk(&tb, &from, &to, &opts)?;
            let after = tb.wan_counters()?;
            println!(
                "tcp {from} -> {to} ({}): {} bytes in {:.2} s: goodput {:.2} Mbit/s, after warm-up {:.2} Mbit/s; \
                 min RTT {:.1} ms, retransmitted segments {}",
                r.congestion,
                r.bytes,
                r.elapsed.as_secs_f64(),
                r.goodput_mbit,
                r.steady_mbit,
                r.sender.min_rtt as f64 / 1000.0,
                r.sender.total_retrans
            );
            for a in &after {
                let b = branchline_testbed::LinkCounters::find(&before, &a.link, a.dir)
                    .map_or(0, |b| b.bytes);
                println!(
                    "  WAN {:<10} {:<8} {:>12} bytes",
                    a.link,
                    a.dir.to_string(),
                    a.bytes - b
                );
            }
            println!(
                "  expected on the wire in the data direction: {} bytes",
                r.wire_bytes_data_direction()
            );
            tb.down()?;
            Ok(ExitCode::SUCCESS)
        }
        Baseline::Http { dl } => download(dl, false),
        Baseline::Bittorrent { dl } => download(dl, true),
    }
}

fn download(dl: DownloadArgs, torrent: bool) -> Result<ExitCode> {
    let tb = Testbed::up(&load_topology(&dl.topology)?)?;
    let opts = DownloadOptions {
        origin: dl.origin,
        clients: dl.clients,
        size: dl.size_mib.clamp(1, 4096) << 20,
        ..Default::default()
    };
    let r = if torrent {
        bittorrent::run(&tb, &opts)?
    } else {
        http::run(&tb, &opts)?
    };
    if dl.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialises"));
    } else {
        println!("{r}");
    }
    tb.down()?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !netns::is_root() {
        eprintln!("branchline-testbed: {}", Error::NotRoot);
        return ExitCode::from(2);
    }
    if matches!(cli.cmd, Cmd::Exec { .. }) {
        pass_interrupts_to_child();
    } else {
        install_signal_teardown();
    }
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("branchline-testbed: {e}");
            ExitCode::FAILURE
        }
    }
}
