//! The server's durable metadata: SQLite (via sqlx) with versioned migrations.
//!
//! Writes go through one [`Writer`] task that batches them into transactions:
//! * registrations and connector activations are committed before they are answered
//!   (the caller awaits the commit), so an acknowledged enrolment is never lost;
//! * heartbeats only move `last_seen` and free space: they are coalesced in memory and
//!   flushed once a second (and on shutdown), so 100,000 clients heartbeating cost a few
//!   transactions a second, not 3,000. A crash loses at most that second of `last_seen`.
//!
//! The writer's queue is bounded ([`WRITE_QUEUE`] operations): when writes back up (a
//! slow disk, a registration flood), a new registration is answered at once with "busy,
//! retry" (the client retries with backoff) and a heartbeat's coalesced update is
//! dropped (its next heartbeat carries the same), each counted ([`Writer::refused_busy`],
//! [`Writer::touches_dropped`]), instead of holding unbounded memory. Admin writes
//! (publish, topology, deployments, connectors) wait for room.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use branchline_wire::ClientId;
use branchline_wire::validate::{Ports, Subnet};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, SqlSafeStr};
use tokio::sync::{mpsc, oneshot};

use crate::catalogue::Item;
use crate::deploy::{Deployment, Target};
use crate::identities::{IdState, Identity};
use crate::registry::ClientRecord;
use branchline_store::{ContentId, PieceMap};
use branchline_wire::validate::Meta;

/// Migrations, embedded in the binary. Append only; never edit an applied one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "clients", include_str!("../migrations/0001_clients.sql")),
    (
        2,
        "contents",
        include_str!("../migrations/0002_contents.sql"),
    ),
    (3, "offices", include_str!("../migrations/0003_offices.sql")),
    (
        4,
        "identities",
        include_str!("../migrations/0004_identities.sql"),
    ),
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// A database failure.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The file cannot be opened or created.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: sqlx::Error,
    },
    /// The schema cannot be brought to [`SCHEMA_VERSION`] (e.g. a database written by a
    /// newer build).
    #[error("cannot migrate database {path} to schema version {SCHEMA_VERSION}: {source}")]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// Why.
        source: sqlx::migrate::MigrateError,
    },
    /// A stored row does not parse; the server refuses to start rather than guess.
    #[error("database {path} has a row that does not parse ({what}): was it edited by hand?")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which row and field, and why.
        what: String,
    },
    /// A query or commit failed.
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

