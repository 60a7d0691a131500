//! The server's Prometheus metrics (`/metrics`, text format 0.0.4).
//!
//! Counted as they happen ([`Metrics`], fed by [`Metered`] around the request-port
//! handler and by the database writer): small messages received and answered per kind,
//! registrations, heartbeats, database commit latency, refused admin requests. Read from
//! the server's state at each scrape ([`StateCollector`]): drops per reason, clients
//! per office, WAN transfers and bytes per link, bytes per source kind and office, RVP
//! elections, deployments' progress.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use branchline_transport::{Handler, Response};
use branchline_wire::Body;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::handler::ServerState;

/// Labels of a small-message counter: the request kind (and for answers, the result).
pub type KindLabels = Vec<(&'static str, &'static str)>;

/// Counters fed as things happen.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `branchline_small_messages_received_total{kind}`: requests on the request port,
    /// after authentication.
    pub received: Family<KindLabels, Counter>,
    /// `branchline_small_messages_answered_total{kind,result}`: answers, `result` = `ok` or
    /// `error`.
    pub answered: Family<KindLabels, Counter>,
    /// `branchline_registrations_total`: `Register` messages received.
    pub registrations: Counter,
    /// `branchline_heartbeats_total`: `Heartbeat` messages received.
    pub heartbeats: Counter,
    /// `branchline_admin_refused_requests_total`: admin endpoint requests refused for a
    /// missing or wrong token.
    pub admin_refused: Counter,
}

/// The request-port handler with its messages counted.
pub struct Metered<H> {
    inner: H,
    metrics: Arc<Metrics>,
}

impl<H> Metered<H> {
    /// Wraps `inner`, counting each message it handles in `metrics`.
    pub fn new(inner: H, metrics: Arc<Metrics>) -> Metered<H> {
        Metered { inner, metrics }
    }
}

fn result_of(b: &Body) -> &'static str {
    match b {
        Body::Error(_) => "error",
        _ => "ok",
    }
}

impl<H: Handler> Handler for Metered<H> {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        self.metered(body, |b| self.inner.handle(from, b))
    }

    fn handle_keyed(&self, from: SocketAddr, key: branchline_wire::KeyId, body: Body) -> Response {
        self.metered(body, |b| self.inner.handle_keyed(from, key, b))
    }
}

impl<H: Handler> Metered<H> {
    fn metered(&self, body: Body, inner: impl FnOnce(Body) -> Response) -> Response {
        let kind = body.kind();
        let m = &self.metrics;
        m.received.get_or_create(&vec![("kind", kind)]).inc();
        match &body {
            Body::Register(_) => {
                m.registrations.inc();
            }
            Body::Heartbeat(_) => {
                m.heartbeats.inc();
            }
            _ => {}
        }
        match inner(body) {
            Response::Reply(b) => {
                m.answered
                    .get_or_create(&vec![("kind", kind), ("result", result_of(&b))])
                    .inc();
                Response::Reply(b)
            }
            Response::Later(f) => {
                let m = self.metrics.clone();
                Response::Later(Box::pin(async move {
                    let b = f.await;
                    m.answered
                        .get_or_create(&vec![("kind", kind), ("result", result_of(&b))])
                        .inc();
                    b
                }))
            }
            Response::Silent => Response::Silent,
        }
    }
}

/// The registry served at `/metrics`.
pub fn registry(metrics: Arc<Metrics>, state: Arc<ServerState>) -> Registry {
    let mut r = Registry::with_prefix("branchline");
    r.register(
        "small_messages_received",
        "Small messages received on the request port, by kind (after authentication)",
        metrics.received.clone(),
    );
    r.register(
        "small_messages_answered",
        "Small messages answered, by kind and result (ok or error)",
        metrics.answered.clone(),
    );
    r.register(
        "registrations",
        "Client registrations received",
        metrics.registrations.clone(),
    );
    r.register(
        "heartbeats",
        "Client heartbeats received",
        metrics.heartbeats.clone(),
    );
    r.register(
        "admin_refused_requests",
        "Admin endpoint requests refused for a missing or wrong token",
        metrics.admin_refused.clone(),
    );
    r.register_with_unit(
        "db_commit",
        "Time taken by each database commit (one transaction)",
        prometheus_client::registry::Unit::Seconds,
        state.writer.commit_seconds.clone(),
    );
    r.register_collector(Box::new(StateCollector(state)));
    r
}

