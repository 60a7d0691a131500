//! `branchline demo`: the main job on one machine with embedded defaults. A server, a
//! few clients and the connector each bind their own loopback address with the real
//! port numbers, exactly as separate machines would, in one process.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use branchline_client::download::{DownloadProgress, Target, download};

use branchline_client::{Client, ClientOptions};
use branchline_config::Config;
use branchline_server::{Server, ServerOptions};
use clap::Args;

use crate::connector::{Connector, health_table};
use crate::fail::{Fail, exit};
use crate::settings::{ConnectorOptions, policies, shutdown_signal};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Number of clients.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=50))]
    clients: u8,
    /// First three octets of the loopback addresses to use. The Central Office is A.B.C.0/24
    /// (server .1, connector .2), the branch offices `east` and `west` are A.B.C+1.0/24 and
    /// A.B.C+2.0/24; clients take .11 and up, dealt to central, east, west in turn.
    #[arg(long, default_value = "127.77.0", value_name = "A.B.C")]
    net: String,
    /// Keep running (Ctrl-C to stop) instead of exiting after the report.
    #[arg(long)]
    keep_running: bool,
    /// Data directory for the demo (default: a fresh temporary directory, removed at exit).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Size of the generated package the demo publishes and distributes (MiB; 0 = none).
    #[arg(long, default_value_t = 32)]
    package_mib: u32,
}

fn addr(net: &str, last: u8) -> Result<IpAddr, Fail> {
    let ip: Ipv4Addr = format!("{net}.{last}").parse().map_err(|_| {
        Fail::new(
            exit::USAGE,
            format!("--net {net:?} is not three octets like 127.77.0"),
        )
    })?;
    if !ip.is_loopback() {
        return Err(Fail::new(
            exit::USAGE,
            "--net must be inside 127.0.0.0/8 (the demo stays on this machine)",
        ));
    }
    Ok(ip.into())
}

/// The demo's offices: (three-octet net, name), the Central Office first.
fn office_nets(net: &str) -> Result<Vec<(String, &'static str)>, Fail> {
    let bad = || {
        Fail::new(
            exit::USAGE,
            format!(
                "--net {net:?} is not three octets like 127.77.0 (with room for +2 in the last)"
            ),
        )
    };
    let (head, last) = net.rsplit_once('.').ok_or_else(bad)?;
    let last: u8 = last.parse().map_err(|_| bad())?;
    if last > 253 {
        return Err(bad());
    }
    Ok(vec![
        (net.to_owned(), "central"),
        (format!("{head}.{}", last + 1), "east"),
        (format!("{head}.{}", last + 2), "west"),
    ])
}