/// An open database.
#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub async fn open(path: &Path) -> Result<Db, DbError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| DbError::Open {
                path: path.to_owned(),
                source,
            })?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    Cow::Borrowed(*d),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        Migrator::with_migrations(migrations)
            .run(&pool)
            .await
            .map_err(|source| DbError::Migrate {
                path: path.to_owned(),
                source,
            })?;
        Ok(Db {
            pool,
            path: path.to_owned(),
        })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `sql` and decodes each row it returns with `decode`.
    async fn load_rows<T>(
        &self,
        sql: &'static str,
        decode: impl Fn(&sqlx::sqlite::SqliteRow) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter().map(decode).collect()
    }

    /// A [`DbError::Corrupt`] of this database: `what` says which row and field, and why.
    fn corrupt(&self, what: String) -> DbError {
        DbError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Every client record.
    pub async fn load_clients(&self) -> Result<Vec<ClientRecord>, DbError> {
        const SQL: &str = "SELECT id, hostname, addresses, source_address, subnet, \
            cache_size_bytes, cache_free_bytes, version, heartbeat_interval_ms, ports, \
            first_seen_ms, last_seen_ms FROM clients";
        self.load_rows(SQL, |row| {
            let id: String = row.try_get("id")?;
            let addresses: String = row.try_get("addresses")?;
            let source: Option<String> = row.try_get("source_address")?;
            let subnet: String = row.try_get("subnet")?;
            let ports: Option<String> = row.try_get("ports")?;
            Ok(ClientRecord {
                id: ClientId::from_str(&id)
                    .map_err(|e| self.corrupt(format!("client id {id:?}: {e}")))?,
                hostname: row.try_get("hostname")?,
                addresses: addresses
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|a| {
                        IpAddr::from_str(a)
                            .map_err(|_| self.corrupt(format!("address {a:?} of {id}")))
                    })
                    .collect::<Result<_, _>>()?,
                source: source.and_then(|s| SocketAddr::from_str(&s).ok()),
                subnet: Subnet::from_str(&subnet)
                    .map_err(|e| self.corrupt(format!("subnet of {id}: {e}")))?,
                cache_size_bytes: row.try_get::<i64, _>("cache_size_bytes")? as u64,
                cache_free_bytes: row.try_get::<i64, _>("cache_free_bytes")? as u64,
                version: row.try_get("version")?,
                heartbeat_interval: Duration::from_millis(
                    row.try_get::<i64, _>("heartbeat_interval_ms")? as u64,
                ),
                ports: match ports {
                    None => None,
                    Some(p) => Some(
                        decode_ports(&p)
                            .ok_or_else(|| self.corrupt(format!("ports of {id}: {p:?}")))?,
                    ),
                },
                first_seen_ms: row.try_get::<i64, _>("first_seen_ms")? as u64,
                last_seen_ms: row.try_get::<i64, _>("last_seen_ms")? as u64,
            })
        })
        .await
    }

    /// Every published content item, maps verified again on load.
    pub async fn load_contents(&self) -> Result<Vec<Item>, DbError> {
        const SQL: &str = "SELECT id, name, version, size, origin, piece_size, piece_map, published_ms FROM contents";
        self.load_rows(SQL, |row| {
            let id_text: String = row.try_get("id")?;
            let id = ContentId::from_str(&id_text)
                .map_err(|e| self.corrupt(format!("content id {id_text:?}: {e}")))?;
            let size = row.try_get::<i64, _>("size")? as u64;
            let encoded: Vec<u8> = row.try_get("piece_map")?;
            let map = PieceMap::decode(&encoded, &id, size)
                .map_err(|e| self.corrupt(format!("piece map of {id}: {e}")))?;
            Ok(Item {
                meta: Meta {
                    content_id: *id.as_bytes(),
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    size,
                    origin: row.try_get("origin")?,
                    piece_size: row.try_get::<i64, _>("piece_size")? as u32,
                },
                map: Arc::new(map),
                encoded_map: Arc::new(encoded),
                published_ms: row.try_get::<i64, _>("published_ms")? as u64,
            })
        })
        .await
    }

    /// The office tree's TOML as last applied, if any.
    pub async fn load_topology(&self) -> Result<Option<String>, DbError> {
        Ok(sqlx::query_scalar("SELECT toml FROM topology WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?)
    }

    /// Every deployment.
    pub async fn load_deployments(&self) -> Result<Vec<Deployment>, DbError> {
        self.load_rows(
            "SELECT id, content_id, target, prestage, created_ms FROM deployments ORDER BY id",
            |row| {
                let id_text: String = row.try_get("content_id")?;
                let target_text: String = row.try_get("target")?;
                Ok(Deployment {
                    id: row.try_get::<i64, _>("id")? as u64,
                    content: ContentId::from_str(&id_text).map_err(|e| {
                        self.corrupt(format!("deployment content id {id_text:?}: {e}"))
                    })?,
                    target: target_text
                        .parse::<Target>()
                        .map_err(|e| self.corrupt(format!("deployment target: {e}")))?,
                    prestage: row.try_get::<i64, _>("prestage")? != 0,
                    created_ms: row.try_get::<i64, _>("created_ms")? as u64,
                })
            },
        )
        .await
    }

    /// Every client identity (key binding and state).
    pub async fn load_identities(&self) -> Result<Vec<Identity>, DbError> {
        self.load_rows(
            "SELECT id, public_key, state, hostname, bound_ms, changed_ms FROM identities",
            |row| {
                let id: String = row.try_get("id")?;
                let key: String = row.try_get("public_key")?;
                let state: String = row.try_get("state")?;
                let id: ClientId = id
                    .parse()
                    .map_err(|_| self.corrupt(format!("identity id {id:?}")))?;
                let public_key: [u8; 32] = branchline_wire::connector::unhex(&key)
                    .ok_or_else(|| self.corrupt(format!("public key of identity {id}")))?;
                let state = IdState::parse(&state)
                    .ok_or_else(|| self.corrupt(format!("state {state:?} of identity {id}")))?;
                let bound_ms: i64 = row.try_get("bound_ms")?;
                let changed_ms: i64 = row.try_get("changed_ms")?;
                Ok(Identity {
                    id,
                    public_key,
                    state,
                    hostname: row.try_get("hostname")?,
                    bound_ms: bound_ms as u64,
                    changed_ms: changed_ms as u64,
                    last_attempt_ms: 0,
                })
            },
        )
        .await
    }

    /// Number of connectors ever activated.
    pub async fn count_connectors(&self) -> Result<u64, DbError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM connectors")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Closes the connection pool (at shutdown, after the writer's last flush).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn encode_ports(p: &Ports) -> String {
    [
        p.small_request,
        p.small_reply,
        p.large_fg_request,
        p.large_fg_reply,
        p.large_bg_request,
        p.large_bg_reply,
        p.broadcast,
        p.content_fg,
        p.content_bg,
        p.adaptive,
    ]
    .iter()
    .map(u16::to_string)
    .collect::<Vec<_>>()
    .join(",")
}

fn decode_ports(s: &str) -> Option<Ports> {
    let v: Vec<u16> = s
        .split(',')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, b, c, d, e, f, g, h, i, j] = v.as_slice().try_into().ok()?;
    Some(Ports {
        small_request: a,
        small_reply: b,
        large_fg_request: c,
        large_fg_reply: d,
        large_bg_request: e,
        large_bg_reply: f,
        broadcast: g,
        content_fg: h,
        content_bg: i,
        adaptive: j,
    })
}

