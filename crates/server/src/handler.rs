//! Small-message handlers of the server's request port (34323).
//!
//! Every handler validates before it acts, and is idempotent: registering twice refreshes
//! one record, a heartbeat only moves `last_seen` forward, activation upserts by host.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use branchline_transport::{Clock, Counters, DropReason, Handler, Response};
use branchline_wire::msg::{
    Ack, ActivateOk, DropCount, ErrorCode, ErrorReply, Health, HeartbeatAck, RegisterOk,
};
use branchline_wire::validate::{MAX_HOSTNAME, MAX_VERSION, text_field};
use branchline_wire::{Body, Invalid, SOFTWARE_VERSION};

use crate::db::{ConnectorRow, SCHEMA_VERSION, Writer};
use crate::registry::{Registered, Registry};

/// State shared by the server's handlers.
pub struct ServerState {
    pub registry: Mutex<Registry>,
    pub writer: Writer,
    pub counters: Arc<Counters>,
    pub clock: Arc<dyn Clock>,
    pub started: Instant,
    pub connectors_total: AtomicU64,
}

impl ServerState {
    /// The answer to a health request.
    pub fn health(&self) -> Health {
        let now = self.clock.now_ms();
        let (total, online) = self.registry.lock().expect("registry lock").counts(now);
        Health {
            version: SOFTWARE_VERSION.into(),
            uptime_s: self.started.elapsed().as_secs(),
            database: self.writer.health.describe(),
            schema_version: SCHEMA_VERSION as u32,
            clients_total: total,
            clients_online: online,
            dropped_datagrams: self.counters.total(),
            drops: self
                .counters
                .snapshot()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .map(|(reason, count)| DropCount {
                    reason: reason.into(),
                    count,
                })
                .collect(),
            connectors_total: self.connectors_total.load(Ordering::Relaxed),
        }
    }

    fn refuse(&self, e: Invalid) -> Response {
        self.counters.count(DropReason::Invalid);
        Response::Reply(error(
            ErrorCode::Invalid,
            e.to_string(),
            self.clock.now_ms(),
        ))
    }
}

fn error(code: ErrorCode, detail: String, now_ms: u64) -> Body {
    Body::Error(ErrorReply {
        code: code as i32,
        detail,
        receiver_time_ms: now_ms,
    })
}

/// The request-port handler.
pub struct ServerHandler(pub Arc<ServerState>);

impl Handler for ServerHandler {
    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        let s = &self.0;
        let now = s.clock.now_ms();
        match body {
            Body::Register(r) => {
                let reg = match r.validate() {
                    Ok(reg) => reg,
                    Err(e) => return s.refuse(e),
                };
                let (what, record) = {
                    let mut registry = s.registry.lock().expect("registry lock");
                    let (what, rec) = registry.register(reg, from, now);
                    (what, rec.clone())
                };
                if what == Registered::New {
                    tracing::info!(client = %record.id, host = %record.hostname, %from, "client enrolled");
                } else {
                    tracing::debug!(client = %record.id, %from, "client registered again");
                }
                let saved = s.writer.save_client(record);
                Response::Later(Box::pin(async move {
                    match saved.await {
                        Ok(()) => Body::RegisterOk(RegisterOk {
                            server_version: SOFTWARE_VERSION.into(),
                            server_time_ms: now,
                            new_client: what == Registered::New,
                        }),
                        Err(e) => error(
                            ErrorCode::Unavailable,
                            format!(
                                "the server could not store the registration ({e}); it will be retried"
                            ),
                            now,
                        ),
                    }
                }))
            }
            Body::Heartbeat(h) => {
                let beat = match h.validate() {
                    Ok(b) => b,
                    Err(e) => return s.refuse(e),
                };
                let known = {
                    let mut registry = s.registry.lock().expect("registry lock");
                    registry
                        .heartbeat(&beat, now)
                        .map(|r| (r.last_seen_ms, r.cache_free_bytes))
                };
                if let Some((last_seen, free)) = known {
                    s.writer.touch(beat.client_id, last_seen, free);
                }
                Response::Reply(Body::HeartbeatAck(HeartbeatAck {
                    known: known.is_some(),
                }))
            }
            Body::Activate(a) => {
                let fields = text_field("hostname", &a.hostname, MAX_HOSTNAME)
                    .and_then(|h| Ok((h, text_field("version", &a.version, MAX_VERSION)?)));
                let (hostname, version) = match fields {
                    Ok(f) => f,
                    Err(e) => return s.refuse(e),
                };
                tracing::info!(%hostname, %from, "connector activated");
                let saved = s.writer.save_connector(ConnectorRow {
                    hostname,
                    address: from,
                    version,
                    now_ms: now,
                });
                let state = s.clone();
                Response::Later(Box::pin(async move {
                    match saved.await {
                        Ok(first) => {
                            if first {
                                state.connectors_total.fetch_add(1, Ordering::Relaxed);
                            }
                            Body::ActivateOk(ActivateOk {
                                server_version: SOFTWARE_VERSION.into(),
                                first_activation: first,
                            })
                        }
                        Err(e) => error(
                            ErrorCode::Unavailable,
                            format!("the server could not record the activation ({e})"),
                            now,
                        ),
                    }
                }))
            }
            Body::HealthRequest(_) => Response::Reply(Body::Health(s.health())),
            Body::Ping(_) => Response::Reply(Body::Ack(Ack {})),
            other => {
                s.counters.count(DropReason::Unsupported);
                Response::Reply(error(
                    ErrorCode::Unsupported,
                    format!(
                        "the server does not accept {} on its request port",
                        other.kind()
                    ),
                    now,
                ))
            }
        }
    }
}
