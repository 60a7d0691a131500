//! Small-message handlers of the server's request port (34323).
//!
//! Every handler validates before it acts, and is idempotent: registering twice refreshes
//! one record, a heartbeat only moves `last_seen` forward, activation upserts by host.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use branchline_quic::{CertRequest, ClientName, DeploymentCa};
use branchline_store::ContentId;
use branchline_transport::{Clock, Counters, DropReason, Handler, Response};
use branchline_wire::msg::{
    Ack, ActivateOk, AdminPage, Assign, ContentList, ContentMeta, DropCount, ErrorCode, ErrorReply,
    Health, HeartbeatAck, MAX_ASSIGNMENTS, Published, RegisterOk,
};
use branchline_wire::validate::{MAX_HOSTNAME, MAX_VERSION, content_id, text_field};
use branchline_wire::{Body, ClientId, Invalid, SOFTWARE_VERSION};

use crate::catalogue::{Begin, Catalogue, Item, PublishError};
use crate::db::{ConnectorRow, SCHEMA_VERSION, Writer};
use crate::locations::Locations;
use crate::registry::{Registered, Registry};

/// Default validity of a client certificate (`server.client_cert_lifetime_s`); clients
/// get a fresh one at every registration and renew at two thirds of it.
pub const CLIENT_CERT_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// State shared by the server's handlers.
pub struct ServerState {
    /// The client registry; also read by the command line's `demo` table.
    pub registry: Mutex<Registry>,
    /// The database writer: every durable change goes through it.
    pub writer: Writer,
    /// Small-message counters (received, answered, dropped by reason), shared with the
    /// server's small-message endpoints; the health call and `/metrics` read them.
    pub counters: Arc<Counters>,
    /// The clock every handler reads: the system clock, the same as the endpoints'.
    pub clock: Arc<dyn Clock>,
    /// When the server started (the health call's `uptime_s`).
    pub started: Instant,
    /// Connectors activated, counted from the database at start (the health call's
    /// `connectors_total`).
    pub connectors_total: AtomicU64,
    /// Large-message requests answered (QUIC, 34333/34341).
    pub large_requests: AtomicU64,
    /// Refusals of the accepting QUIC ports (connection caps, deadlines, bad requests).
    pub quic_refusals: Arc<branchline_quic::AcceptStats>,
    /// Quotas on registrations (`crate::quota`).
    pub quota: Mutex<crate::quota::RegistrationQuota>,
    /// The deployment's certificate authority (issues client certificates).
    pub ca: DeploymentCa,
    /// Published content items and piece-map uploads in progress.
    pub catalogue: Mutex<Catalogue>,
    /// Who holds which pieces, and who reads the origin.
    pub locations: Mutex<Locations>,
    /// Content the server holds itself (opt-in).
    pub content: Option<Arc<crate::content::ServerContent>>,
    /// The office tree, placements and RVPs.
    pub offices: Mutex<crate::offices::Offices>,
    /// Deployments, relay assignments, byte counts per source kind.
    pub deployments: Mutex<crate::deploy::Deployments>,
    /// Admin call uploads and results.
    pub calls: Mutex<crate::admin::Calls>,
    /// The latest drop counters each client reported with its heartbeat.
    pub client_drops: Mutex<ClientDrops>,
    /// Live WAN transfers (Adaptive Protocol control signals) and the admin's pauses.
    pub transfers: Mutex<crate::transfers::Transfers>,
    /// Enrolled connectors: admin requests need one's credential (issue #10).
    pub connector_auth: Mutex<crate::trust::ConnectorAuth>,
    /// Client identities: key bindings, approval, revocation (issue #10).
    pub identities: Mutex<crate::identities::Identities>,
    /// Checks on clients' reports about peers (issue #10).
    pub reports: Mutex<crate::reports::Reports>,
    /// Revoked clients, shared with the server's QUIC endpoints (refused handshakes).
    pub revoked: branchline_quic::RevocationList,
    /// Server-initiated small messages (assignments) to send from the reply port.
    pub push_tx: tokio::sync::mpsc::Sender<(SocketAddr, Body)>,
    /// The deployment keys: current, previous during a rotation's overlap, who moved.
    pub keys: Mutex<crate::keys::KeyState>,
    /// The keys every small-message endpoint of the server accepts (shared with them).
    pub keyset: branchline_transport::KeySet,
    /// The data directory (key files).
    pub data_dir: std::path::PathBuf,
    /// Default overlap of a key rotation.
    pub key_overlap: std::time::Duration,
    /// Validity of issued client certificates.
    pub client_cert_lifetime: std::time::Duration,
}