/// A connector activation to record.
#[derive(Clone, Debug)]
pub struct ConnectorRow {
    /// The connector's host name, from its `Activate` message.
    pub hostname: String,
    /// The address the activation came from.
    pub address: SocketAddr,
    /// The connector's Branchline version.
    pub version: String,
    /// When it was activated (Unix ms).
    pub now_ms: u64,
}

type Done<T> = oneshot::Sender<Result<T, String>>;

enum Op {
    /// Insert or replace a client; answer after commit.
    Client(Box<ClientRecord>, Done<()>),
    /// Record a connector; answer (first activation?) after commit.
    Connector(ConnectorRow, Done<bool>),
    /// Insert a published content item; answer after commit.
    Content(Box<Item>, Done<()>),
    /// Store the applied topology; answer after commit.
    Topology(String, u64, Done<()>),
    /// Insert a deployment; answer after commit.
    Deployment(Box<Deployment>, Done<()>),
    /// Store (`Some`) or delete (`None`) a client's identity; answer after commit.
    Identity(ClientId, Option<Box<Identity>>, Done<()>),
    /// Coalesced: latest last_seen and free space of a client.
    Touch {
        id: ClientId,
        last_seen_ms: u64,
        cache_free_bytes: u64,
    },
    /// Flush everything now and answer.
    Flush(oneshot::Sender<()>),
}

/// Health of the write path: `ok`, or the last error until a commit succeeds again.
#[derive(Clone, Default)]
pub struct DbHealth(Arc<Mutex<Option<String>>>);

impl DbHealth {
    /// `ok`, or `write failing: ERROR` while commits fail (the health call's `database`
    /// field).
    pub fn describe(&self) -> String {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            None => "ok".into(),
            Some(e) => format!("write failing: {e}"),
        }
    }
    fn set(&self, r: Result<(), String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = r.err();
    }
}