/// The demo's topology: two branch offices under the Central Office.
fn topology_toml(offices: &[(String, &'static str)]) -> String {
    let mut out = String::new();
    for (i, (net, name)) in offices.iter().enumerate() {
        out.push_str(&format!(
            "[[office]]\nname = \"{name}\"\nsubnets = [\"{net}.0/24\"]\n{}\n",
            if i == 0 {
                String::new()
            } else {
                format!("parent = \"{}\"\n", offices[0].1)
            }
        ));
    }
    out
}

/// Removes the demo's temporary directory however the demo ends.
struct TempDir(Option<std::path::PathBuf>);

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

pub async fn run(config: &Config, args: DemoArgs) -> Result<(), Fail> {
    let (retry, replay) = policies(config);
    let (dir, _cleanup) = match &args.data_dir {
        Some(d) => (d.clone(), TempDir(None)),
        None => {
            let d = std::env::temp_dir().join(format!("branchline-demo-{}", std::process::id()));
            (d.clone(), TempDir(Some(d)))
        }
    };
    let server_ip = addr(&args.net, 1)?;
    println!(
        "Branchline demo: 1 server, {} clients and the connector on {}.x",
        args.clients, args.net
    );
    println!("(each binds its own loopback address with the real port numbers)\n");

    let server = Server::start(ServerOptions {
        data_dir: dir.join("server"),
        bind: server_ip,
        ports: config.ports.server,
        offline_after_missed: config.server.offline_after_missed_heartbeats,
        retry,
        replay,
        background: crate::settings::background(config),
        content_cache: None,
        enrollment: config.server.enrollment.parse().unwrap_or_default(),
        key_overlap: std::time::Duration::from_secs_f64(config.server.key_overlap_s),
        client_cert_lifetime: std::time::Duration::from_secs_f64(
            config.server.client_cert_lifetime_s,
        ),
        admin: config
            .admin
            .enabled
            .then(|| branchline_server::web::AdminOptions {
                addr: (config.admin.address_for(server_ip), config.admin.port).into(),
                tls: branchline_server::web::TlsMode::Auto,
            }),
        registration_quota: crate::settings::registration_quota(config),
    })
    .await
    .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    println!(
        "server     {}:{} up; deployment key created in {}",
        server_ip,
        config.ports.server.small_request,
        server.setup.key_path.display()
    );

    let offices = office_nets(&args.net)?;
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (office_net, _) = &offices[usize::from(i) % offices.len()];
        let ip = addr(office_net, 11 + i / offices.len() as u8)?;
        let client = Client::start(ClientOptions {
            server: server_ip,
            server_ports: config.ports.server,
            key: server.setup.key.clone(),
            data_dir: dir.join(format!("client-{}", i + 1)),
            bind: ip,
            ports: config.ports.client,
            heartbeat_interval: Duration::from_secs(1),
            cache_cap: crate::settings::cache_cap(config)?,
            hostname: Some(format!(
                "{}-{}",
                offices[usize::from(i) % offices.len()].1,
                1 + i / offices.len() as u8
            )),
            retry,
            replay,
            background: crate::settings::background(config),
            metrics: None,
            ca_pin: Some(server.setup.ca_fingerprint.clone()),
        })
        .await
        .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
        clients.push(client);
    }
    for c in &mut clients {
        tokio::time::timeout(Duration::from_secs(15), c.wait_registered())
            .await
            .map_err(|_| Fail::new(exit::FAILURE, "a demo client did not register within 15 s"))?
            .map_err(|e| Fail::new(exit::FAILURE, e))?;
    }
    println!(
        "clients    {} registered, heartbeating every second",
        clients.len()
    );
    // Let two heartbeats go by so the report shows live clients, not just enrolments.
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let connector = Arc::new(
        Connector::open(&ConnectorOptions {
            server: (server_ip, config.ports.server.small_request).into(),
            reply: (addr(&args.net, 2)?, config.ports.connector.reply).into(),
            key: server.setup.key.clone(),
            key_file: server.setup.key_path.clone(),
            credential: dir.join("connector.credential"),
            retry,
            replay,
        })
        .await?,
    );
    connector
        .enroll(&server.setup.connector_token, "demo")
        .await?;
    let (_, _) = connector.activate().await?;
    println!(
        "connector  {}:{} activated",
        addr(&args.net, 2)?,
        config.ports.connector.reply
    );
    let topology = topology_toml(&offices);
    crate::offices::call(
        &connector,
        &branchline_server::admin::AdminCall::TopologyApply { toml: topology },
    )
    .await?;
    let view: branchline_server::admin::TopologyView = serde_json::from_value(
        crate::offices::call(
            &connector,
            &branchline_server::admin::AdminCall::TopologyShow,
        )
        .await?,
    )
    .map_err(|e| Fail::new(exit::FAILURE, e.to_string()))?;
    println!("topology   applied: the Central Office and two branch offices behind it\n");
    print!("{}", crate::offices::tree_text(&view));
    println!();

    print_report(&server, &connector, server_ip, config).await?;

    if args.package_mib > 0 {
        distribute(&dir, args.package_mib, connector, &mut clients).await?;
    }

    if args.keep_running {
        println!("\nRunning; Ctrl-C to stop. Try, in another terminal:");
        println!(
            "  branchline connector --server {server_ip} --bind {} --key-file {} health",
            addr(&args.net, 3)?,
            server.setup.key_path.display()
        );
        if let Some(a) = &server.setup.admin {
            let token = std::fs::read_to_string(&a.token_path).unwrap_or_default();
            println!("  the dashboard: http://{}/?token={}", a.addr, token.trim());
        }
        shutdown_signal().await;
    }
    for c in clients {
        c.shutdown().await;
    }
    server.shutdown().await;
    Ok(())
}

/// Publishes a generated package (file origin) and has every client get it at once.
async fn distribute(
    dir: &std::path::Path,
    mib: u32,
    connector: Arc<Connector>,
    clients: &mut [Client],
) -> Result<(), Fail> {
    let fail = |e: &dyn std::fmt::Display| Fail::new(exit::FAILURE, e.to_string());
    let pkg = dir.join("demo-package.bin");
    let size = u64::from(mib) << 20;
    {
        let pkg = pkg.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&pkg)?);
            let mut buf = vec![0u8; 1 << 20];
            for _ in 0..(size >> 20) {
                rand::fill(&mut buf[..]);
                std::io::Write::write_all(&mut f, &buf)?;
            }
            std::io::Write::flush(&mut f)
        })
        .await
        .map_err(|e| fail(&e))?
        .map_err(|e| fail(&e))?;
    }
    let args = crate::args::PublishArgs {
        source: pkg.display().to_string(),
        name: Some("demo-package".into()),
        version: "1.0".into(),
        origin: None,
        piece_size: 1 << 20,
        json: true,
    };
    let published = crate::publish::publish_outcome(connector.clone(), &args).await?;
    println!(
        "\npublished  demo-package@1.0: {mib} MiB, content id {}\n           origin {} (read only by the client the server picks)",
        published.id,
        pkg.display()
    );
    let started = Instant::now();
    let mut jobs = Vec::new();
    let hostnames: Vec<String> = clients.iter().map(|c| c.hostname().to_owned()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let svc = c
            .wait_services()
            .await
            .ok_or_else(|| Fail::new(exit::FAILURE, "a demo client has no QUIC services"))?;
        let (tx, _rx) = tokio::sync::watch::channel(DownloadProgress::default());
        let target = Target::Id(published.id);
        jobs.push(tokio::spawn(async move {
            let r = download(svc, target, i as u64 + 1, tx).await;
            (i, r, started.elapsed())
        }));
    }
    println!(
        "\n{:<10} {:<8} {:<4} {:>8} {:>8} {:>8} {:>10} {:>9}  VERIFIED FILE",
        "CLIENT", "OFFICE", "RVP", "TIME", "ORIGIN", "SERVER", "PARENT OFF", "LAN PEERS"
    );
    let mut origin_total = 0;
    let mut rows = Vec::new();
    for job in jobs {
        let (i, r, took) = job.await.map_err(|e| fail(&e))?;
        let d = r.map_err(|e| fail(&e))?;
        origin_total += d.from_origin;
        rows.push((i, d, took));
    }
    rows.sort_by(|a, b| (&a.1.office, a.0).cmp(&(&b.1.office, b.0)));
    let mb = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    for (i, d, took) in &rows {
        println!(
            "{:<10} {:<8} {:<4} {:>6.2} s {:>8} {:>8} {:>10} {:>9}  {}",
            hostnames[*i],
            d.office,
            if d.rvp { "yes" } else { "" },
            took.as_secs_f64(),
            mb(d.from_origin),
            mb(d.from_server),
            mb(d.from_wan),
            mb(d.from_peers),
            d.path.display()
        );
    }
    println!(
        "(MiB by source: the origin, the server's copy, the parent office over the WAN link (Background, LEDBAT++), peers in the same office)"
    );
    // Let the final have reports (with their byte counts) reach the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status: branchline_server::admin::StatusView = serde_json::from_value(
        crate::offices::call(
            &connector,
            &branchline_server::admin::AdminCall::Status {
                content: published.id.to_hex(),
            },
        )
        .await?,
    )
    .map_err(|e| fail(&e))?;
    println!("\nper office (`branchline connector status demo-package@1.0`):");
    print!("{}", crate::offices::status_text(&status));
    println!(
        "\norigin read {:.2} x the package size for {} clients; each branch office took one copy over its WAN link; every piece BLAKE3-verified before it was stored",
        origin_total as f64 / size as f64,
        clients.len()
    );
    Ok(())
}

async fn print_report(
    server: &Server,
    connector: &Connector,
    server_ip: IpAddr,
    config: &Config,
) -> Result<(), Fail> {
    let state = server.state();
    let now = state.clock.now_ms();
    let records = state
        .registry
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .snapshot();
    println!(
        "{:<15} {:<34} {:<13} {:<14} {:<8} LAST HEARD",
        "CLIENT", "ID", "ADDRESS", "SUBNET", "STATUS"
    );
    for r in &records {
        let online = state
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_online(r, now);
        println!(
            "{:<15} {:<34} {:<13} {:<14} {:<8} {:.1} s ago",
            r.hostname,
            r.id.to_string(),
            r.addresses
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            r.subnet.to_string(),
            if online { "online" } else { "offline" },
            now.saturating_sub(r.last_seen_ms) as f64 / 1000.0
        );
    }
    println!();
    let h = connector.health().await?;
    print!(
        "{}",
        health_table((server_ip, config.ports.server.small_request).into(), &h)
    );
    Ok(())
}
