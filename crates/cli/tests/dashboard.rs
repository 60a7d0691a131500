//! The admin endpoint in a real browser: a server, five clients in three offices (the
//! Central Office and two branch offices, each a /24 of 127.0.0.0/8) and a finished
//! deployment, all real processes; headless Debian chromium driven over WebDriver
//! (chromedriver). The page must show what `/api` and `connector ... --json` say; a live
//! WAN transfer appears and goes; `/metrics` passes `promtool check metrics` and its
//! counters move during a download; nothing is served without the token.
//!
//! Screenshots of each view are saved under `target/tmp/dashboard/`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::*;

const SMALL: usize = 2 << 20;
const LARGE: usize = 8 << 20;
/// East's WAN ceiling: the large package takes several seconds over its link.
const EAST_CEILING: u64 = 1_200_000;

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET `path` on the admin endpoint: (status, body).
fn admin_get(base: &str, token: Option<&str>, path: &str) -> (u16, String) {
    let mut req = http().get(&format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    (status, r.body_mut().read_to_string().unwrap_or_default())
}

fn api(base: &str, token: &str, path: &str) -> Value {
    let (status, body) = admin_get(base, Some(token), path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn connector_json(bed: &Bed, key: &str, args: &[&str]) -> Value {
    let out = bed.connector(key, args);
    assert!(
        out.status.success(),
        "connector {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn publish(bed: &Bed, key: &str, file: &Path, name: &str) -> String {
    let v = connector_json(
        bed,
        key,
        &["publish", file.to_str().unwrap(), "--name", name, "--json"],
    );
    v["content_id"].as_str().unwrap().to_owned()
}

/// Waits until every targeted client of `content` holds it and the status counts every
/// client's bytes.
fn wait_done(bed: &Bed, key: &str, content: &str, clients: u64, size: usize, procs: &[&Proc]) {
    wait_for(
        &format!("{content} on {clients} clients"),
        Duration::from_secs(180),
        procs,
        || {
            let out = bed.connector(key, &["status", content, "--json"]);
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            let offices = v["offices"].as_array()?;
            let done: u64 = offices
                .iter()
                .map(|o| o["clients_done"].as_u64().unwrap_or(0))
                .sum();
            let bytes: u64 = offices
                .iter()
                .map(|o| {
                    ["bytes_origin", "bytes_server", "bytes_wan_in", "bytes_lan"]
                        .iter()
                        .map(|k| o[*k].as_u64().unwrap_or(0))
                        .sum::<u64>()
                })
                .sum();
            (done == clients && bytes >= clients * size as u64).then_some(())
        },
    );
}

/// The value of one sample line of a Prometheus text scrape.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in the scrape:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/apt-packages.txt lists it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn save(dir: &Path, name: &str, png: &[u8]) -> PathBuf {
    assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
    let p = dir.join(name);
    std::fs::write(&p, png).unwrap();
    println!("screenshot: {}", p.display());
    p
}

/// The offices as the page shows them: (name, parent, online, total).
const PAGE_OFFICES: &str = "return [...document.querySelectorAll('.office[data-office]')].map(e => [e.dataset.office, e.dataset.parent, +e.dataset.online, +e.dataset.total]);";
const PAGE_RVPS: &str = "return [...document.querySelectorAll('.rvp[data-rvp-office]')].map(e => [e.dataset.rvpOffice, e.dataset.content, e.dataset.client]);";
const PAGE_STATUS: &str = "return [...document.querySelectorAll('tr[data-office-status]')].map(e => ({deployment: +e.dataset.deployment, office: e.dataset.office, done: +e.dataset.done, total: +e.dataset.total, origin: +e.dataset.origin, server: +e.dataset.server, wan_in: +e.dataset.wanIn, wan_out: +e.dataset.wanOut, lan: +e.dataset.lan, rvp: e.dataset.rvp}));";

fn offices_of(topology: &Value) -> BTreeSet<(String, String, u64, u64)> {
    topology["offices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_owned(),
                o["parent"].as_str().unwrap_or("").to_owned(),
                o["clients_online"].as_u64().unwrap(),
                o["clients_total"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn rvps_of(topology: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for o in topology["offices"].as_array().unwrap() {
        for r in o["rvps"].as_array().unwrap() {
            out.insert((
                o["name"].as_str().unwrap().to_owned(),
                r["content_id"].as_str().unwrap().to_owned(),
                r["client_id"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out
}

fn page_offices(v: &Value) -> BTreeSet<(String, String, u64, u64)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_u64().unwrap(),
                r[3].as_u64().unwrap(),
            )
        })
        .collect()
}

/// A status view's offices in the page's terms.
fn status_rows(status: &Value) -> Vec<Value> {
    status["offices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            serde_json::json!({
                "office": o["office"],
                "done": o["clients_done"],
                "total": o["clients_total"],
                "origin": o["bytes_origin"],
                "server": o["bytes_server"],
                "wan_in": o["bytes_wan_in"],
                "wan_out": o["bytes_wan_out"],
                "lan": o["bytes_lan"],
                "rvp": o["rvp"].as_str().unwrap_or(""),
            })
        })
        .collect()
}

#[test]
fn dashboard_in_a_browser_matches_the_api_and_the_connector() {
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    // Three /24s: A.B.C (central: server .1, connector .2), A.B.C+1 (east), A.B.C+2 (west).
    let bed = Bed::new();
    let (head, last) = bed.net.rsplit_once('.').unwrap();
    let c0: u8 = last.parse::<u8>().unwrap().min(250);
    let nets = [
        format!("{head}.{c0}"),
        format!("{head}.{}", c0 + 1),
        format!("{head}.{}", c0 + 2),
    ];
    let bed = Bed {
        dir: bed.dir,
        net: nets[0].clone(),
    };
    let server = bed.server();
    let key = bed.path("server/deployment.key");
    wait_for(
        "the server's key",
        Duration::from_secs(30),
        &[&server],
        || Path::new(&key).exists().then_some(()),
    );
    let token_path = bed.dir.path().join("server/admin.token");
    wait_for(
        "the admin token",
        Duration::from_secs(30),
        &[&server],
        || {
            std::fs::read_to_string(&token_path)
                .ok()
                .filter(|t| t.trim().len() == 64)
        },
    );
    let token = std::fs::read_to_string(&token_path)
        .unwrap()
        .trim()
        .to_owned();
    let base = format!("http://{}:34800", bed.ip(1));

    // Five clients: two in central, two in east, one in west.
    let hosts = [
        ("hq-1", &nets[0], 11),
        ("hq-2", &nets[0], 12),
        ("east-1", &nets[1], 11),
        ("east-2", &nets[1], 12),
        ("west-1", &nets[2], 11),
    ];
    let mut procs = Vec::new();
    for (name, net, last) in hosts {
        let ip = format!("{net}.{last}");
        let data = bed.path(name);
        procs.push(Proc::spawn(
            bed.dir.path(),
            name,
            &[
                "client",
                "--server",
                &bed.ip(1),
                "--key-file",
                &key,
                "--data-dir",
                &data,
                "--bind",
                &ip,
                "--heartbeat-interval",
                "0.3",
                "--hostname",
                name,
            ],
        ));
    }
    let mut all: Vec<&Proc> = vec![&server];
    all.extend(procs.iter());
    wait_for("5 clients online", Duration::from_secs(60), &all, || {
        bed.health(&key)
            .filter(|h| h["clients_online"].as_u64() == Some(5))
    });
    let topology = format!(
        "[[office]]\nname = \"central\"\nsubnets = [\"{}.0/24\"]\n\n[[office]]\nname = \"east\"\nparent = \"central\"\nsubnets = [\"{}.0/24\"]\n[office.wan]\nceiling_bytes_per_s = {EAST_CEILING}\n\n[[office]]\nname = \"west\"\nparent = \"central\"\nsubnets = [\"{}.0/24\"]\n",
        nets[0], nets[1], nets[2]
    );
    let topo_file = bed.dir.path().join("topology.toml");
    std::fs::write(&topo_file, topology).unwrap();
    let out = bed.connector(&key, &["topology", "apply", topo_file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");

    // Nothing without the token.
    for path in [
        "/",
        "/deployments",
        "/api/topology",
        "/metrics",
        "/part/offices",
    ] {
        let (status, _) = admin_get(&base, None, path);
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = admin_get(&base, Some("0123456789abcdef"), path);
        assert_eq!(status, 401, "{path} with a wrong token");
    }

    // A finished deployment of a small package.
    let small = bed.dir.path().join("small.bin");
    let mut data = vec![0u8; SMALL];
    rand::fill(&mut data[..]);
    std::fs::write(&small, &data).unwrap();
    let small_id = publish(&bed, &key, &small, "tools");
    let out = bed.connector(&key, &["deploy", &small_id, "--to", "all"]);
    assert!(out.status.success(), "{out:?}");
    wait_done(&bed, &key, &small_id, 5, SMALL, &all);

    let browser = Browser::start();

    // Overview: the office tree as /api/topology and `connector topology show --json`.
    browser.goto(&format!("{base}/?token={token}"));
    browser.wait_for(
        "a live refresh",
        Duration::from_secs(30),
        "return (+(document.body.dataset.refreshes||0)) >= 1;",
    );
    let page = page_offices(&browser.eval(PAGE_OFFICES));
    let api_topo = api(&base, &token, "/api/topology");
    let cli_topo = connector_json(&bed, &key, &["topology", "show", "--json"]);
    assert_eq!(page, offices_of(&api_topo), "page vs /api/topology");
    assert_eq!(
        page,
        offices_of(&cli_topo),
        "page vs connector topology show"
    );
    assert_eq!(
        page.iter().map(|o| o.3).sum::<u64>(),
        5,
        "five clients: {page:?}"
    );
    let page_rvps: BTreeSet<(String, String, String)> = browser
        .eval(PAGE_RVPS)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_owned(),
                r[1].as_str().unwrap().to_owned(),
                r[2].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(page_rvps, rvps_of(&cli_topo), "RVPs");
    assert_eq!(page_rvps.len(), 3, "one RVP per office: {page_rvps:?}");
    let saved = browser.eval(
        "const e=document.querySelector('[data-card=saved]'); return [+e.dataset.saved, +e.dataset.delivered];",
    );
    assert_eq!(saved[1].as_u64(), Some(5 * SMALL as u64), "delivered");
    assert_eq!(
        saved[0].as_u64(),
        Some(4 * SMALL as u64),
        "one origin read for five clients"
    );
    save(&shots, "overview.png", &browser.screenshot());

    // Deployments: each office's progress and byte sources as /api and the connector.
    browser.goto(&format!("{base}/deployments"));
    let rows = browser.eval(PAGE_STATUS);
    let api_deps = api(&base, &token, "/api/deployments");
    let api_status = api(&base, &token, &format!("/api/status/{small_id}"));
    let cli_status = connector_json(&bed, &key, &["status", &small_id, "--json"]);
    assert_eq!(api_status, cli_status, "/api/status vs connector status");
    assert_eq!(api_deps["deployments"][0]["status"], cli_status);
    let page_rows: Vec<Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("deployment");
            r
        })
        .collect();
    assert_eq!(
        page_rows,
        status_rows(&cli_status),
        "page vs connector status"
    );
    for r in &page_rows {
        assert_eq!(r["done"], r["total"], "{r}");
        if r["office"] != "central" {
            assert_eq!(r["origin"], 0, "{r}");
            assert_eq!(r["wan_in"].as_u64(), Some(SMALL as u64), "{r}");
        }
    }
    let bars = browser
        .eval("return document.querySelectorAll('tr[data-office-status] .bar span').length;");
    assert!(bars.as_u64().unwrap() >= 6, "progress and source bars");
    save(&shots, "deployments.png", &browser.screenshot());

    // Clients: the list is searchable.
    browser.goto(&format!("{base}/clients"));
    let n = browser.eval("return document.querySelectorAll('tr[data-client]').length;");
    assert_eq!(n.as_u64(), Some(5));
    let api_clients = api(&base, &token, "/api/clients");
    let cli_clients = connector_json(&bed, &key, &["clients", "--json"]);
    let ids = |v: &Value| -> BTreeSet<String> {
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&api_clients), ids(&cli_clients));
    let page_ids: BTreeSet<String> = browser
        .eval(
            "return [...document.querySelectorAll('tr[data-client]')].map(e => e.dataset.client);",
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page_ids, ids(&api_clients));
    save(&shots, "clients.png", &browser.screenshot());
    browser.type_into("#filter", "east");
    let shown = browser.wait_for(
        "the search applied",
        Duration::from_secs(10),
        "const v=[...document.querySelectorAll('tr[data-client]')].filter(e => e.style.display !== 'none'); return v.length === 2 ? v.map(e => e.dataset.office) : null;",
    );
    assert_eq!(shown, serde_json::json!(["east", "east"]));
    save(&shots, "clients-search.png", &browser.screenshot());

    // Catalogue.
    browser.goto(&format!("{base}/catalogue"));
    let items = browser.eval(
        "return [...document.querySelectorAll('tr[data-item]')].map(e => [e.dataset.item, +e.dataset.holders]);",
    );
    assert_eq!(items, serde_json::json!([[small_id, 5]]));
    save(&shots, "catalogue.png", &browser.screenshot());

    // Metrics before the second download.
    let (status, before) = admin_get(&base, Some(&token), "/metrics");
    assert_eq!(status, 200);
    promtool_check(&before);

    // A live WAN transfer: a larger package crosses east's slow link.
    let large = bed.dir.path().join("large.bin");
    let mut data = vec![0u8; LARGE];
    rand::fill(&mut data[..]);
    std::fs::write(&large, &data).unwrap();
    let large_id = publish(&bed, &key, &large, "suite");
    browser.goto(&format!("{base}/"));
    let out = bed.connector(&key, &["deploy", &large_id, "--to", "all"]);
    assert!(out.status.success(), "{out:?}");
    let seen = browser.wait_for(
        "east's WAN transfer",
        Duration::from_secs(60),
        &format!(
            "const e=document.querySelector('tr[data-transfer][data-office=east][data-content=\"{large_id}\"]'); return e && +e.dataset.bytes > 0 ? {{bytes: +e.dataset.bytes, rate: +e.dataset.rate}} : null;"
        ),
    );
    println!("east's transfer on the page: {seen}");
    let api_transfers = api(&base, &token, "/api/transfers");
    assert!(
        api_transfers["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["office"] == "east" && t["content_id"] == large_id.as_str()),
        "{api_transfers}"
    );
    // Let the rate show (it needs two samples a second apart).
    let _ = browser.wait_for(
        "a transfer rate",
        Duration::from_secs(20),
        "const e=document.querySelector('tr[data-transfer][data-office=east]'); return e ? (+e.dataset.rate > 0 || null) : true;",
    );
    save(&shots, "overview-transfer.png", &browser.screenshot());
    browser.wait_for(
        "east's transfer gone",
        Duration::from_secs(120),
        "return !document.querySelector('tr[data-transfer]') && !!document.querySelector('[data-no-transfers]');",
    );
    wait_done(&bed, &key, &large_id, 5, LARGE, &all);

    // The counters moved by the download.
    let (status, after) = admin_get(&base, Some(&token), "/metrics");
    assert_eq!(status, 200);
    promtool_check(&after);
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert!(
        moved(r#"branchline_bytes_total{office="east",source="wan"}"#) >= LARGE as f64,
        "east's WAN bytes"
    );
    assert!(moved(r#"branchline_wan_bytes_total{office="east",direction="in"}"#) >= LARGE as f64);
    assert!(
        moved(r#"branchline_wan_bytes_total{office="central",direction="out"}"#)
            >= 2.0 * LARGE as f64
    );
    assert!(moved(r#"branchline_bytes_total{office="central",source="origin"}"#) >= LARGE as f64);
    assert!(moved("branchline_heartbeats_total") > 0.0);
    assert!(moved("branchline_rvp_elections_total") >= 3.0);
    assert!(moved("branchline_large_requests_total") > 0.0);
    assert_eq!(
        sample(&after, r#"branchline_clients_online{office="east"}"#),
        2.0
    );
    assert_eq!(sample(&after, "branchline_deployments"), 2.0);
    assert!(sample(&after, "branchline_admin_refused_requests_total") >= 10.0);

    browser.goto(&format!("{base}/deployments"));
    save(&shots, "deployments-after.png", &browser.screenshot());
    drop(browser);
    drop(procs);
    drop(server);
}
