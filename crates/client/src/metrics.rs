//! The client's Prometheus metrics (optional; `client.metrics_port`, on a loopback
//! address only): cache size and use, bytes served to peers, bytes fetched by source
//! kind, downloads and WAN transfers running, and datagram drops by reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use branchline_store::{Cache, FsStorage};
use branchline_transport::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

/// Counters the downloads feed.
#[derive(Debug, Default)]
pub struct ClientMetrics {
    /// Verified bytes fetched, by source: origin, server, wan, lan.
    pub fetched: [AtomicU64; 4],
    /// Downloads running.
    pub downloads: AtomicI64,
    /// WAN transfers this client pulls as its office's RVP.
    pub wan_transfers: AtomicI64,
}

/// Index into [`ClientMetrics::fetched`]: read from the origin.
pub(crate) const ORIGIN: usize = 0;
/// Index into [`ClientMetrics::fetched`]: sent by the server from its own copy.
pub(crate) const SERVER: usize = 1;
/// Index into [`ClientMetrics::fetched`]: over the WAN link from the parent office.
pub(crate) const WAN: usize = 2;
/// Index into [`ClientMetrics::fetched`]: from same-office peers.
pub(crate) const LAN: usize = 3;
const SOURCES: [&str; 4] = ["origin", "server", "wan", "lan"];

impl ClientMetrics {
    /// Counts `bytes` verified bytes from `source` ([`ORIGIN`], [`SERVER`], [`WAN`] or
    /// [`LAN`]).
    pub(crate) fn fetched(&self, source: usize, bytes: u64) {
        self.fetched[source].fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped (a download or a WAN transfer that ends, however).
pub struct Running<'a>(&'a AtomicI64);

impl<'a> Running<'a> {
    /// Increments `g` until the returned guard is dropped.
    pub(crate) fn start(g: &'a AtomicI64) -> Running<'a> {
        g.fetch_add(1, Ordering::Relaxed);
        Running(g)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct ClientCollector {
    metrics: Arc<ClientMetrics>,
    cache: Arc<Cache<FsStorage>>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for ClientCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCollector")
    }
}

use branchline_transport::prom::{Labels, counters, gauges};

impl Collector for ClientCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let usage = self.cache.usage();
        gauges(
            &mut e,
            "cache_bytes",
            "The content cache: its cap and the bytes it uses",
            &[
                (vec![("kind", "cap".into())], usage.cap as i64),
                (vec![("kind", "used".into())], usage.used as i64),
            ],
        )?;
        let items = self.cache.list();
        let complete = items.iter().filter(|s| s.complete).count();
        gauges(
            &mut e,
            "cache_items",
            "Content items in the cache, complete or not",
            &[
                (vec![("state", "complete".into())], complete as i64),
                (
                    vec![("state", "partial".into())],
                    (items.len() - complete) as i64,
                ),
            ],
        )?;
        let m = self.cache.metrics().snapshot();
        counters(
            &mut e,
            "served_bytes",
            "Verified bytes read from the cache and served to peers",
            &[(vec![], m.bytes_served)],
        )?;
        let fetched: Vec<(Labels, u64)> = SOURCES
            .iter()
            .enumerate()
            .map(|(i, s)| {
                (
                    vec![("source", (*s).to_owned())],
                    self.metrics.fetched[i].load(Ordering::Relaxed),
                )
            })
            .collect();
        counters(
            &mut e,
            "fetched_bytes",
            "Verified bytes fetched, by source: origin, server, wan (parent office), lan (office peers)",
            &fetched,
        )?;
        gauges(
            &mut e,
            "downloads_active",
            "Downloads running",
            &[(vec![], self.metrics.downloads.load(Ordering::Relaxed))],
        )?;
        gauges(
            &mut e,
            "wan_transfers_active",
            "WAN transfers this client pulls as its office's RVP",
            &[(vec![], self.metrics.wan_transfers.load(Ordering::Relaxed))],
        )?;
        let drops: Vec<(Labels, u64)> = self
            .counters
            .snapshot()
            .into_iter()
            .map(|(r, n)| (vec![("reason", r.to_owned())], n))
            .collect();
        counters(
            &mut e,
            "dropped_datagrams",
            "Datagrams not acted on, by reason",
            &drops,
        )?;
        Ok(())
    }
}

/// Serves `/metrics` on `addr` (a loopback address) until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<ClientMetrics>,
    cache: Arc<Cache<FsStorage>>,
    counters: Arc<Counters>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("client metrics listen on loopback only, not {addr}"),
        ));
    }
    let mut registry = Registry::with_prefix("branchline_client");
    registry.register_collector(Box::new(ClientCollector {
        metrics,
        cache,
        counters,
    }));
    let registry = Arc::new(registry);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                use axum::response::IntoResponse;
                let mut out = String::new();
                match prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
                    Ok(()) => (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        out,
                    )
                        .into_response(),
                    Err(_) => (
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "cannot encode the metrics",
                    )
                        .into_response(),
                }
            }
        }),
    );
    tracing::info!(%addr, "client metrics at http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "client metrics endpoint stopped");
        }
    }))
}
