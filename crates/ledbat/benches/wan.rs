//! WAN benchmark: LEDBAT++ against competing TCP on an emulated WAN link.
//!
//! Builds a two-office test bed (`branchline-testbed`): host `sender` in the central office,
//! host `receiver` in the branch, joined by a 20 Mbit/s tbf bottleneck with 100 ms of queue
//! on the router and 20 ms of propagation delay each way from the test bed's delay relay.
//! For each controller (LEDBAT++ as shipped, the bare draft, quinn's Cubic) and each competing
//! TCP (cubic, bbr) it runs one QUIC bulk transfer from `sender` to `receiver` on the
//! Background content port 34750, starts a TCP bulk flow on the same path after
//! `--alone` seconds, stops it after `--compete` seconds more and keeps the QUIC transfer
//! running for `--after` seconds. It prints, per run:
//!
//! * Background alone: link utilization (WAN counter bytes / link rate) and the queueing
//!   delay it adds (UDP probe RTT every 20 ms minus the idle-link base RTT, median and p95);
//! * TCP: seconds from its start until a 200 ms bin reaches 90 % of its solo rate, and its
//!   share of the goodput while both run;
//! * after TCP stops: seconds until Background is back to 80 % of the link (QUIC goodput ×
//!   the wire overhead measured while alone, per 200 ms bin).
//!
//! Run as root: `cargo bench -p branchline-ledbat --bench wan` (options after `--`:
//! `--variant ledbat|draft|cubic` and `--tcp cubic|bbr`, both repeatable, `--alone S`,
//! `--compete S`, `--after S`, `--timeline`, `--trace` (every controller sample), `--repeat N` (default 3), `--loss PERCENT`; `--tcp none` runs
//! Background alone). Without root it prints why it skips.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use branchline_ledbat::{Ledbat, LedbatConfig, background_transport_config};
use branchline_testbed::baseline::tcp::set_congestion;
use branchline_testbed::{Direction, Testbed, Topology, WanLink, is_root};
use quinn::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const RATE_MBIT: f64 = 20.0;
/// Link rate in bytes/s (Ethernet frames, as tbf counts them).
const LINK_BYTES: f64 = RATE_MBIT * 1e6 / 8.0;
const QUEUE_MS: f64 = 100.0;
const DELAY_MS: f64 = 20.0;
const BIN: Duration = Duration::from_millis(200);
const QUIC_PORT: u16 = 34750;
const TCP_PORT: u16 = 5001;
const ECHO_PORT: u16 = 40001;
const PROBE_INTERVAL: Duration = Duration::from_millis(20);
/// Start-up left out of the "alone" figures.
const WARMUP: Duration = Duration::from_secs(2);
/// Nice value of the benchmark's threads (see `main`).
const BENCH_NICE: libc::c_int = -20;
const SERVER_NAME: &str = "bench.branchline.invalid";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Ledbat,
    Draft,
    Cubic,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Ledbat => "LEDBAT++ (Branchline)",
            Variant::Draft => "LEDBAT++ (draft only)",
            Variant::Cubic => "quinn Cubic",
        }
    }

    fn transport(self) -> Res<quinn::TransportConfig> {
        Ok(match self {
            Variant::Ledbat => background_transport_config(LedbatConfig::default())?.0,
            Variant::Draft => background_transport_config(LedbatConfig::draft())?.0,
            Variant::Cubic => quinn::TransportConfig::default(),
        })
    }
}

#[derive(Clone, Debug)]
struct Options {
    variants: Vec<Variant>,
    tcps: Vec<String>,
    alone: Duration,
    compete: Duration,
    after: Duration,
    timeline: bool,
    /// Print every controller sample (one per bin) too.
    trace: bool,
    /// Random loss on the WAN link, percent of frames each direction.
    loss: f64,
    /// Runs of each (controller, TCP) pair.
    repeat: u32,
}

