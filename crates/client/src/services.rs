//! What a client runs once it holds a certificate: its content cache served to peers over
//! QUIC (Foreground, 34760), large messages to the server (from 34335 to the server's
//! 34333), and connection pools to the server and to peers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use branchline_quic::{
    AcceptLimits, AcceptStats, Congestion, ConnectionPool, ContentConfig, ContentNode,
    DeploymentTrust, LargeConfig, LargeMessaging, NodeIdentity, Role, TransportSettings,
    transport_config,
};
use branchline_store::{Cache, ContentId, FsStorage};
use branchline_wire::large::{LargeRequest, LargeResponse, Request, Response};
use branchline_wire::msg::ErrorCode;
use bytes::Bytes;
use prost::Message as _;
use tokio::task::JoinHandle;

/// Unix milliseconds now (the cache's clock).
pub use branchline_time::now_ms;

/// A large exchange with the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerCallError {
    /// No QUIC connection to the server's large-message port could be made.
    #[error("cannot reach the server over QUIC at {addr}: {message}")]
    Connect {
        /// The server's Foreground large-message address.
        addr: SocketAddr,
        /// Why (timeout, TLS refusal, ...).
        message: String,
    },
    /// Two attempts failed on the stream (an error frame, a reset, or no answer within
    /// 30 s); the message is the last failure.
    #[error("large message to the server failed: {0}")]
    Exchange(String),
    /// The server's answer is not a `LargeResponse` or is empty (also: an unexpected
    /// answer to `GetRevocations`).
    #[error("the server's answer does not decode: {0}")]
    Decode(String),
    /// The server understood the request and refused it.
    #[error("the server refused ({code:?}): {detail}")]
    Refused {
        /// The server's code (unknown codes read as `Unspecified`).
        code: ErrorCode,
        /// The server's explanation.
        detail: String,
    },
}

pub use branchline_quic::cache_source::CacheSource;

/// The QUIC side of a client.
pub struct Services {
    /// The identity every endpoint presents; [`NodeIdentity::renew`] on it hot-swaps the
    /// certificate of all of them.
    pub identity: NodeIdentity,
    /// The client's content cache, served to peers.
    pub cache: Arc<Cache<FsStorage>>,
    /// Foreground content (34760): same office.
    pub content: ContentNode,
    /// Background content (34750, LEDBAT++): served to child offices.
    pub content_bg: ContentNode,
    /// Foreground large messages (34337 accepts, 34335 connects).
    pub large: LargeMessaging,
    /// Background large messages (34345 accepts, 34343 connects, LEDBAT++).
    pub large_bg: LargeMessaging,
    /// The connection to the server's Foreground large-message port, from our 34335.
    pub server_pool: ConnectionPool,
    /// Connections to same-office peers' 34760 (Foreground), from our 34760.
    pub peer_pool: ConnectionPool,
    /// Connections to parent-office peers' 34750 (Background, LEDBAT++), from our 34750.
    pub upstream_pool: ConnectionPool,
    /// Subnet discovery (34329): peers found without the server.
    pub discovery: Arc<crate::discovery::Discovery>,
    /// Adaptive Protocol control signals (34545 / 34546).
    pub signals: Arc<crate::adaptive::Signals>,
    /// Counters for the optional metrics endpoint.
    pub metrics: Arc<crate::metrics::ClientMetrics>,
    /// One download per content item at a time (a `get` and a deployment share it).
    pub downloads: Mutex<std::collections::HashMap<ContentId, Arc<tokio::sync::Mutex<()>>>>,
    /// The server's Foreground large-message address (its IP, port 34333 by default).
    pub server_large: SocketAddr,
    /// This client's Foreground content port (34760 by default), reported to the server.
    pub content_port: u16,
    /// Content found corrupted while serving; reported to the server with the heartbeat.
    pub corrupted: Arc<Mutex<HashSet<ContentId>>>,
    /// The connection the server opened to this client's 34760 to send it content (a
    /// Central Office client), once there is one.
    pub server_conn: Arc<Mutex<Option<quinn::Connection>>>,
    /// The clients the server revoked, shared by every endpoint and pool of this client
    /// (refused at each handshake and at each new stream).
    pub revoked: branchline_quic::RevocationList,
    /// Refusals of the accepting QUIC ports (over a connection cap, late handshakes
    /// and requests, bad requests), reported with the heartbeat's drops.
    pub accept_stats: Arc<AcceptStats>,
    /// The accept loops, by name.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for (_, t) in &self.tasks {
            t.abort();
        }
        self.content.close();
        self.content_bg.close();
        self.large.close();
        self.large_bg.close();
    }
}

