//! Offices on the test bed, beside the test bed's HTTP and BitTorrent baselines on the
//! same topology (root only: network namespaces).
//!
//! ```sh
//! cargo bench -p branchline --bench offices -- [--topology four-offices.toml] \
//!     [--size-mib 64] [--repeat 3] [--no-baselines]
//! ```
//!
//! For each of Branchline (a deployment to every client), plain HTTP from the origin and
//! BitTorrent (aria2), `--repeat` runs on a fresh test bed each; printed as the median
//! and the [min–max] spread of the runs:
//! * per office: when its last client was done, next to the tree bound (the package over
//!   the slowest WAN link on the office's path to the Central Office, payload bytes only,
//!   with no LAN fill: a bound no system can beat);
//! * per WAN link: bytes of frames into the office over the link ÷ the package;
//! * what the origin sent ÷ the package (Branchline: HTTP bytes served; baselines: frames
//!   the origin host sent);
//! * Branchline only: the server's large-message requests per second per 1,000
//!   downloading clients during the deployment.
//!
//! First, as a reference, `--repeat` runs with one client in the Central Office and one
//! behind the first WAN link measure one copy's frames over a link (QUIC, UDP, IP and
//! Ethernet headers add about 5.5 % to the package); WAN bytes are then also printed
//! against one copy's frames, and the offices' times against the tree bound in frames.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use branchline_testbed::baseline::{self, DownloadOptions};
use branchline_testbed::{Direction, Testbed, Topology};
use serde_json::Value;

#[path = "../tests/common/bed.rs"]
mod bed;

use bed::*;

struct Run {
    /// Office -> seconds until its last client was done.
    offices: BTreeMap<String, f64>,
    /// Link -> inbound bytes ÷ package.
    links: BTreeMap<String, f64>,
    origin: f64,
    makespan: f64,
    requests_per_1000: Option<f64>,
}

fn branchline_run(topo: &Topology, size: usize) -> Run {
    let clients: Vec<String> = topo
        .host_names()
        .filter(|h| *h != "server" && *h != "origin")
        .map(str::to_owned)
        .collect();
    branchline_run_with(topo, size, clients)
}

/// One copy's frames over a WAN link: one client in the Central Office and one in the
/// first office behind a WAN link, so that link carries exactly one copy (÷ package).
fn one_copy(topo: &Topology, size: usize) -> Option<(String, f64)> {
    let central = topo.offices[0]
        .hosts
        .iter()
        .find(|h| *h != "server" && *h != "origin")?;
    let branch = topo.offices.iter().find(|o| o.wan.is_some())?;
    let clients = vec![central.clone(), branch.hosts.first()?.clone()];
    let run = branchline_run_with(topo, size, clients);
    run.links
        .get(&branch.name)
        .map(|r| (branch.name.clone(), *r))
}

fn branchline_run_with(topo: &Topology, size: usize, clients: Vec<String>) -> Run {
    let refs: Vec<&str> = clients.iter().map(String::as_str).collect();
    let d = Deployment::start(topo, &refs);
    d.wait_online(clients.len() as u64);
    let file = d.dir.path().join("topology.toml");
    std::fs::write(&file, branchline_topology(topo)).unwrap();
    d.connector_ok(&["topology", "apply", file.to_str().unwrap()]);
    let data = random(size);
    let (origin, url) = Origin::start(&d.tb, "origin", "pkg.bin", data.clone());
    let id = publish(&d, &data, &url);
    let health = |d: &Deployment| -> u64 {
        let v: Value = serde_json::from_str(&d.connector_ok(&["health", "--json"])).unwrap();
        v["large_requests"].as_u64().unwrap_or(0)
    };
    let requests_before = health(&d);
    let before = d.wan_in();
    let start = Instant::now();
    d.connector_ok(&["deploy", &id, "--to", "all"]);
    let mut done: BTreeMap<String, f64> = BTreeMap::new();
    let offices = topo
        .offices
        .iter()
        .filter(|o| o.hosts.iter().any(|h| clients.contains(h)))
        .count();
    loop {
        let out = d.connector(&["status", &id, "--json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            for o in v["offices"].as_array().cloned().unwrap_or_default() {
                let name = o["office"].as_str().unwrap_or("").to_owned();
                if o["clients_total"].as_u64() > Some(0)
                    && o["clients_done"] == o["clients_total"]
                    && !done.contains_key(&name)
                {
                    done.insert(name, start.elapsed().as_secs_f64());
                }
            }
        }
        if done.len() >= offices {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "not done: {done:?}\n{}",
            d.procs.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let makespan = start.elapsed().as_secs_f64();
    let after = d.wan_in();
    let requests = health(&d) - requests_before;
    let links = after
        .iter()
        .map(|(l, b)| {
            let b0 = before.iter().find(|(n, _)| n == l).map_or(0, |x| x.1);
            (l.clone(), (b - b0) as f64 / size as f64)
        })
        .collect();
    let served = origin.server.bytes_served_for("pkg.bin");
    Run {
        offices: done,
        links,
        origin: served as f64 / size as f64,
        makespan,
        requests_per_1000: Some(requests as f64 / makespan / clients.len() as f64 * 1000.0),
    }
}

fn baseline_run(topo: &Topology, size: usize, method: &str) -> Option<Run> {
    let tb = Testbed::up(topo).expect("test bed up");
    let opts = DownloadOptions {
        size,
        timeout: Duration::from_secs(600),
        ..DownloadOptions::default()
    };
    let report = match method {
        "http" => baseline::http::run(&tb, &opts),
        _ => baseline::bittorrent::run(&tb, &opts),
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{method}: {e}");
            return None;
        }
    };
    let mut offices: BTreeMap<String, f64> = BTreeMap::new();
    for c in &report.clients {
        let e = offices.entry(c.office.clone()).or_default();
        *e = e.max(c.seconds);
    }
    let links = report
        .wan
        .iter()
        .filter(|w| w.dir == Direction::Inbound)
        .map(|w| (w.link.clone(), w.packages))
        .collect();
    Some(Run {
        offices,
        links,
        origin: report.origin_tx_bytes as f64 / size as f64,
        makespan: report.makespan_seconds,
        requests_per_1000: None,
    })
}

/// Median and spread of `v`.
fn stat(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    format!("{median:.3} [{:.3}–{:.3}]", v[0], v[v.len() - 1])
}

/// The tree bound of each office: the package over the slowest WAN link on its path.
fn bounds(topo: &Topology, size: usize) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for o in &topo.offices {
        let mut slowest: Option<f64> = None;
        let mut cur = Some(o);
        while let Some(c) = cur {
            if let Some(r) = c.wan.as_ref().and_then(|w| w.rate_mbit) {
                slowest = Some(slowest.map_or(r, |s: f64| s.min(r)));
            }
            cur = c
                .parent
                .as_ref()
                .and_then(|p| topo.offices.iter().find(|x| &x.name == p));
        }
        if let Some(r) = slowest {
            out.insert(o.name.clone(), size as f64 * 8.0 / (r * 1e6));
        }
    }
    out
}