fn parse_args() -> Res<Options> {
    let mut o = Options {
        variants: Vec::new(),
        tcps: Vec::new(),
        alone: Duration::from_secs(10),
        compete: Duration::from_secs(10),
        after: Duration::from_secs(12),
        timeline: false,
        trace: false,
        loss: 0.0,
        repeat: 3,
    };
    let mut args = std::env::args().skip(1);
    let secs = |v: Option<String>, what: &str| -> Res<Duration> {
        let v = v.ok_or_else(|| format!("{what} needs a number of seconds"))?;
        let s: f64 = v
            .parse()
            .map_err(|_| format!("{what}: {v:?} is not a number"))?;
        if !(1.0..=600.0).contains(&s) {
            return Err(format!("{what}: use 1 to 600 seconds").into());
        }
        Ok(Duration::from_secs_f64(s))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bench" => {}
            "--variant" => match args.next().as_deref() {
                Some("ledbat") => o.variants.push(Variant::Ledbat),
                Some("draft") => o.variants.push(Variant::Draft),
                Some("cubic") => o.variants.push(Variant::Cubic),
                other => {
                    return Err(format!("--variant {other:?}: use ledbat, draft or cubic").into());
                }
            },
            "--tcp" => match args.next() {
                Some(cc) if ["cubic", "bbr", "reno", "none"].contains(&cc.as_str()) => {
                    o.tcps.push(cc)
                }
                other => {
                    return Err(format!("--tcp {other:?}: use cubic, bbr, reno or none").into());
                }
            },
            "--loss" => {
                let v = args.next().ok_or("--loss needs a percentage")?;
                o.loss = v
                    .parse()
                    .map_err(|_| format!("--loss: {v:?} is not a number"))?;
                if !(0.0..=20.0).contains(&o.loss) {
                    return Err("--loss: use 0 to 20 (percent)".into());
                }
            }
            "--alone" => o.alone = secs(args.next(), "--alone")?,
            "--compete" => o.compete = secs(args.next(), "--compete")?,
            "--after" => o.after = secs(args.next(), "--after")?,
            "--timeline" => o.timeline = true,
            "--trace" => o.trace = true,
            "--repeat" => {
                let v = args.next().ok_or("--repeat needs a count")?;
                o.repeat = v
                    .parse()
                    .map_err(|_| format!("--repeat: {v:?} is not a count"))?;
                if !(1..=20).contains(&o.repeat) {
                    return Err("--repeat: use 1 to 20".into());
                }
            }
            other => return Err(format!("unknown option {other:?}").into()),
        }
    }
    if o.variants.is_empty() {
        o.variants = vec![Variant::Ledbat, Variant::Draft, Variant::Cubic];
    }
    if o.tcps.is_empty() {
        o.tcps = vec!["cubic".into(), "bbr".into()];
    }
    if o.alone <= WARMUP + Duration::from_secs(1) {
        return Err("--alone must be more than 3 s".into());
    }
    Ok(o)
}

/// Bytes per 200 ms bin since a shared epoch.
#[derive(Clone, Debug, Default)]
struct Bins(Vec<u64>);

impl Bins {
    fn add(&mut self, epoch: Instant, at: Instant, n: u64) {
        let i = (at.saturating_duration_since(epoch).as_nanos() / BIN.as_nanos()) as usize;
        if self.0.len() <= i {
            self.0.resize(i + 1, 0);
        }
        self.0[i] += n;
    }