/// Metrics read from the server's state at each scrape.
pub struct StateCollector(pub Arc<ServerState>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

use branchline_transport::prom::{Labels, counters, gauges};

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        // Drops, by reason (every reason, zero included, so rates work from the start).
        let drops: Vec<(Labels, u64)> = s
            .counters
            .snapshot()
            .into_iter()
            .map(|(reason, n)| (vec![("reason", reason.to_owned())], n))
            .collect();
        counters(
            &mut e,
            "small_messages_dropped",
            "Datagrams not acted on, by reason",
            &drops,
        )?;
        counters(
            &mut e,
            "large_requests",
            "Large-message requests answered (QUIC)",
            &[(
                vec![],
                s.large_requests.load(std::sync::atomic::Ordering::Relaxed),
            )],
        )?;

        // Clients per office.
        let topo = crate::calls::topology_view(s);
        let online: Vec<(Labels, i64)> = topo
            .offices
            .iter()
            .map(|o| (vec![("office", o.name.clone())], o.clients_online as i64))
            .collect();
        let total: Vec<(Labels, i64)> = topo
            .offices
            .iter()
            .map(|o| (vec![("office", o.name.clone())], o.clients_total as i64))
            .collect();
        gauges(
            &mut e,
            "clients_online",
            "Clients online, per office",
            &online,
        )?;
        gauges(
            &mut e,
            "clients_enrolled",
            "Clients placed in each office (online or not)",
            &total,
        )?;

        // WAN transfers admitted to each office's link.
        let transfers = crate::lock(&s.offices).transfers();
        let active: Vec<(Labels, i64)> = topo
            .offices
            .iter()
            .filter(|o| o.parent.is_some())
            .map(|o| {
                let n = transfers
                    .iter()
                    .find(|(name, _)| *name == o.name)
                    .map(|(_, v)| v.len())
                    .unwrap_or(0);
                (vec![("office", o.name.clone())], n as i64)
            })
            .collect();
        gauges(
            &mut e,
            "wan_transfers_active",
            "Content items crossing each office's WAN link (into the office) now",
            &active,
        )?;

        // Bytes per office and source kind, over every content item.
        let ids: Vec<(branchline_store::ContentId, String)> = crate::lock(&s.catalogue)
            .list()
            .iter()
            .map(|i| {
                (
                    branchline_store::ContentId::from_bytes(i.meta.content_id),
                    format!("{}@{}", i.meta.name, i.meta.version),
                )
            })
            .collect();
        let mut per_office: BTreeMap<String, [u64; 6]> = BTreeMap::new();
        for (id, name) in &ids {
            let st = crate::calls::status(s, *id, name.clone());
            for o in st.offices {
                let row = per_office.entry(o.office.clone()).or_default();
                row[0] += o.bytes_origin;
                row[1] += o.bytes_server;
                row[2] += o.bytes_wan_in;
                row[3] += o.bytes_lan;
                row[4] += o.bytes_wan_in;
                row[5] += o.bytes_wan_out;
            }
        }
        let mut by_source = Vec::new();
        let mut wan = Vec::new();
        for (office, row) in &per_office {
            for (i, source) in ["origin", "server", "wan", "lan"].iter().enumerate() {
                by_source.push((
                    vec![("office", office.clone()), ("source", (*source).to_owned())],
                    row[i],
                ));
            }
            wan.push((
                vec![("office", office.clone()), ("direction", "in".to_owned())],
                row[4],
            ));
            wan.push((
                vec![("office", office.clone()), ("direction", "out".to_owned())],
                row[5],
            ));
        }
        counters(
            &mut e,
            "bytes",
            "Verified bytes clients received, per office and source kind (origin, server, wan: the parent office over the link, lan: office peers)",
            &by_source,
        )?;
        counters(
            &mut e,
            "wan_bytes",
            "Bytes over each office's WAN link: in (from its parent office) and out (to its child offices)",
            &wan,
        )?;

        let elections = crate::lock(&s.offices).elections;
        counters(
            &mut e,
            "rvp_elections",
            "RVP elections held (a new or replaced RVP for an office and content)",
            &[(vec![], elections)],
        )?;

        // Deployments: targeted clients and those done.
        let deps = crate::calls::deployments_view(s);
        let mut done = Vec::new();
        let mut targeted = Vec::new();
        for d in &deps.deployments {
            let labels = vec![
                ("deployment", d.deployment.to_string()),
                ("content", d.status.content.clone()),
            ];
            done.push((labels.clone(), d.clients_done as i64));
            targeted.push((labels, d.clients_total as i64));
        }
        gauges(
            &mut e,
            "deployment_clients_done",
            "Targeted clients holding the deployment's content complete",
            &done,
        )?;
        gauges(
            &mut e,
            "deployment_clients_targeted",
            "Clients a deployment targets (known now)",
            &targeted,
        )?;
        gauges(
            &mut e,
            "deployments",
            "Deployments made",
            &[(vec![], deps.deployments.len() as i64)],
        )?;
        Ok(())
    }
}