fn report(name: &str, runs: &[Run], bounds: &BTreeMap<String, f64>, copy: Option<f64>) {
    println!("\n== {name} ({} runs: median [min–max])", runs.len());
    if runs.is_empty() {
        println!("   no run completed");
        return;
    }
    let offices: Vec<String> = runs[0].offices.keys().cloned().collect();
    println!(
        "{:<12} {:>26} {:>10} {:>22}",
        "office", "done (s)", "bound (s)", "done ÷ bound"
    );
    for o in &offices {
        let times: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.offices.get(o).copied())
            .collect();
        let (b, ratio) = match bounds.get(o) {
            Some(b) => (
                format!("{b:.2}"),
                stat(times.iter().map(|t| t / b).collect()),
            ),
            None => ("LAN".into(), "-".into()),
        };
        println!("{o:<12} {:>26} {b:>10} {ratio:>22}", stat(times.clone()));
    }
    let links: Vec<String> = runs[0].links.keys().cloned().collect();
    for l in &links {
        let v: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.links.get(l).copied())
            .collect();
        let per_copy = copy
            .map(|c| {
                format!(
                    "  = {} x one copy's frames",
                    stat(v.iter().map(|x| x / c).collect())
                )
            })
            .unwrap_or_default();
        println!(
            "WAN into {l:<12} {:>26} x the package (frames){per_copy}",
            stat(v)
        );
    }
    println!(
        "origin sent            {:>26} x the package",
        stat(runs.iter().map(|r| r.origin).collect())
    );
    println!(
        "last client done       {:>26} s",
        stat(runs.iter().map(|r| r.makespan).collect())
    );
    let req: Vec<f64> = runs.iter().filter_map(|r| r.requests_per_1000).collect();
    if !req.is_empty() {
        println!(
            "server requests        {:>26} per s per 1,000 downloading clients",
            stat(req)
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if not_root() {
        eprintln!("offices bench: needs root (network namespaces); skipped");
        return;
    }
    let topo_name = value("--topology").unwrap_or_else(|| "four-offices.toml".into());
    let size_mib: usize = value("--size-mib")
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let repeat: usize = value("--repeat").and_then(|v| v.parse().ok()).unwrap_or(3);
    let baselines = !args.iter().any(|a| a == "--no-baselines");
    let topo = topology(&topo_name);
    let size = size_mib << 20;
    println!("offices bench: {topo_name}, {size_mib} MiB, {repeat} runs each");
    let b = bounds(&topo, size);
    let mut copies = Vec::new();
    for i in 0..repeat {
        eprintln!("run {}/{repeat}: one copy's frames", i + 1);
        copies.extend(one_copy(&topo, size));
    }
    let copy = (!copies.is_empty()).then(|| {
        let mut v: Vec<f64> = copies.iter().map(|(_, r)| *r).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    if let Some((link, _)) = copies.first() {
        println!(
            "one copy's frames over {link}'s link: {} x the package (the reference for WAN bytes)",
            stat(copies.iter().map(|(_, r)| *r).collect())
        );
    }
    // The tree bound in frames: one copy's frames over the slowest link on the path.
    let frames_bound: BTreeMap<String, f64> = b
        .iter()
        .map(|(o, t)| (o.clone(), t * copy.unwrap_or(1.0)))
        .collect();
    let mut ours = Vec::new();
    let mut http = Vec::new();
    let mut bt = Vec::new();
    for i in 0..repeat {
        eprintln!("run {}/{repeat}: branchline", i + 1);
        ours.push(branchline_run(&topo, size));
        if baselines {
            eprintln!("run {}/{repeat}: http", i + 1);
            http.extend(baseline_run(&topo, size, "http"));
            eprintln!("run {}/{repeat}: bittorrent (aria2)", i + 1);
            bt.extend(baseline_run(&topo, size, "bittorrent"));
        }
    }
    report("Branchline (deploy --to all)", &ours, &b, copy);
    if copy.is_some() {
        println!(
            "\n(the same runs against the tree bound in frames: one copy's frames over the slowest link)"
        );
        report(
            "Branchline (deploy --to all), frames bound",
            &ours,
            &frames_bound,
            copy,
        );
    }
    if baselines {
        report("HTTP from the origin", &http, &b, copy);
        report("BitTorrent (aria2)", &bt, &b, copy);
    }
}

fn not_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u != "0"))
        })
        .unwrap_or(true)
}