    fn bin(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Bytes/s in bin `i`.
    fn rate(&self, i: usize) -> f64 {
        self.bin(i) as f64 / BIN.as_secs_f64()
    }

    /// Bytes in [from, to).
    fn sum(&self, from: Duration, to: Duration) -> u64 {
        (index(from)..index(to)).map(|i| self.bin(i)).sum()
    }
}

fn index(t: Duration) -> usize {
    (t.as_nanos() / BIN.as_nanos()) as usize
}

/// A probe's send time (since the epoch) and round-trip time.
type Probe = (Duration, Duration);

/// A LEDBAT++ controller sample taken by the sender: time since epoch and the state.
type CcSample = (Duration, Option<branchline_ledbat::LedbatStats>, u64);

fn main() {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("wan bench: {e}");
            std::process::exit(2);
        }
    };
    if !is_root() {
        println!(
            "SKIPPED: the WAN benchmark builds network namespaces and needs root; \
             run it as root: cargo bench -p branchline-ledbat --bench wan"
        );
        return;
    }
    // Every thread the benchmark starts (QUIC and TCP endpoints, probes, the link sampler)
    // inherits this nice level: on a machine shared with compilers, a sender thread starved
    // for seconds measures the scheduler, not the congestion controller. The test bed's delay
    // relays run SCHED_FIFO for the same reason. Failure is harmless (normal priority then).
    // SAFETY: changes only this thread's nice value (Linux applies it per thread).
    #[allow(unsafe_code)]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, BENCH_NICE)
    };
    if let Err(e) = run(&opts) {
        eprintln!("wan bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(opts: &Options) -> Res<()> {
    let topo = Topology::two_offices(
        &["sender"],
        &["receiver"],
        WanLink {
            rate_mbit: Some(RATE_MBIT),
            queue_ms: Some(QUEUE_MS),
            delay_ms: DELAY_MS,
            loss_percent: opts.loss,
            ..Default::default()
        },
    );
    let tb = Testbed::up(&topo)?;
    println!(
        "# WAN link: {RATE_MBIT} Mbit/s tbf, {QUEUE_MS} ms queue, {DELAY_MS} ms propagation each way \
         (sender in central, receiver in branch)"
    );
    if opts.loss > 0.0 {
        println!(
            "# random loss on the WAN link: {} % of frames each way",
            opts.loss
        );
    }
    println!(
        "# phases (with a TCP flow): Background alone {:.0} s, with TCP {:.0} s, after TCP {:.0} s; \
         bins of {} ms",
        opts.alone.as_secs_f64(),
        opts.compete.as_secs_f64(),
        opts.after.as_secs_f64(),
        BIN.as_millis()
    );
    let base = base_rtt(&tb)?;
    println!(
        "# idle-link base RTT (min of 50 UDP probes): {:.1} ms",
        ms(base)
    );

    // The reference: each TCP alone, `--repeat` times. Its solo rate (the median over the
    // repeats) is what "back to 90 %" means below, and its own ramp from idle to 90 % of that
    // rate is the yardstick for how fast Background gets out of its way.
    let mut solo = Vec::new();
    for cc in &opts.tcps {
        if cc == "none" {
            solo.push(Solo::none());
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..opts.repeat {
            runs.push(tcp_solo(&tb, cc, base)?);
        }
        let s = Solo::from_runs(cc, runs);
        println!(
            "# TCP {cc} solo ({} runs): {} Mbit/s goodput, median queueing delay {} ms, \
             ramp from idle to 90 % of the median solo rate {}",
            s.runs.len(),
            spread(
                &s.runs
                    .iter()
                    .map(|r| r.rate * 8.0 / 1e6)
                    .collect::<Vec<_>>(),
                2
            ),
            spread(&s.runs.iter().map(|r| ms(r.qd)).collect::<Vec<_>>(), 1),
            spread_secs(&s.ramps()),
        );
        solo.push(s);
    }

    // Repeats interleaved (all pairs once, then again), so a burst of CPU noise from other
    // work on the machine does not land on one pair only.
    let mut summary = Vec::new();
    for _ in 0..opts.repeat {
        for &variant in &opts.variants {
            for s in &solo {
                let r = scenario(&tb, opts, variant, &s.cc, s.rate, base)?;
                summary.push(r);
            }
        }
    }

    println!();
    println!(
        "# per run (Background alone: link utilization, added median queueing delay; TCP from \
         its start to 90 % of solo; Background from TCP's stop back to 80 % of the link)"
    );
    println!(
        "{:<24} {:<6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>11} {:>5}",
        "controller",
        "tcp",
        "alone util",
        "alone qd",
        "tcp→90%",
        "tcp share",
        "tcp/solo",
        "back to 80%",
        "load"
    );
    for r in &summary {
        if r.tcp == "none" {
            println!(
                "{:<24} {:<6} {:>9.1}% {:>7.1} ms {:>10} {:>10} {:>10} {:>11} {:>5.1}",
                r.variant.name(),
                r.tcp,
                r.alone_util * 100.0,
                ms(r.alone_qd_median),
                "-",
                "-",
                "-",
                "-",
                r.load
            );
            continue;
        }
        println!(
            "{:<24} {:<6} {:>9.1}% {:>7.1} ms {:>10} {:>9.1}% {:>9.1}% {:>11} {:>5.1}",
            r.variant.name(),
            r.tcp,
            r.alone_util * 100.0,
            ms(r.alone_qd_median),
            secs_or(r.tcp_to_90),
            r.tcp_share * 100.0,
            r.tcp_vs_solo * 100.0,
            secs_or(r.recovery_80),
            r.load,
        );
    }

    println!();
    println!(
        "# median [min–max] of {} runs per row; TCP's own ramp from idle is the reference row",
        opts.repeat
    );
    println!(
        "| controller | TCP | alone util % | alone added qd ms | TCP → 90 % of solo s | \
         TCP's own ramp s | TCP share % | Background back to 80 % s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for s in &solo {
        if s.cc == "none" {
            continue;
        }
        println!(
            "| TCP alone (reference) | {} | {} | {} | — | {} | — | — |",
            s.cc,
            spread(
                &s.runs.iter().map(|r| r.util * 100.0).collect::<Vec<_>>(),
                1
            ),
            spread(&s.runs.iter().map(|r| ms(r.qd)).collect::<Vec<_>>(), 1),
            spread_secs(&s.ramps()),
        );
    }
    for &variant in &opts.variants {
        for s in &solo {
            let rows: Vec<&Summary> = summary
                .iter()
                .filter(|r| r.variant == variant && r.tcp == s.cc)
                .collect();
            let col = |f: &dyn Fn(&Summary) -> f64, digits: usize| {
                spread(&rows.iter().map(|r| f(r)).collect::<Vec<_>>(), digits)
            };
            let util = col(&|r| r.alone_util * 100.0, 1);
            let qd = col(&|r| ms(r.alone_qd_median), 1);
            if s.cc == "none" {
                println!(
                    "| {} | none | {util} | {qd} | — | — | — | — |",
                    variant.name()
                );
                continue;
            }
            println!(
                "| {} | {} | {util} | {qd} | {} | {} | {} | {} |",
                variant.name(),
                s.cc,
                spread_secs(&rows.iter().map(|r| r.tcp_to_90).collect::<Vec<_>>()),
                spread_secs(&s.ramps()),
                col(&|r| r.tcp_share * 100.0, 1),
                spread_secs(&rows.iter().map(|r| r.recovery_80).collect::<Vec<_>>()),
            );
        }
    }
    println!(
        "# targets (issue #12), in every run: alone ≥ 95 % utilization, added median queueing \
         delay ≤ 40 ms, TCP at 90 % of solo within TCP's own ramp from idle + 0.3 s, \
         Background back to 80 % within 1 s"
    );
    tb.down()?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn secs_or(d: Option<Duration>) -> String {
    match d {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => "never".into(),
    }
}

struct Summary {
    variant: Variant,
    tcp: String,
    alone_util: f64,
    alone_qd_median: Duration,
    tcp_to_90: Option<Duration>,
    tcp_share: f64,
    tcp_vs_solo: f64,
    recovery_80: Option<Duration>,
    /// The machine's 1-minute load average at the end of the run (other sessions' builds).
    load: f64,
}

/// The 1-minute load average (`/proc/loadavg`), or NaN if it cannot be read.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

fn queueing_delays(
    probes: &[Probe],
    base: Duration,
    from: Duration,
    to: Duration,
) -> Vec<Duration> {
    probes
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, rtt)| rtt.saturating_sub(base))
        .collect()
}

/// Minimum RTT of 50 probes on the idle link.
fn base_rtt(tb: &Testbed) -> Res<Duration> {
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = epoch + Duration::from_secs(3);
    let echo = start_echo(tb, deadline)?;
    let probes = start_prober(tb, epoch, deadline, stop.clone(), Some(50))?;
    let probes = join(probes)?;
    stop.store(true, Ordering::SeqCst);
    join(echo)?;
    probes
        .iter()
        .map(|p| p.1)
        .min()
        .ok_or_else(|| "no UDP probe came back on the idle link".into())
}

/// One run of a TCP flavour alone on the link.
struct SoloRun {
    /// Goodput over [2 s, 10 s) (bytes/s).
    rate: f64,
    /// Link utilization over [2 s, 10 s).
    util: f64,
    /// Median added queueing delay over [2 s, 10 s).
    qd: Duration,
    /// Goodput per bin from the flow's start.
    bins: Bins,
}

/// A TCP flavour alone: its runs and the median solo rate.
struct Solo {
    cc: String,
    /// Median goodput of the runs (bytes/s); 0 for `none`.
    rate: f64,
    runs: Vec<SoloRun>,
}

impl Solo {
    fn none() -> Self {
        Self {
            cc: "none".into(),
            rate: 0.0,
            runs: Vec::new(),
        }
    }

    fn from_runs(cc: &str, runs: Vec<SoloRun>) -> Self {
        let rate = median(&runs.iter().map(|r| r.rate).collect::<Vec<_>>());
        Self {
            cc: cc.into(),
            rate,
            runs,
        }
    }

    /// Per run: time from the flow's start until a bin reaches 90 % of the median solo rate
    /// (the same measure as "TCP → 90 %" next to Background).
    fn ramps(&self) -> Vec<Option<Duration>> {
        self.runs
            .iter()
            .map(|r| {
                (0..r.bins.0.len())
                    .find(|&i| r.bins.rate(i) >= 0.9 * self.rate)
                    .map(|i| BIN * (i + 1) as u32)
            })
            .collect()
    }
}

/// TCP alone for 10 s from an idle link: goodput, utilization and median queueing delay over
/// [2 s, 10 s), and the goodput per bin from its start (for its ramp from idle).
fn tcp_solo(tb: &Testbed, cc: &str, base: Duration) -> Res<SoloRun> {
    let span = Duration::from_secs(10);
    let epoch = Instant::now() + Duration::from_millis(300);
    let deadline = epoch + span + Duration::from_secs(1);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = start_echo(tb, deadline)?;
    let probes = start_prober(tb, epoch, deadline, stop.clone(), None)?;
    let counter = || -> Res<u64> {
        tb.wan_counters()?
            .iter()
            .find(|c| c.link == "branch" && c.dir == Direction::Inbound)
            .map(|c| c.bytes)
            .ok_or_else(|| "no inbound counter for the branch link".into())
    };
    // Started at the epoch (as next to Background, where it starts on a bin boundary), so
    // bin 0 is its first 200 ms.
    sleep_until(epoch);
    let tcp = TcpRun::start(tb, cc, epoch, deadline)?;
    sleep_until(epoch + WARMUP);
    let link_from = counter()?;
    sleep_until(epoch + span);
    let link_to = counter()?;
    tcp.stop.store(true, Ordering::SeqCst);
    let bins = tcp.wait()?;
    stop.store(true, Ordering::SeqCst);
    let probes = join(probes)?;
    join(echo)?;
    let secs = (span - WARMUP).as_secs_f64();
    let rate = bins.sum(WARMUP, span) as f64 / secs;
    let util = link_to.saturating_sub(link_from) as f64 / secs / LINK_BYTES;
    let qd = percentile(queueing_delays(&probes, base, WARMUP, span), 0.5);
    Ok(SoloRun {
        rate,
        util,
        qd,
        bins,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `median [min–max]` of the values.
fn spread(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.digits$} [{lo:.digits$}–{hi:.digits$}]", median(v))
}

/// `median [min–max]` of durations in seconds, "never" counting as longer than any.
fn spread_secs(v: &[Option<Duration>]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let mut s: Vec<f64> = v
        .iter()
        .map(|d| d.map_or(f64::INFINITY, |d| d.as_secs_f64()))
        .collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    let show = |x: f64| {
        if x.is_finite() {
            format!("{x:.1}")
        } else {
            "never".into()
        }
    };
    format!("{} [{}–{}]", show(med), show(s[0]), show(s[n - 1]))
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn join<T>(h: std::thread::JoinHandle<branchline_testbed::Result<Res<T>>>) -> Res<T> {
    match h.join() {
        Ok(r) => r?,
        Err(_) => Err("a benchmark thread panicked".into()),
    }
}

fn scenario(
    tb: &Testbed,
    opts: &Options,
    variant: Variant,
    cc: &str,
    solo: f64,
    base: Duration,
) -> Res<Summary> {
    let with_tcp = cc != "none";
    let total = if with_tcp {
        opts.alone + opts.compete + opts.after
    } else {
        opts.alone
    };
    let epoch = Instant::now() + Duration::from_millis(500);
    let deadline = epoch + total + Duration::from_secs(2);
    let receiver = SocketAddr::from((tb.host_addr("receiver")?, QUIC_PORT));

    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let cert_der: CertificateDer<'static> = cert.cert.der().clone();
    let key_der = cert.signing_key.serialize_der();

    // Receiver (QUIC server) first, so the sender finds it listening.
    let (ready_tx, ready_rx) = mpsc::channel();
    let transport = variant.transport()?;
    let cert_r = cert_der.clone();
    let quic_rx = tb.spawn_in("receiver", move || {
        quic_receiver(transport, cert_r, key_der, epoch, deadline, ready_tx)
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| "the QUIC receiver did not start")??;

    let stop_all = Arc::new(AtomicBool::new(false));
    let echo = start_echo(tb, deadline)?;
    let probes = start_prober(tb, epoch, deadline, stop_all.clone(), None)?;
    let transport = variant.transport()?;
    let stop_q = stop_all.clone();
    let quic_tx = tb.spawn_in("sender", move || {
        quic_sender(transport, cert_der, receiver, epoch, deadline, stop_q)
    })?;

    // Link counters every bin, TCP started and stopped on schedule.
    let mut counters: Vec<(Duration, u64)> = Vec::new();
    let mut tcp: Option<TcpRun> = None;
    let mut tcp_bins = Bins::default();
    let mut next = epoch;
    while next <= epoch + total {
        sleep_until(next);
        let t = next - epoch;
        let inbound = tb
            .wan_counters()?
            .iter()
            .find(|c| c.link == "branch" && c.dir == Direction::Inbound)
            .map(|c| c.bytes)
            .ok_or("no inbound counter for the branch link")?;
        counters.push((t, inbound));
        if with_tcp && t >= opts.alone && tcp.is_none() && t < opts.alone + opts.compete {
            tcp = Some(TcpRun::start(tb, cc, epoch, deadline)?);
        }
        if t >= opts.alone + opts.compete
            && let Some(run) = tcp.take()
        {
            run.stop.store(true, Ordering::SeqCst);
            tcp_bins = run.wait()?;
        }
        next += BIN;
    }
    stop_all.store(true, Ordering::SeqCst);
    let (cc_samples, conn_stats) = join(quic_tx)?;
    let quic_bins = join(quic_rx)?;
    let probes = join(probes)?;
    join(echo)?;

    // Link bytes per bin (counter deltas; the counter at t covers the bin ending at t).
    let mut link = Bins::default();
    for w in counters.windows(2) {
        let (t0, b0) = w[0];
        link.add(epoch, epoch + t0, w[1].1.saturating_sub(b0));
    }

    let alone_from = WARMUP;
    let alone_to = opts.alone;
    let alone_secs = (alone_to - alone_from).as_secs_f64();
    let alone_link = link.sum(alone_from, alone_to) as f64;
    let alone_quic = quic_bins.sum(alone_from, alone_to) as f64;
    let alone_util = alone_link / alone_secs / LINK_BYTES;
    let overhead = if alone_quic > 0.0 {
        alone_link / alone_quic
    } else {
        1.0
    };
    let qd_alone = queueing_delays(&probes, base, alone_from, alone_to);
    let alone_qd_median = percentile(qd_alone.clone(), 0.5);
    let alone_qd_p95 = percentile(qd_alone, 0.95);

    let tcp_start = index(opts.alone);
    let tcp_stop = index(opts.alone + opts.compete);
    let tcp_to_90 = (tcp_start..tcp_stop.min(index(total)))
        .find(|&i| tcp_bins.rate(i) >= 0.9 * solo)
        .map(|i| BIN * (i + 1 - tcp_start) as u32);
    let both_tcp = tcp_bins.sum(opts.alone, opts.alone + opts.compete) as f64;
    let both_quic = quic_bins.sum(opts.alone, opts.alone + opts.compete) as f64;
    let tcp_share = both_tcp / (both_tcp + both_quic).max(1.0);
    let tcp_vs_solo = both_tcp / opts.compete.as_secs_f64() / solo.max(1.0);
    let end = index(total);
    let recovery_80 = (tcp_stop..end)
        .find(|&i| quic_bins.rate(i) * overhead >= 0.8 * LINK_BYTES)
        .map(|i| BIN * (i + 1 - tcp_stop) as u32);
    let qd_both = percentile(
        queueing_delays(&probes, base, opts.alone, opts.alone + opts.compete),
        0.5,
    );

    println!();
    let load = load_average();
    println!(
        "## {} vs TCP {cc} (load average {load:.1} on {} CPUs)",
        variant.name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Background alone ({:.0}-{:.0} s): link utilization {:.1} %, goodput {:.2} Mbit/s, \
         added queueing delay median {:.1} ms, p95 {:.1} ms",
        alone_from.as_secs_f64(),
        alone_to.as_secs_f64(),
        alone_util * 100.0,
        alone_quic / alone_secs * 8.0 / 1e6,
        ms(alone_qd_median),
        ms(alone_qd_p95),
    );
    // Arrival yields while Background was still alone are false alarms.
    let arrivals_alone = cc_samples
        .iter()
        .rev()
        .find(|(t, _, _)| *t <= opts.alone)
        .and_then(|(_, st, _)| st.map(|st| st.competitor_arrivals));
    let reactions = match (cc_samples.last(), arrivals_alone) {
        (Some((_, Some(st), _)), alone) => format!(
            ", {} loss events taken as random, {} as congestion, {} slowdowns, \
             {} competitor arrivals ({} while alone)",
            st.random_losses,
            st.congestion_losses,
            st.slowdowns,
            st.competitor_arrivals,
            alone.unwrap_or(0),
        ),
        _ => String::new(),
    };
    println!(
        "Background sent {} packets, {} lost ({:.2} %){reactions}",
        conn_stats.path.sent_packets,
        conn_stats.path.lost_packets,
        conn_stats.path.lost_packets as f64 / conn_stats.path.sent_packets.max(1) as f64 * 100.0,
    );
    if with_tcp {
        println!(
            "TCP {cc} started at {:.0} s: 90 % of solo ({:.2} Mbit/s) after {}; \
         TCP share while both run {:.1} % (TCP at {:.1} % of solo, Background {:.2} Mbit/s), \
         median queueing delay {:.1} ms",
            opts.alone.as_secs_f64(),
            solo * 0.9 * 8.0 / 1e6,
            secs_or(tcp_to_90),
            tcp_share * 100.0,
            tcp_vs_solo * 100.0,
            both_quic / opts.compete.as_secs_f64() * 8.0 / 1e6,
            ms(qd_both),
        );
        println!(
            "TCP stopped at {:.0} s: Background back to 80 % of the link after {}",
            (opts.alone + opts.compete).as_secs_f64(),
            secs_or(recovery_80),
        );
    }
    if opts.trace {
        println!(
            "  t(s)   bg Mbit/s  link %  cwnd kB  ssthresh kB  ledbat qd ms  others ms  slowdowns  arrivals  phase"
        );
        for (t, st, cwnd) in &cc_samples {
            let i = index(*t);
            let (ss, lqd, others, n, arrivals, phase) = match st {
                Some(st) => (
                    if st.ssthresh == u64::MAX {
                        f64::INFINITY
                    } else {
                        st.ssthresh as f64 / 1000.0
                    },
                    st.queueing_delay.map(ms).unwrap_or(0.0),
                    ms(st.others_delay),
                    st.slowdowns,
                    st.competitor_arrivals,
                    format!("{:?}", st.phase),
                ),
                None => (0.0, 0.0, 0.0, 0, 0, "-".into()),
            };
            println!(
                "  {:>6.2}  {:>9.2}  {:>6.1}  {:>7.1}  {:>11.1}  {:>12.1}  {:>9.1}  {:>9}  {:>8}  {phase}",
                t.as_secs_f64(),
                quic_bins.rate(i) * 8.0 / 1e6,
                link.rate(i) / LINK_BYTES * 100.0,
                *cwnd as f64 / 1000.0,
                ss,
                lqd,
                others,
                n,
                arrivals,
            );
        }
    }
    if opts.timeline {
        println!(
            "  t(s)  bg Mbit/s  tcp Mbit/s  link %  probe qd ms  cwnd kB  ledbat qd ms  others ms  phase"
        );
        let per_sec = (Duration::from_secs(1).as_nanos() / BIN.as_nanos()) as usize;
        for s in 0..total.as_secs() as usize {
            let bins = s * per_sec..(s + 1) * per_sec;
            let bg: u64 = bins.clone().map(|i| quic_bins.bin(i)).sum();
            let tc: u64 = bins.clone().map(|i| tcp_bins.bin(i)).sum();
            let li: u64 = bins.map(|i| link.bin(i)).sum();
            let from = Duration::from_secs(s as u64);
            let qd = percentile(
                queueing_delays(&probes, base, from, from + Duration::from_secs(1)),
                0.5,
            );
            let cc_at = cc_samples
                .iter()
                .rev()
                .find(|(t, _, _)| *t <= from + Duration::from_secs(1));
            let (cwnd, lqd, others, phase) = match cc_at {
                Some((_, Some(st), _)) => (
                    st.window,
                    st.queueing_delay.map(ms).unwrap_or(0.0),
                    ms(st.others_delay),
                    format!("{:?}", st.phase),
                ),
                Some((_, None, cwnd)) => (*cwnd, 0.0, 0.0, "-".into()),
                None => (0, 0.0, 0.0, "-".into()),
            };
            println!(
                "  {s:>4}  {:>9.2}  {:>10.2}  {:>6.1}  {:>11.1}  {:>7.1}  {:>12.1}  {:>9.1}  {phase}",
                bg as f64 * 8.0 / 1e6,
                tc as f64 * 8.0 / 1e6,
                li as f64 / LINK_BYTES * 100.0,
                ms(qd),
                cwnd as f64 / 1000.0,
                lqd,
                others,
            );
        }
    }
    Ok(Summary {
        variant,
        tcp: cc.to_string(),
        alone_util,
        alone_qd_median,
        tcp_to_90,
        tcp_share,
        tcp_vs_solo,
        recovery_80,
        load,
    })
}

fn runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// QUIC server in the receiver: accepts one connection and one unidirectional stream, and
/// counts the bytes per bin until the sender closes or the deadline passes.
fn quic_receiver(
    transport: quinn::TransportConfig,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
    epoch: Instant,
    deadline: Instant,
    ready: mpsc::Sender<Res<()>>,
) -> Res<Bins> {
    let rt = runtime()?;
    rt.block_on(async move {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let mut config = quinn::ServerConfig::with_single_cert(vec![cert], key)?;
        config.transport_config(Arc::new(transport));
        let endpoint =
            match quinn::Endpoint::server(config, (Ipv4Addr::UNSPECIFIED, QUIC_PORT).into()) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready.send(Err(format!("QUIC receiver bind: {e}").into()));
                    return Err(e.into());
                }
            };
        let _ = ready.send(Ok(()));
        let deadline = tokio::time::Instant::from_std(deadline);
        let incoming = tokio::time::timeout_at(deadline, endpoint.accept())
            .await?
            .ok_or("QUIC endpoint closed before a connection")?;
        let conn = incoming.await?;
        let mut stream = tokio::time::timeout_at(deadline, conn.accept_uni()).await??;
        let mut bins = Bins::default();
        // Until the deadline, the end of the stream, or the sender closing the connection.
        while let Ok(Ok(Some(chunk))) =
            tokio::time::timeout_at(deadline, stream.read_chunk(1 << 20, true)).await
        {
            bins.add(epoch, Instant::now(), chunk.bytes.len() as u64);
        }
        conn.close(0u32.into(), b"done");
        endpoint.close(0u32.into(), b"done");
        Ok(bins)
    })
}

/// QUIC client in the sender: writes zeros on one unidirectional stream until told to stop,
/// sampling the congestion controller every bin.
fn quic_sender(
    transport: quinn::TransportConfig,
    cert: CertificateDer<'static>,
    server: SocketAddr,
    epoch: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> Res<(Vec<CcSample>, quinn::ConnectionStats)> {
    let rt = runtime()?;
    rt.block_on(async move {
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut config = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
        config.transport_config(Arc::new(transport));
        let mut endpoint = quinn::Endpoint::client((Ipv4Addr::UNSPECIFIED, 0).into())?;
        endpoint.set_default_client_config(config);
        sleep_until_async(epoch).await;
        let conn = endpoint.connect(server, SERVER_NAME)?.await?;
        let mut stream = conn.open_uni().await?;
        let buf = vec![0u8; 64 << 10];
        let mut samples = Vec::new();
        let mut next_sample = Instant::now();
        let tdeadline = tokio::time::Instant::from_std(deadline);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let step = tokio::time::Instant::now() + Duration::from_millis(50);
            // Write for at most 50 ms at a time so the stop flag is seen promptly.
            if let Ok(r) =
                tokio::time::timeout_at(step.min(tdeadline), stream.write_all(&buf)).await
            {
                r?;
            }
            let now = Instant::now();
            if now >= next_sample {
                let state = conn.congestion_state();
                let cwnd = state.window();
                let stats = state
                    .into_any()
                    .downcast::<Ledbat>()
                    .ok()
                    .map(|l| l.stats());
                samples.push((now.saturating_duration_since(epoch), stats, cwnd));
                next_sample += BIN;
            }
        }
        let stats = conn.stats();
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok((samples, stats))
    })
}

async fn sleep_until_async(t: Instant) {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
}

/// UDP echo responder in the receiver until the deadline.
fn start_echo(
    tb: &Testbed,
    deadline: Instant,
) -> Res<std::thread::JoinHandle<branchline_testbed::Result<Res<()>>>> {
    let (ready_tx, ready_rx) = mpsc::channel::<Res<()>>();
    let h = tb.spawn_in("receiver", move || -> Res<()> {
        let s = match UdpSocket::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)) {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(format!("UDP echo bind: {e}").into()));
                return Err(e.into());
            }
        };
        s.set_read_timeout(Some(Duration::from_millis(50)))?;
        let _ = ready_tx.send(Ok(()));
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
            }
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "the UDP echo responder did not start")??;
    Ok(h)
}