/// Operations the writer's queue holds at most.
pub const WRITE_QUEUE: usize = 8192;
/// Room kept free for admin writes and heartbeats: registrations are refused as busy
/// once fewer than this many places are left.
const REGISTRATION_RESERVE: usize = 1024;
/// The answer to a registration while the writer is backed up.
pub const BUSY: &str = "the server's database is busy; retry in a few seconds";

/// Handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
    refused_busy: Arc<std::sync::atomic::AtomicU64>,
    touches_dropped: Arc<std::sync::atomic::AtomicU64>,
    /// `ok` or the last write error, shared with the health call.
    pub health: DbHealth,
    /// Seconds each commit (one transaction) took, for the admin endpoint's metrics.
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Commit-awaiting writes fail with this when the writer is gone.
const WRITER_GONE: &str = "the database writer has stopped";

impl Writer {
    /// Starts the writer task on `db`. It ends when every `Writer` clone is dropped,
    /// after a final flush.
    pub fn spawn(db: Db) -> (Writer, tokio::task::JoinHandle<()>) {
        let (writer, rx) = Writer::with_queue(WRITE_QUEUE);
        let task = tokio::spawn(run_writer(
            db,
            rx,
            writer.health.clone(),
            writer.commit_seconds.clone(),
        ));
        (writer, task)
    }