/// Most WAN links given their own LEDBAT++ factory; peers beyond share the default one.
pub const MAX_LINK_FACTORIES: usize = 256;

/// The link a peer is reached over, as the client can tell it: the peer's /24 (IPv6:
/// /64). Offices are subnets, so peers of one office share a key.
pub fn link_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            std::net::Ipv4Addr::new(a, b, c, 0).into()
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0).into()
        }
    }
}

/// A transport selector giving each WAN link (peer subnet) its own LEDBAT++ factory,
/// so the configured Background ceiling applies per link, not per node.
pub fn per_link_transports(
    config: branchline_ledbat::LedbatConfig,
) -> branchline_quic::endpoint::TransportSelector {
    let links: Mutex<std::collections::HashMap<std::net::IpAddr, Arc<quinn::TransportConfig>>> =
        Mutex::default();
    Arc::new(move |addr: SocketAddr| {
        let key = link_key(addr.ip());
        let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = links.get(&key) {
            return Some(t.clone());
        }
        if links.len() >= MAX_LINK_FACTORIES {
            return None;
        }
        let factory = Arc::new(branchline_ledbat::LedbatFactory::new(config.clone()).ok()?);
        let t = Arc::new(branchline_quic::background_transport(
            &TransportSettings::default(),
            factory,
        ));
        links.insert(key, t.clone());
        Some(t)
    })
}

/// The client's TLS trust: its own deployment's CA only.
pub fn trust_of(
    identity: &NodeIdentity,
    ca: branchline_quic::CertificateDer<'static>,
) -> DeploymentTrust {
    DeploymentTrust::new(identity.deployment.clone(), ca)
}