/// Sends a UDP probe every 20 ms from the sender to the echo responder, until the deadline,
/// the stop flag, or `count` answers.
fn start_prober(
    tb: &Testbed,
    epoch: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    count: Option<usize>,
) -> Res<std::thread::JoinHandle<branchline_testbed::Result<Res<Vec<Probe>>>>> {
    let echo = SocketAddr::from((tb.host_addr("receiver")?, ECHO_PORT));
    Ok(tb.spawn_in("sender", move || -> Res<Vec<Probe>> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        let mut probes = Vec::new();
        let mut sent_at: Vec<Instant> = Vec::new();
        let mut next = Instant::now();
        let mut buf = [0u8; 64];
        while Instant::now() < deadline
            && !stop.load(Ordering::Relaxed)
            && count.is_none_or(|c| probes.len() < c)
        {
            let now = Instant::now();
            if now >= next {
                let seq = sent_at.len() as u64;
                sent_at.push(now);
                s.send_to(&seq.to_be_bytes(), echo)?;
                next += PROBE_INTERVAL;
            }
            let wait = next
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            s.set_read_timeout(Some(wait))?;
            if let Ok((8, _)) = s.recv_from(&mut buf) {
                let at = Instant::now();
                let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes")) as usize;
                if let Some(t) = sent_at.get(seq) {
                    probes.push((t.saturating_duration_since(epoch), at - *t));
                }
            }
        }
        Ok(probes)
    })?)
}