    /// A writer handle and the receiving end of a queue of `capacity` operations.
    fn with_queue(capacity: usize) -> (Writer, mpsc::Receiver<Op>) {
        let (tx, rx) = mpsc::channel(capacity);
        let health = DbHealth::default();
        let commit_seconds = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
        );
        (
            Writer {
                tx,
                refused_busy: Arc::default(),
                touches_dropped: Arc::default(),
                health,
                commit_seconds,
            },
            rx,
        )
    }

    /// Registrations refused as busy because the queue was (nearly) full.
    pub fn refused_busy(&self) -> u64 {
        self.refused_busy.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Heartbeat updates dropped because the queue was full.
    pub fn touches_dropped(&self) -> u64 {
        self.touches_dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a new registration would be refused as busy now.
    pub fn is_busy(&self) -> bool {
        self.tx.capacity() <= REGISTRATION_RESERVE.min(self.tx.max_capacity() / 2)
    }

    /// Queues an operation that waits for room; `Err` once the writer is gone.
    fn send_waiting<T: Send + 'static>(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<T, String>>,
    ) -> impl std::future::Future<Output = Result<T, String>> + Send + 'static {
        let tx = self.tx.clone();
        async move {
            if tx.send(op).await.is_err() {
                return Err(WRITER_GONE.into());
            }
            rx.await.unwrap_or_else(|_| Err(WRITER_GONE.into()))
        }
    }

    /// Stores a client record; resolves once it is committed.
    pub fn save_client(
        &self,
        record: ClientRecord,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let sent = if self.is_busy() {
            Err(BUSY)
        } else {
            match self.tx.try_send(Op::Client(Box::new(record), done)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => Err(BUSY),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(WRITER_GONE),
            }
        };
        if sent == Err(BUSY) {
            self.refused_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        async move {
            sent?;
            rx.await.unwrap_or_else(|_| Err(WRITER_GONE.into()))
        }
    }

    /// Stores a published content item; resolves once it is committed.
    pub fn save_content(
        &self,
        item: Item,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        self.send_waiting(Op::Content(Box::new(item), done), rx)
    }

    /// Stores the applied topology TOML; resolves once committed.
    pub fn save_topology(
        &self,
        toml: String,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        self.send_waiting(Op::Topology(toml, now_ms, done), rx)
    }

    /// Stores a deployment; resolves once committed.
    pub fn save_deployment(
        &self,
        d: Deployment,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        self.send_waiting(Op::Deployment(Box::new(d), done), rx)
    }

    /// Records a connector activation; resolves to "first activation?" once committed.
    pub fn save_connector(
        &self,
        row: ConnectorRow,
    ) -> impl std::future::Future<Output = Result<bool, String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        self.send_waiting(Op::Connector(row, done), rx)
    }

    /// Stores a client identity (`Some`) or forgets it (`None`, an admin reset);
    /// resolves once committed.
    pub fn save_identity(
        &self,
        id: ClientId,
        identity: Option<Identity>,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        let (done, rx) = oneshot::channel();
        // Waits for room like an admin write: identities change rarely (first
        // registrations, whose quota is checked first, and admin calls).
        self.send_waiting(Op::Identity(id, identity.map(Box::new), done), rx)
    }

    /// Notes a heartbeat; written within a second.
    pub fn touch(&self, id: ClientId, last_seen_ms: u64, cache_free_bytes: u64) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Op::Touch {
            id,
            last_seen_ms,
            cache_free_bytes,
        }) {
            self.touches_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Writes everything pending and waits for it.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 2048;
/// How often coalesced heartbeats are written.
const TOUCH_FLUSH: Duration = Duration::from_secs(1);

async fn run_writer(
    db: Db,
    mut rx: mpsc::Receiver<Op>,
    health: DbHealth,
    commit_seconds: prometheus_client::metrics::histogram::Histogram,
) {
    let mut touches: HashMap<ClientId, (u64, u64)> = HashMap::new();
    let mut tick = tokio::time::interval(TOUCH_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = Vec::new();
        let mut flush_now = false;
        tokio::select! {
            op = rx.recv() => match op {
                Some(op) => batch.push(op),
                None => {
                    let r = commit(&db, Vec::new(), &mut touches).await;
                    health.set(r);
                    return;
                }
            },
            _ = tick.tick() => flush_now = true,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut durable = Vec::new();
        let mut flush_waiters = Vec::new();
        for op in batch {
            match op {
                Op::Touch {
                    id,
                    last_seen_ms,
                    cache_free_bytes,
                } => {
                    let e = touches.entry(id).or_insert((0, 0));
                    *e = (e.0.max(last_seen_ms), cache_free_bytes);
                }
                Op::Flush(w) => {
                    flush_now = true;
                    flush_waiters.push(w);
                }
                other => durable.push(other),
            }
        }
        if durable.is_empty() && !flush_now {
            continue;
        }
        let started = std::time::Instant::now();
        let r = commit(&db, durable, &mut touches).await;
        commit_seconds.observe(started.elapsed().as_secs_f64());
        health.set(r);
        for w in flush_waiters {
            let _ = w.send(());
        }
    }
}

/// Commits `ops` and the pending touches in one transaction, then answers each op.
async fn commit(
    db: &Db,
    ops: Vec<Op>,
    touches: &mut HashMap<ClientId, (u64, u64)>,
) -> Result<(), String> {
    let result = write_all(db, &ops, touches).await;
    match &result {
        Ok(firsts) => {
            touches.clear();
            let mut firsts = firsts.iter();
            for op in ops {
                match op {
                    Op::Client(_, done)
                    | Op::Content(_, done)
                    | Op::Topology(_, _, done)
                    | Op::Deployment(_, done)
                    | Op::Identity(_, _, done) => {
                        let _ = done.send(Ok(()));
                    }
                    Op::Connector(_, done) => {
                        let _ = done.send(Ok(*firsts.next().expect("one answer per connector")));
                    }
                    Op::Touch { .. } | Op::Flush(_) => {}
                }
            }
            Ok(())
        }
        Err(e) => {
            let msg = e.to_string();
            tracing::error!(error = %msg, db = %db.path.display(), "database write failed");
            for op in ops {
                match op {
                    Op::Client(_, done)
                    | Op::Content(_, done)
                    | Op::Topology(_, _, done)
                    | Op::Deployment(_, done)
                    | Op::Identity(_, _, done) => {
                        let _ = done.send(Err(msg.clone()));
                    }
                    Op::Connector(_, done) => {
                        let _ = done.send(Err(msg.clone()));
                    }
                    Op::Touch { .. } | Op::Flush(_) => {}
                }
            }
            // Touches stay pending and are retried with the next commit.
            Err(msg)
        }
    }
}

async fn write_all(
    db: &Db,
    ops: &[Op],
    touches: &HashMap<ClientId, (u64, u64)>,
) -> Result<Vec<bool>, sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    let mut firsts = Vec::new();
    for op in ops {
        match op {
            Op::Client(r, _) => {
                let addresses = r
                    .addresses
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                sqlx::query(
                    "INSERT INTO clients (id, hostname, addresses, source_address, subnet, cache_size_bytes, \
                     cache_free_bytes, version, heartbeat_interval_ms, ports, first_seen_ms, last_seen_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT(id) DO UPDATE SET hostname = excluded.hostname, addresses = excluded.addresses, \
                     source_address = excluded.source_address, subnet = excluded.subnet, \
                     cache_size_bytes = excluded.cache_size_bytes, cache_free_bytes = excluded.cache_free_bytes, \
                     version = excluded.version, heartbeat_interval_ms = excluded.heartbeat_interval_ms, \
                     ports = excluded.ports, last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
                )
                .bind(r.id.to_string())
                .bind(&r.hostname)
                .bind(addresses)
                .bind(r.source.map(|s| s.to_string()))
                .bind(r.subnet.to_string())
                .bind(r.cache_size_bytes as i64)
                .bind(r.cache_free_bytes as i64)
                .bind(&r.version)
                .bind(r.heartbeat_interval.as_millis() as i64)
                .bind(r.ports.as_ref().map(encode_ports))
                .bind(r.first_seen_ms as i64)
                .bind(r.last_seen_ms as i64)
                .execute(&mut *tx)
                .await?;
            }
            Op::Connector(c, _) => {
                let existed: Option<i64> =
                    sqlx::query_scalar("SELECT 1 FROM connectors WHERE hostname = ?")
                        .bind(&c.hostname)
                        .fetch_optional(&mut *tx)
                        .await?;
                sqlx::query(
                    "INSERT INTO connectors (hostname, address, version, first_seen_ms, last_seen_ms) \
                     VALUES (?, ?, ?, ?, ?) ON CONFLICT(hostname) DO UPDATE SET address = excluded.address, \
                     version = excluded.version, last_seen_ms = excluded.last_seen_ms",
                )
                .bind(&c.hostname)
                .bind(c.address.to_string())
                .bind(&c.version)
                .bind(c.now_ms as i64)
                .bind(c.now_ms as i64)
                .execute(&mut *tx)
                .await?;
                firsts.push(existed.is_none());
            }
            Op::Topology(toml, now_ms, _) => {
                sqlx::query(
                    "INSERT INTO topology (id, toml, updated_ms) VALUES (1, ?, ?) \
                     ON CONFLICT(id) DO UPDATE SET toml = excluded.toml, updated_ms = excluded.updated_ms",
                )
                .bind(toml)
                .bind(*now_ms as i64)
                .execute(&mut *tx)
                .await?;
            }
            Op::Deployment(d, _) => {
                sqlx::query(
                    "INSERT OR IGNORE INTO deployments (id, content_id, target, prestage, created_ms) \
                     VALUES (?, ?, ?, ?, ?)",
                )
                .bind(d.id as i64)
                .bind(d.content.to_hex())
                .bind(d.target.to_string())
                .bind(i64::from(d.prestage))
                .bind(d.created_ms as i64)
                .execute(&mut *tx)
                .await?;
            }
            Op::Content(item, _) => {
                let m = &item.meta;
                sqlx::query(
                    "INSERT OR IGNORE INTO contents (id, name, version, size, origin, piece_size, piece_map, published_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(ContentId::from_bytes(m.content_id).to_hex())
                .bind(&m.name)
                .bind(&m.version)
                .bind(m.size as i64)
                .bind(&m.origin)
                .bind(m.piece_size as i64)
                .bind(item.encoded_map.as_slice())
                .bind(item.published_ms as i64)
                .execute(&mut *tx)
                .await?;
            }
            Op::Identity(id, Some(i), _) => {
                sqlx::query(
                    "INSERT INTO identities (id, public_key, state, hostname, bound_ms, changed_ms) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET \
                     public_key = excluded.public_key, state = excluded.state, \
                     hostname = excluded.hostname, bound_ms = excluded.bound_ms, \
                     changed_ms = excluded.changed_ms",
                )
                .bind(id.to_string())
                .bind(branchline_wire::connector::hex(&i.public_key))
                .bind(i.state.as_str())
                .bind(&i.hostname)
                .bind(i.bound_ms as i64)
                .bind(i.changed_ms as i64)
                .execute(&mut *tx)
                .await?;
            }
            Op::Identity(id, None, _) => {
                sqlx::query("DELETE FROM identities WHERE id = ?")
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            Op::Touch { .. } | Op::Flush(_) => {}
        }
    }
    for (id, (last_seen_ms, free)) in touches {
        sqlx::query(
            "UPDATE clients SET last_seen_ms = MAX(last_seen_ms, ?), \
             cache_free_bytes = MIN(?, cache_size_bytes) WHERE id = ?",
        )
        .bind(*last_seen_ms as i64)
        .bind(*free as i64)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(firsts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u8) -> ClientRecord {
        ClientRecord {
            id: ClientId([id; 16]),
            hostname: format!("pc-{id}"),
            addresses: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            source: Some("10.0.0.1:34324".parse().unwrap()),
            subnet: "10.0.0.0/24".parse().unwrap(),
            cache_size_bytes: 1000,
            cache_free_bytes: 900,
            version: "0.1.0".into(),
            heartbeat_interval: Duration::from_millis(1500),
            ports: Some(Ports {
                small_request: 1,
                small_reply: 2,
                large_fg_request: 3,
                large_fg_reply: 4,
                large_bg_request: 5,
                large_bg_reply: 6,
                broadcast: 7,
                content_fg: 8,
                content_bg: 9,
                adaptive: 10,
            }),
            first_seen_ms: 5,
            last_seen_ms: 6,
        }
    }

    #[tokio::test]
    async fn identities_survive_reopen_and_reset_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.db");
        let identity = |n: u8, state: IdState| Identity {
            id: ClientId([n; 16]),
            public_key: [n; 32],
            state,
            hostname: format!("pc-{n}"),
            bound_ms: 10,
            changed_ms: 20,
            last_attempt_ms: 0,
        };
        {
            let db = Db::open(&path).await.unwrap();
            let (w, task) = Writer::spawn(db.clone());
            w.save_identity(ClientId([1; 16]), Some(identity(1, IdState::Pending)))
                .await
                .unwrap();
            w.save_identity(ClientId([1; 16]), Some(identity(1, IdState::Revoked)))
                .await
                .unwrap();
            w.save_identity(ClientId([2; 16]), Some(identity(2, IdState::Active)))
                .await
                .unwrap();
            w.save_identity(ClientId([3; 16]), Some(identity(3, IdState::Active)))
                .await
                .unwrap();
            w.save_identity(ClientId([3; 16]), None).await.unwrap();
            drop(w);
            task.await.unwrap();
            db.close().await;
        }
        let db = Db::open(&path).await.unwrap();
        let mut got = db.load_identities().await.unwrap();
        got.sort_by_key(|i| i.id);
        assert_eq!(
            got,
            vec![identity(1, IdState::Revoked), identity(2, IdState::Active)]
        );
    }

    #[tokio::test]
    async fn a_backed_up_writer_refuses_registrations_as_busy_and_drops_touches_counted() {
        // A queue of 8 that nobody drains: writes back up.
        let (w, mut rx) = Writer::with_queue(8);
        assert!(!w.is_busy());
        let mut pending = Vec::new();
        for n in 0..4 {
            pending.push(w.save_client(record(n)));
        }
        // Half the queue left: registrations are refused at once, with a clear answer.
        assert!(w.is_busy());
        let refused = w.save_client(record(9)).await.unwrap_err();
        assert_eq!(refused, BUSY);
        assert!(refused.contains("busy") && refused.contains("retry"));
        assert_eq!(w.refused_busy(), 1);
        // Heartbeats fill the rest; beyond it their updates are dropped, counted.
        for n in 0..10 {
            w.touch(ClientId([n; 16]), 1, 1);
        }
        assert_eq!(w.touches_dropped(), 6);
        // An admin write waits for room instead of failing.
        let waiting = tokio::spawn(w.save_topology("x".into(), 1));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert!(rx.recv().await.is_some(), "one place freed");
        // The freed place goes to the waiting admin write, queued behind the others.
        for n in 0..8 {
            match rx.recv().await.unwrap() {
                Op::Topology(_, _, done) => {
                    assert_eq!(n, 7, "the admin write came last");
                    let _ = done.send(Ok(()));
                }
                _ => assert!(n < 7),
            }
        }
        waiting.await.unwrap().unwrap();
        drop(pending);
    }

    #[tokio::test]
    async fn records_survive_reopen_and_touches_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        {
            let db = Db::open(&path).await.unwrap();
            let (w, task) = Writer::spawn(db.clone());
            w.save_client(record(1)).await.unwrap();
            w.save_client(record(2)).await.unwrap();
            assert!(
                w.save_connector(ConnectorRow {
                    hostname: "conn".into(),
                    address: "10.0.0.9:34320".parse().unwrap(),
                    version: "0.1.0".into(),
                    now_ms: 1
                })
                .await
                .unwrap()
            );
            assert!(
                !w.save_connector(ConnectorRow {
                    hostname: "conn".into(),
                    address: "10.0.0.9:34320".parse().unwrap(),
                    version: "0.1.0".into(),
                    now_ms: 2
                })
                .await
                .unwrap()
            );
            w.touch(ClientId([1; 16]), 99, 800);
            drop(w);
            task.await.unwrap();
            db.close().await;
        }
        let db = Db::open(&path).await.unwrap();
        let mut clients = db.load_clients().await.unwrap();
        clients.sort_by_key(|c| c.id);
        let mut expected = record(1);
        expected.last_seen_ms = 99;
        expected.cache_free_bytes = 800;
        assert_eq!(clients, vec![expected, record(2)]);
        assert_eq!(db.count_connectors().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn published_content_survives_reopen() {
        use branchline_store::PieceSize;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let map = PieceMap::from_bytes(&data, PieceSize::new(16 * 1024).unwrap()).unwrap();
        let item = Item {
            meta: Meta {
                content_id: *map.id().as_bytes(),
                name: "app".into(),
                version: "1".into(),
                size: data.len() as u64,
                origin: "/srv/app".into(),
                piece_size: 16 * 1024,
            },
            encoded_map: Arc::new(map.encode()),
            map: Arc::new(map),
            published_ms: 42,
        };
        {
            let db = Db::open(&path).await.unwrap();
            let (w, task) = Writer::spawn(db.clone());
            w.save_content(item.clone()).await.unwrap();
            // Publishing the same bytes again is harmless.
            w.save_content(item.clone()).await.unwrap();
            drop(w);
            task.await.unwrap();
            db.close().await;
        }
        let db = Db::open(&path).await.unwrap();
        let items = db.load_contents().await.unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].meta, item.meta);
        assert_eq!(items[0].published_ms, 42);
        assert_eq!(items[0].map.piece_count(), item.map.piece_count());
    }

    #[test]
    fn ports_text_round_trip() {
        let p = record(1).ports.unwrap();
        assert_eq!(decode_ports(&encode_ports(&p)), Some(p));
        assert_eq!(decode_ports("1,2"), None);
        assert_eq!(decode_ports("a,b,c,d,e,f,g,h,i,j"), None);
    }
}