impl Services {
    /// Binds the content and large-message endpoints on the client's bind address and
    /// ports (`opts`) and starts serving the cache.
    pub fn start(
        opts: &crate::ClientOptions,
        identity: &NodeIdentity,
        trust: DeploymentTrust,
        cache: Arc<Cache<FsStorage>>,
        discovery: Arc<crate::discovery::Discovery>,
        signals: Arc<crate::adaptive::Signals>,
        metrics: Arc<crate::metrics::ClientMetrics>,
    ) -> Result<Services, String> {
        let (bind, ports, server, server_ports) =
            (opts.bind, &opts.ports, opts.server, &opts.server_ports);
        let background = opts.background.clone();
        let transport = Arc::new(transport_config(
            &TransportSettings::default(),
            &Congestion::Foreground,
        ));
        let mut content = ContentNode::bind(
            SocketAddr::new(bind, ports.content_fg),
            identity,
            trust.clone(),
            transport.clone(),
            ContentConfig::default(),
        )
        .map_err(|e| format!("client.content_fg ({bind}:{}): {e}", ports.content_fg))?;
        let mut large = LargeMessaging::bind(
            SocketAddr::new(bind, ports.large_fg_request),
            SocketAddr::new(bind, ports.large_fg_reply),
            identity,
            trust.clone(),
            transport,
            LargeConfig {
                max_payload: 16 << 20,
                ..LargeConfig::default()
            },
        )
        .map_err(|e| {
            format!(
                "client.large_fg_request/large_fg_reply ({bind}:{}/{}): {e}",
                ports.large_fg_request, ports.large_fg_reply
            )
        })?;
        // Background: LEDBAT++ on every Background port, so transfers to other offices
        // yield to any other traffic on the WAN link.
        let ledbat = Arc::new(
            branchline_ledbat::LedbatFactory::new(background)
                .map_err(|e| format!("LEDBAT++ configuration: {e}"))?,
        );
        let background = Arc::new(branchline_quic::background_transport(
            &TransportSettings::default(),
            ledbat,
        ));
        let mut content_bg = ContentNode::bind(
            SocketAddr::new(bind, ports.content_bg),
            identity,
            trust.clone(),
            background.clone(),
            ContentConfig::default(),
        )
        .map_err(|e| format!("client.content_bg ({bind}:{}): {e}", ports.content_bg))?;
        // One LEDBAT++ factory per WAN link: every Background connection with peers behind
        // one link (one subnet) shares that link's ceiling.
        content_bg.set_transport_selector(per_link_transports(opts.background.clone()));
        let mut large_bg = LargeMessaging::bind(
            SocketAddr::new(bind, ports.large_bg_request),
            SocketAddr::new(bind, ports.large_bg_reply),
            identity,
            trust.clone(),
            background,
            LargeConfig {
                max_payload: 16 << 20,
                ..LargeConfig::default()
            },
        )
        .map_err(|e| {
            format!(
                "client.large_bg_request/large_bg_reply ({bind}:{}/{}): {e}",
                ports.large_bg_request, ports.large_bg_reply
            )
        })?;
        // Bounds on what peers may hold on the accepting ports (connections per
        // identity and in all, handshake and request deadlines), counted together.
        let accept_stats = Arc::new(AcceptStats::default());
        content.set_accept_limits(AcceptLimits::default(), accept_stats.clone());
        content_bg.set_accept_limits(AcceptLimits::default(), accept_stats.clone());
        large.set_accept_limits(AcceptLimits::default(), accept_stats.clone());
        large_bg.set_accept_limits(AcceptLimits::default(), accept_stats.clone());
        let corrupted = Arc::new(Mutex::new(HashSet::new()));
        let source = Arc::new(CacheSource {
            cache: cache.clone(),
            corrupted: Some(corrupted.clone()),
        });
        let server_conn: Arc<Mutex<Option<quinn::Connection>>> = Arc::default();
        let slot = server_conn.clone();
        let hook: branchline_quic::endpoint::ConnectionHook = Arc::new(move |conn, peer| {
            if peer.role == Role::Server {
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            }
        });
        let serving = content.serve_hooked(source.clone(), Some(hook));
        let serving_bg = content_bg.serve(source);
        // No client-to-client large message exists yet; answer politely.
        let no_large = |_peer, _bytes| async {
            Err(branchline_quic::HandlerError(
                "this client serves no large messages yet".into(),
            ))
        };
        let large_serving = large.serve(no_large);
        let large_bg_serving = large_bg.serve(no_large);
        let server_pool = ConnectionPool::new(large.reply_endpoint().clone(), trust.clone());
        let peer_pool = ConnectionPool::new(content.endpoint().clone(), trust.clone());
        let revoked = trust.revoked.clone();
        let upstream_pool = ConnectionPool::new(content_bg.endpoint().clone(), trust);
        Ok(Services {
            revoked,
            identity: identity.clone(),
            cache,
            content,
            content_bg,
            large,
            large_bg,
            server_pool,
            peer_pool,
            upstream_pool,
            discovery,
            signals,
            metrics,
            downloads: Mutex::default(),
            server_large: SocketAddr::new(server, server_ports.large_fg_request),
            content_port: ports.content_fg,
            corrupted,
            server_conn,
            accept_stats,
            tasks: vec![
                ("client.content_fg (QUIC accept)", serving),
                ("client.content_bg (QUIC accept)", serving_bg),
                ("client.large_fg_request (QUIC accept)", large_serving),
                ("client.large_bg_request (QUIC accept)", large_bg_serving),
            ],
        })
    }

    /// Replaces the revoked clients with `clients` (client ids as the server sent them;
    /// at most [`branchline_wire::large::MAX_REVOKED`] are read) and closes pooled
    /// connections to any of them. Returns how many clients are revoked now.
    pub fn apply_revocations(&self, clients: &[String]) -> usize {
        let names: Vec<branchline_quic::ClientName> = clients
            .iter()
            .take(branchline_wire::large::MAX_REVOKED)
            .filter_map(|c| branchline_quic::ClientName::new(c.clone()).ok())
            .collect();
        let n = names.len();
        if self.revoked.replace_clients(names) {
            let closed =
                self.server_pool.prune() + self.peer_pool.prune() + self.upstream_pool.prune();
            tracing::info!(
                revoked = n,
                closed,
                "revocation list updated; revoked peers are refused"
            );
        }
        n
    }