impl ServerState {
    /// The current key's id and, during an overlap, when the previous key retires: what
    /// registration and heartbeat replies announce.
    pub fn key_announcement(&self) -> (u32, u64) {
        let keys = crate::lock(&self.keys);
        (keys.current().derive().id().0, keys.retire_ms())
    }

    /// Retires the previous deployment key once its overlap is over: from then on the
    /// endpoints drop what is sealed with it (counted `wrong_key`).
    pub fn retire_keys(&self) {
        let mut keys = crate::lock(&self.keys);
        let previous = keys.previous_view();
        if keys.tick(self.clock.now_ms()) {
            self.keyset.replace(keys.accepted());
            if let Err(e) = keys.save_previous(&self.data_dir) {
                tracing::warn!(error = %e, "cannot remove the retired key's file; it is not accepted any more regardless");
            }
            if let Some(p) = previous {
                tracing::info!(key_id = %p.key_id, fingerprint = %p.fingerprint, "the previous deployment key is retired: messages sealed with it are refused");
            }
        }
    }

    /// Queues an assignment for a client (dropped when the queue is full: the client's
    /// next heartbeat reply carries it anyway).
    pub fn push(&self, to: SocketAddr, assign: Assign) {
        if self.push_tx.try_send((to, Body::Assign(assign))).is_err() {
            tracing::debug!(%to, "assignment queue full; the heartbeat reply will carry it");
        }
    }

    /// The office a client sits in and its type, for its registration and heartbeat
    /// replies.
    pub fn office_of(&self, client: &ClientId) -> (String, String) {
        let offices = crate::lock(&self.offices);
        match offices.office_of(client) {
            Some(o) => {
                let spec = offices.tree().office(o);
                (spec.name.clone(), spec.kind.as_str().to_owned())
            }
            None => (String::new(), String::new()),
        }
    }

    /// Queues a pause or resume for a transfer's RVP.
    pub fn push_control(&self, to: SocketAddr, control: branchline_wire::msg::TransferControl) {
        if self
            .push_tx
            .try_send((to, Body::TransferControl(control)))
            .is_err()
        {
            tracing::debug!(%to, "push queue full; the RVP's next locate carries the pause");
        }
    }

    /// What a client should fetch now, for its heartbeat reply.
    pub fn assignments_of(&self, client: ClientId) -> Vec<Assign> {
        let office = {
            let offices = crate::lock(&self.offices);
            offices
                .office_of(&client)
                .map(|o| offices.tree().office(o).name.clone())
        };
        let locations = crate::lock(&self.locations);
        let complete = |c: &ContentId| locations.have(&client, c).is_some_and(|h| h.is_complete());
        crate::lock(&self.deployments)
            .assignments(client, office.as_deref(), complete, MAX_ASSIGNMENTS)
            .into_iter()
            .map(|(c, d)| Assign {
                content_id: c.as_bytes().to_vec(),
                deployment: d,
            })
            .collect()
    }