/// A competing TCP bulk flow from the sender to the receiver.
struct TcpRun {
    stop: Arc<AtomicBool>,
    recv: std::thread::JoinHandle<branchline_testbed::Result<Res<Bins>>>,
    send: std::thread::JoinHandle<branchline_testbed::Result<Res<()>>>,
}

impl TcpRun {
    fn start(tb: &Testbed, cc: &str, epoch: Instant, deadline: Instant) -> Res<TcpRun> {
        let dst = SocketAddr::from((tb.host_addr("receiver")?, TCP_PORT));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Res<()>>();
        let recv = tb.spawn_in("receiver", move || -> Res<Bins> {
            let l = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("TCP listen: {e}").into()));
                    return Err(e.into());
                }
            };
            let _ = ready_tx.send(Ok(()));
            l.set_nonblocking(true)?;
            let mut s = loop {
                match l.accept() {
                    Ok((s, _)) => break s,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err("TCP receiver: no connection".into());
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            s.set_nonblocking(false)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut bins = Bins::default();
            let mut buf = vec![0u8; 256 << 10];
            while Instant::now() < deadline {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => bins.add(epoch, Instant::now(), n as u64),
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    // The sender resets the connection when it stops.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(bins)
        })?;
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| "the TCP receiver did not start")??;
        let cc = cc.to_string();
        let stop_s = stop.clone();
        let send = tb.spawn_in("sender", move || -> Res<()> {
            let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5))?;
            set_congestion(&s, &cc)?;
            s.set_write_timeout(Some(Duration::from_millis(50)))?;
            let buf = vec![0u8; 64 << 10];
            while !stop_s.load(Ordering::Relaxed) && Instant::now() < deadline {
                match s.write(&buf) {
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(e) => return Err(e.into()),
                }
            }
            // Stop now: discard what is still in the send buffer (SO_LINGER 0 resets the
            // connection on close) so the flow really ends when the schedule says.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: passes a valid `linger` of the stated length for a socket we own.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
            Ok(())
        })?;
        Ok(TcpRun { stop, recv, send })
    }

    fn wait(self) -> Res<Bins> {
        self.stop.store(true, Ordering::SeqCst);
        join(self.send)?;
        join(self.recv)
    }
}