    /// Asks the server for the revocation list and applies it. Returns its epoch.
    pub async fn refresh_revocations(&self) -> Result<u64, ServerCallError> {
        match self
            .call(Request::GetRevocations(
                branchline_wire::large::GetRevocations {},
            ))
            .await?
        {
            Response::Revocations(r) => {
                self.apply_revocations(&r.clients);
                Ok(r.epoch)
            }
            Response::Error(e) => Err(ServerCallError::Refused {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                detail: e.detail,
            }),
            _ => Err(ServerCallError::Decode(
                "unexpected answer to GetRevocations".into(),
            )),
        }
    }

    /// Supervises the accept loops: one that stops (it should not while the services
    /// run) is reported to `spawner`'s supervisor, which takes the daemon down.
    pub fn supervise(&mut self, spawner: &branchline_transport::Spawner) {
        for (name, task) in &mut self.tasks {
            let running = std::mem::replace(task, tokio::spawn(async {}));
            *task = spawner.watch(name, running);
        }
    }

    /// The lock that keeps one download per content item.
    pub fn download_lock(&self, id: ContentId) -> Arc<tokio::sync::Mutex<()>> {
        self.downloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// One large request to the server, reconnecting once if the pooled connection died.
    pub async fn call(&self, request: Request) -> Result<Response, ServerCallError> {
        let bytes: Bytes = LargeRequest {
            request: Some(request),
        }
        .encode_to_vec()
        .into();
        let mut last = String::new();
        for _attempt in 0..2 {
            let (conn, _) = self
                .server_pool
                .get(self.server_large, &Role::Server)
                .await
                .map_err(|e| ServerCallError::Connect {
                    addr: self.server_large,
                    message: e.to_string(),
                })?;
            match tokio::time::timeout(
                Duration::from_secs(30),
                self.large.request(&conn, bytes.clone()),
            )
            .await
            {
                Ok(Ok(reply)) => {
                    let resp = LargeResponse::decode(reply)
                        .map_err(|e| ServerCallError::Decode(e.to_string()))?;
                    return match resp.response {
                        Some(Response::Error(e)) => Err(ServerCallError::Refused {
                            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                            detail: e.detail,
                        }),
                        Some(r) => Ok(r),
                        None => Err(ServerCallError::Decode("empty response".into())),
                    };
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 30 s".into(),
            }
            self.server_pool.forget(self.server_large, &Role::Server);
        }
        Err(ServerCallError::Exchange(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_of_one_subnet_share_a_link_factory() {
        let select = per_link_transports(branchline_ledbat::LedbatConfig::default());
        let at = |s: &str| select(s.parse().unwrap()).expect("a transport");
        let a = at("198.18.2.5:34750");
        let b = at("198.18.2.9:40000");
        let c = at("198.18.3.5:34750");
        assert!(Arc::ptr_eq(&a, &b), "one link, one factory");
        assert!(!Arc::ptr_eq(&a, &c), "another link, another factory");
        let v6 = at("[fd00:1:2:3::5]:34750");
        let v6b = at("[fd00:1:2:3::9]:34750");
        assert!(Arc::ptr_eq(&v6, &v6b));
    }

    #[test]
    fn link_factories_are_bounded() {
        let select = per_link_transports(branchline_ledbat::LedbatConfig::default());
        for i in 0..MAX_LINK_FACTORIES {
            let addr = SocketAddr::new(
                std::net::Ipv4Addr::new(10, (i / 256) as u8, (i % 256) as u8, 1).into(),
                1,
            );
            assert!(select(addr).is_some());
        }
        assert!(
            select("10.200.0.1:1".parse().unwrap()).is_none(),
            "beyond the bound: the shared default"
        );
    }
}