    /// The answer to a health request.
    pub fn health(&self) -> Health {
        let now = self.clock.now_ms();
        let (total, online) = crate::lock(&self.registry).counts(now);
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
                .chain(self.quic_refusals.snapshot())
                .chain(crate::lock(&self.quota).snapshot())
                .chain([("db_heartbeat_dropped", self.writer.touches_dropped())])
                .filter(|(_, n)| *n > 0)
                .map(|(reason, count)| DropCount {
                    reason: reason.into(),
                    count,
                })
                .collect(),
            connectors_total: self.connectors_total.load(Ordering::Relaxed),
            large_requests: self.large_requests.load(Ordering::Relaxed),
            client_drops: crate::lock(&self.client_drops)
                .sums()
                .into_iter()
                .map(|(reason, count)| DropCount { reason, count })
                .collect(),
        }
    }

    /// The catalogue entry of `item` as sent on the wire.
    pub fn meta_of(&self, item: &Item) -> ContentMeta {
        let id = ContentId::from_bytes(item.meta.content_id);
        ContentMeta {
            content_id: item.meta.content_id.to_vec(),
            name: item.meta.name.clone(),
            version: item.meta.version.clone(),
            size: item.meta.size,
            origin: item.meta.origin.clone(),
            piece_size: item.meta.piece_size,
            published_ms: item.published_ms,
            complete_holders: crate::lock(&self.locations).complete_holders(&id) as u32,
            server_holds: self.content.as_ref().is_some_and(|c| c.holds(&id)),
        }
    }

    /// Issues a client certificate for a validated certificate request.
    fn issue_cert(&self, client: &ClientId, request: &[u8]) -> Result<Vec<u8>, Invalid> {
        let bad = |e: String| Invalid {
            field: "cert_request",
            reason: e,
        };
        let request = CertRequest::decode(request).map_err(|e| bad(e.to_string()))?;
        let name = ClientName::from_id(&client.0).map_err(|e| bad(e.to_string()))?;
        let cert = self
            .ca
            .issue_client_cert(
                &name,
                &request,
                std::time::SystemTime::now(),
                self.client_cert_lifetime,
            )
            .map_err(|e| bad(e.to_string()))?;
        Ok(cert.to_vec())
    }

    /// Checks a registration against the id's key binding (issue #10). `Ok(b)`: go on,
    /// storing the new binding `b` if there is one (a registration without a key is
    /// allowed only for unbound ids in open enrollment); `Err`: the reply refusing it.
    fn admit_identity(
        &self,
        reg: &branchline_wire::validate::Registration,
        from: SocketAddr,
        now: u64,
    ) -> Result<Option<crate::identities::Identity>, Box<Response>> {
        use crate::identities::{Admission, Enrollment};
        let id = reg.client_id;
        let Some(req) = &reg.cert_request else {
            let ids = crate::lock(&self.identities);
            if ids.get(&id).is_some() {
                return Err(Box::new(self.unauthorized(format!(
                    "client {id} is bound to a key: register with a certificate request signed by it"
                ))));
            }
            if ids.mode() == Enrollment::Approve {
                return Err(Box::new(self.unauthorized(
                    "this server enrolls only clients with a certificate request (server.enrollment = \"approve\")".into(),
                )));
            }
            return Ok(None);
        };
        let request = match CertRequest::decode(req).and_then(|r| r.verify().map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                return Err(Box::new(self.refuse(Invalid {
                    field: "cert_request",
                    reason: e.to_string(),
                })));
            }
        };
        let admitted =
            crate::lock(&self.identities).admit(id, request.public_key, &reg.hostname, now);
        match admitted {
            Admission::Active { bound } => {
                if bound.is_some() {
                    tracing::info!(client = %id, key = %crate::identities::fingerprint(&request.public_key), %from, "client id bound to its key");
                }
                Ok(bound)
            }
            Admission::Pending { bound } => {
                if bound.is_some() {
                    tracing::warn!(client = %id, host = %reg.hostname, %from, "a new client waits for approval: branchline connector client approve {id}");
                }
                Ok(bound)
            }
            Admission::KeyMismatch { bound_fingerprint } => {
                tracing::warn!(client = %id, %from, bound = %bound_fingerprint, offered = %crate::identities::fingerprint(&request.public_key), "refused a registration with another key than the one this client id is bound to");
                Err(Box::new(self.unauthorized(format!(
                    "client id {id} is bound to another key (fingerprint {bound_fingerprint}); if this device was reinstalled, the admin runs `branchline connector client reset {id}`"
                ))))
            }
            Admission::Revoked => Err(Box::new(self.refuse_revoked(&id, from))),
            Admission::Full => Err(Box::new(Response::Reply(error(
                ErrorCode::Unavailable,
                "the server holds as many client identities as it may (approve or reset pending ones)".into(),
                now,
            )))),
        }
    }

    fn unauthorized(&self, detail: String) -> Response {
        self.counters.count(DropReason::Invalid);
        Response::Reply(error(ErrorCode::Unauthorized, detail, self.clock.now_ms()))
    }

    fn refuse_revoked(&self, id: &ClientId, from: SocketAddr) -> Response {
        tracing::info!(client = %id, %from, "refused a revoked client");
        self.unauthorized(format!(
            "client {id} is revoked by the admin; `branchline connector client reset {id}` lets it enroll again"
        ))
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

pub(crate) fn error(code: ErrorCode, detail: String, now_ms: u64) -> Body {
    Body::Error(ErrorReply {
        code: code as i32,
        detail,
        receiver_time_ms: now_ms,
    })
}

fn publish_error(e: PublishError, now_ms: u64) -> Body {
    let code = match e {
        PublishError::TooManyUploads => ErrorCode::Unavailable,
        PublishError::NoUpload(_) => ErrorCode::NotFound,
        _ => ErrorCode::Invalid,
    };
    error(code, e.to_string(), now_ms)
}

/// The latest drop counters each client reported, for at most [`MAX_CLIENT_DROPS`] clients.
#[derive(Debug, Default)]
pub struct ClientDrops {
    by_client: std::collections::HashMap<ClientId, Vec<(String, u64)>>,
}

/// Most clients whose drop counters are kept.
pub const MAX_CLIENT_DROPS: usize = 1_000_000;

impl ClientDrops {
    /// Keeps `client`'s latest drop counters (reason, count); an empty list forgets the
    /// client. Beyond [`MAX_CLIENT_DROPS`] clients, new ones are not kept.
    pub fn record(&mut self, client: ClientId, drops: Vec<(String, u64)>) {
        if drops.is_empty() {
            self.by_client.remove(&client);
        } else if self.by_client.len() < MAX_CLIENT_DROPS || self.by_client.contains_key(&client) {
            self.by_client.insert(client, drops);
        }
    }

    /// Per reason, summed over clients, sorted by reason.
    pub fn sums(&self) -> Vec<(String, u64)> {
        let mut sums: std::collections::BTreeMap<String, u64> = Default::default();
        for drops in self.by_client.values() {
            for (reason, n) in drops {
                *sums.entry(reason.clone()).or_default() += n;
            }
        }
        sums.into_iter().collect()
    }
}

/// The request-port handler.
pub struct ServerHandler(pub Arc<ServerState>);

impl Handler for ServerHandler {
    /// Also records which key a known client's registration or heartbeat was sealed with
    /// (`connector key status` shows who moved to a rotated key).
    fn handle_keyed(&self, from: SocketAddr, key: branchline_wire::KeyId, body: Body) -> Response {
        let client = match &body {
            Body::Heartbeat(h) => h.client_id.parse::<ClientId>().ok(),
            Body::Register(r) => r.client_id.parse::<ClientId>().ok(),
            _ => None,
        };
        let response = self.handle(from, body);
        if let Some(c) = client {
            let s = &self.0;
            let known = crate::lock(&s.registry).get(&c).is_some();
            if known {
                crate::lock(&s.keys).seen(c, key);
            }
        }
        response
    }

    fn handle(&self, from: SocketAddr, body: Body) -> Response {
        let s = &self.0;
        let now = s.clock.now_ms();
        // Admin requests count only inside a connector-signed message (issue #10).
        let body = match crate::trust::admit(s, from, body, now) {
            Ok(body) => body,
            Err(reply) => return Response::Reply(*reply),
        };
        match body {
            Body::Register(r) => {
                let reg = match r.validate() {
                    Ok(reg) => reg,
                    Err(e) => return s.refuse(e),
                };
                if let Err(refused) = s.admit_registration(&reg.client_id, from, now) {
                    return Response::Reply(*refused);
                }
                // The id is bound to the key of its first certificate request (issue #10).
                let bound = match s.admit_identity(&reg, from, now) {
                    Ok(bound) => bound,
                    Err(reply) => return *reply,
                };
                if crate::lock(&s.identities).state(&reg.client_id)
                    == Some(crate::identities::IdState::Pending)
                {
                    let saved = bound.map(|b| s.writer.save_identity(b.id, Some(b)));
                    return Response::Later(Box::pin(async move {
                        if let Some(saved) = saved
                            && let Err(e) = saved.await
                        {
                            return error(
                                ErrorCode::Unavailable,
                                format!(
                                    "the server could not store the enrollment ({e}); it will be retried"
                                ),
                                now,
                            );
                        }
                        Body::RegisterOk(RegisterOk {
                            server_version: SOFTWARE_VERSION.into(),
                            server_time_ms: now,
                            pending: true,
                            ..Default::default()
                        })
                    }));
                }
                let client_cert = match &reg.cert_request {
                    Some(req) => match s.issue_cert(&reg.client_id, req) {
                        Ok(c) => c,
                        Err(e) => return s.refuse(e),
                    },
                    None => Vec::new(),
                };
                let (ca_cert, deployment) = if client_cert.is_empty() {
                    (Vec::new(), String::new())
                } else {
                    (
                        s.ca.certificate().to_vec(),
                        s.ca.deployment().as_str().to_owned(),
                    )
                };
                let (what, record) = {
                    let mut registry = crate::lock(&s.registry);
                    let (what, rec) = registry.register(reg, from, now);
                    (what, rec.clone())
                };
                // Placed by the address the server sees, never by what the client says.
                crate::lock(&s.offices).place(record.id, from.ip());
                if what == Registered::New {
                    tracing::info!(client = %record.id, host = %record.hostname, %from, "client enrolled");
                } else {
                    tracing::debug!(client = %record.id, %from, "client registered again");
                }
                let (office, office_kind) = s.office_of(&record.id);
                let identity_saved = bound.map(|b| s.writer.save_identity(b.id, Some(b)));
                let (key_id, key_retire_ms) = s.key_announcement();
                let saved = s.writer.save_client(record);
                Response::Later(Box::pin(async move {
                    let saved = match identity_saved {
                        Some(i) => match i.await {
                            Ok(()) => saved.await,
                            Err(e) => Err(e),
                        },
                        None => saved.await,
                    };
                    match saved {
                        Ok(()) => Body::RegisterOk(RegisterOk {
                            server_version: SOFTWARE_VERSION.into(),
                            server_time_ms: now,
                            new_client: what == Registered::New,
                            client_cert,
                            ca_cert,
                            deployment,
                            office,
                            office_kind,
                            pending: false,
                            key_id,
                            key_retire_ms,
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
                if crate::lock(&s.identities).state(&beat.client_id)
                    == Some(crate::identities::IdState::Revoked)
                {
                    return s.refuse_revoked(&beat.client_id, from);
                }
                let known = {
                    let mut registry = crate::lock(&s.registry);
                    registry
                        .heartbeat(&beat, now)
                        .map(|r| (r.last_seen_ms, r.cache_free_bytes))
                };
                if let Some((last_seen, free)) = known {
                    s.writer.touch(beat.client_id, last_seen, free);
                }
                let (assignments, (office, office_kind)) = if known.is_some() {
                    if let Ok(drops) = branchline_wire::validate::drop_counts(&h.drops) {
                        crate::lock(&s.client_drops).record(beat.client_id, drops);
                    } else {
                        s.counters.count(DropReason::Invalid);
                    }
                    (
                        s.assignments_of(beat.client_id),
                        s.office_of(&beat.client_id),
                    )
                } else {
                    (Vec::new(), (String::new(), String::new()))
                };
                let (key_id, key_retire_ms) = s.key_announcement();
                Response::Reply(Body::HeartbeatAck(HeartbeatAck {
                    known: known.is_some(),
                    assignments,
                    office,
                    office_kind,
                    revocation_epoch: crate::lock(&s.identities).epoch(),
                    key_id,
                    key_retire_ms,
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
            Body::PublishBegin(b) => {
                let meta = match b.meta.as_ref().map(|m| m.validate()) {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return s.refuse(e),
                    None => {
                        return s.refuse(Invalid {
                            field: "meta",
                            reason: "missing".into(),
                        });
                    }
                };
                let id = meta.content_id;
                let begun = crate::lock(&s.catalogue).begin(meta, b.map_len as usize, now);
                match begun {
                    Ok(begin) => Response::Reply(Body::Published(Published {
                        content_id: id.to_vec(),
                        new_content: false,
                        needs_map: begin == Begin::NeedsMap,
                    })),
                    Err(e) => Response::Reply(publish_error(e, now)),
                }
            }
            Body::PublishChunk(c) => {
                let id = match content_id("content_id", &c.content_id) {
                    Ok(id) => ContentId::from_bytes(id),
                    Err(e) => return s.refuse(e),
                };
                let stored = crate::lock(&s.catalogue).chunk(&id, c.offset as usize, &c.data, now);
                match stored {
                    Ok(()) => Response::Reply(Body::Ack(Ack {})),
                    Err(e) => Response::Reply(publish_error(e, now)),
                }
            }
            Body::PublishCommit(c) => {
                let id = match content_id("content_id", &c.content_id) {
                    Ok(id) => ContentId::from_bytes(id),
                    Err(e) => return s.refuse(e),
                };
                let committed = crate::lock(&s.catalogue).commit(&id, now);
                match committed {
                    Ok(None) => Response::Reply(Body::Published(Published {
                        content_id: id.as_bytes().to_vec(),
                        new_content: false,
                        needs_map: false,
                    })),
                    Ok(Some(item)) => {
                        tracing::info!(content = %id, name = %item.meta.name, version = %item.meta.version, size = item.meta.size, "content published");
                        let saved = s.writer.save_content(item.clone());
                        let state = s.clone();
                        Response::Later(Box::pin(async move {
                            match saved.await {
                                Ok(()) => {
                                    if let Some(c) = &state.content {
                                        c.import_after_publish(&item);
                                    }
                                    crate::lock(&state.catalogue).insert(item);
                                    Body::Published(Published {
                                        content_id: id.as_bytes().to_vec(),
                                        new_content: true,
                                        needs_map: false,
                                    })
                                }
                                Err(e) => error(
                                    ErrorCode::Unavailable,
                                    format!(
                                        "the server could not store the content ({e}); publish again"
                                    ),
                                    now,
                                ),
                            }
                        }))
                    }
                    Err(e) => Response::Reply(publish_error(e, now)),
                }
            }
            Body::ListContent(l) => {
                let metas: Vec<ContentMeta> = {
                    let cat = crate::lock(&s.catalogue);
                    cat.list().into_iter().map(|i| s.meta_of(i)).collect()
                };
                let total = metas.len() as u32;
                let mut page = ContentList {
                    items: Vec::new(),
                    total,
                };
                // As many items as fit in one datagram, with room for the envelope.
                for m in metas.into_iter().skip(l.offset as usize) {
                    page.items.push(m);
                    if prost::Message::encoded_len(&page)
                        > branchline_wire::frame::MAX_PLAINTEXT - 64
                    {
                        page.items.pop();
                        break;
                    }
                }
                Response::Reply(Body::ContentList(page))
            }
            Body::AdminChunk(c) => {
                let stored = crate::lock(&s.calls).chunk(
                    c.call_id,
                    c.total_len as usize,
                    c.offset as usize,
                    &c.data,
                    now,
                );
                match stored {
                    Ok(()) => Response::Reply(Body::Ack(Ack {})),
                    Err(e) => Response::Reply(error(ErrorCode::Invalid, e.to_string(), now)),
                }
            }
            Body::AdminRun(r) => {
                let found = crate::lock(&s.calls).run(r.call_id, r.offset as usize, now);
                let call_id = r.call_id;
                match found {
                    Ok(crate::admin::Run::Page { total_len, data }) => {
                        Response::Reply(Body::AdminPage(AdminPage {
                            call_id,
                            total_len,
                            offset: r.offset,
                            data,
                        }))
                    }
                    Ok(crate::admin::Run::Execute(request)) => {
                        let state = s.clone();
                        Response::Later(Box::pin(async move {
                            let result =
                                match serde_json::from_slice::<crate::admin::AdminCall>(&request) {
                                    Ok(call) => crate::calls::execute(state.clone(), call).await,
                                    Err(e) => crate::admin::AdminResult::invalid(format!(
                                        "the server does not understand this admin call: {e}"
                                    )),
                                };
                            let now = state.clock.now_ms();
                            let mut calls = crate::lock(&state.calls);
                            calls.finish(call_id, &result, now);
                            match calls.run(call_id, 0, now) {
                                Ok(crate::admin::Run::Page { total_len, data }) => {
                                    Body::AdminPage(AdminPage {
                                        call_id,
                                        total_len,
                                        offset: 0,
                                        data,
                                    })
                                }
                                _ => error(
                                    ErrorCode::Unavailable,
                                    "the admin result was lost; run the call again".into(),
                                    now,
                                ),
                            }
                        }))
                    }
                    Err(e) => Response::Reply(error(ErrorCode::NotFound, e.to_string(), now)),
                }
            }
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
