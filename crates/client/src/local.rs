//! The local API: how `branchline get` (the installer's entry point) asks the client
//! daemon for content. A Unix socket in the data directory (`client.sock`, mode 0600),
//! never a network port; the socket itself is behind [`crate::platform::local_socket`].
//!
//! Protocol: the caller writes one JSON line, `{"get": "<id or name[@version]>"}`; the
//! daemon answers with JSON lines: `{"progress": {...}}` while it works (at most 5 a
//! second), then exactly one of `{"done": {...}}` or `{"error": "..."}`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::watch;

use crate::download::{DownloadProgress, Downloaded, Target, download};
use crate::platform::local_socket::{self, Listener, Stream};
use crate::services::Services;

/// Socket file name inside the data directory.
pub const SOCKET: &str = "client.sock";

/// A request on the local socket.
#[derive(Debug, Serialize, Deserialize)]
pub struct LocalRequest {
    /// What to fetch: a content id (64 hex digits) or `name[@version]`.
    pub get: String,
}

/// One line of the answer.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum LocalReply {
    /// `{"progress": {...}}`: the download goes on (at most 5 lines a second).
    Progress(ProgressLine),
    /// `{"done": {...}}`: the last line of a success.
    Done(DoneLine),
    /// `{"error": "..."}`: the last line of a failure, in words for the user.
    Error(String),
}

/// Progress of a `get`, from [`DownloadProgress`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone, Default)]
pub struct ProgressLine {
    /// The content id (64 hex digits); empty until the server answered.
    pub content_id: String,
    /// `name@version` (or the content id when the server is unreachable); empty until
    /// the server answered.
    pub name: String,
    /// File size (bytes); 0 until known.
    pub size: u64,
    /// Verified bytes in the cache.
    pub have_bytes: u64,
    /// Sources delivering now (peers and the origin).
    pub sources: u32,
    /// True while this client reads the origin.
    pub reading_origin: bool,
    /// Why the download waits, while it does (e.g. "waiting for the server to register
    /// this client", "disk full").
    pub paused: Option<String>,
}

/// The result of a successful `get`, from [`Downloaded`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Clone)]
pub struct DoneLine {
    /// The content id (64 hex digits).
    pub content_id: String,
    /// File size (bytes).
    pub size: u64,
    /// The verified file in the cache; read it, do not modify it.
    pub path: PathBuf,
    /// Verified bytes fetched from same-office peers (bytes over the WAN link from the
    /// parent office are not in this line).
    pub from_peers: u64,
    /// Verified bytes read from the origin.
    pub from_origin: u64,
    /// Verified bytes the server sent from its own copy (0 from older daemons).
    #[serde(default)]
    pub from_server: u64,
}

impl From<&DownloadProgress> for ProgressLine {
    fn from(p: &DownloadProgress) -> Self {
        ProgressLine {
            content_id: p.content_id.clone(),
            name: p.name.clone(),
            size: p.size,
            have_bytes: p.have_bytes,
            sources: p.sources,
            reading_origin: p.reading_origin,
            paused: p.paused.clone(),
        }
    }
}

impl From<Downloaded> for DoneLine {
    fn from(d: Downloaded) -> Self {
        DoneLine {
            content_id: d.content_id,
            size: d.size,
            path: d.path,
            from_peers: d.from_peers,
            from_origin: d.from_origin,
            from_server: d.from_server,
        }
    }
}

/// Binds the socket (replacing a stale one left by a killed daemon; the data-dir lock
/// guarantees no live daemon owns it).
pub fn bind(data_dir: &Path) -> std::io::Result<Listener> {
    local_socket::bind(&data_dir.join(SOCKET))
}

/// One download per content item at a time: later requests for the same item wait.
type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// Serves the socket until the task is aborted.
pub async fn serve(
    listener: Listener,
    services: watch::Receiver<Option<Arc<Services>>>,
    seed: u64,
) {
    let locks: Locks = Arc::default();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (services, locks) = (services.clone(), locks.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(stream, services, locks, seed).await {
                tracing::debug!(error = %e, "local API connection ended");
            }
        });
    }
}

/// Progress lines go out at most this often (5 a second).
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// Writes a download's progress to `w`, at most one line per [`PROGRESS_EVERY`], until
/// `done` gives the last line, which goes out at once: the pause between progress lines
/// never delays the answer (it used to add up to 200 ms to every `get`).
async fn relay<W: AsyncWrite + Unpin>(
    w: &mut W,
    done: impl Future<Output = LocalReply>,
    mut rx: watch::Receiver<DownloadProgress>,
) -> std::io::Result<()> {
    tokio::pin!(done);
    let mut quiet_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            reply = &mut done => return send(w, &reply).await,
            () = async { tokio::time::sleep_until(quiet_until.expect("guarded")).await },
                if quiet_until.is_some() => quiet_until = None,
            changed = rx.changed(), if quiet_until.is_none() => {
                if changed.is_err() {
                    // The download dropped its progress sender: it is ending.
                    return send(w, &done.await).await;
                }
                let line = LocalReply::Progress(ProgressLine::from(&*rx.borrow_and_update()));
                if send(w, &line).await.is_err() {
                    // The caller went away; the download goes on and its pieces stay cached.
                    return Ok(());
                }
                quiet_until = Some(tokio::time::Instant::now() + PROGRESS_EVERY);
            }
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, reply: &LocalReply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(
    stream: Stream,
    mut services: watch::Receiver<Option<Arc<Services>>>,
    locks: Locks,
    seed: u64,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r.take(64 * 1024)).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let request: LocalRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut w, &LocalReply::Error(format!("bad request: {e}"))).await,
    };
    let target: Target = match request.get.parse() {
        Ok(t) => t,
        Err(e) => return send(&mut w, &LocalReply::Error(e)).await,
    };
    // The services start after the first registration with the server.
    let svc = loop {
        if let Some(s) = services.borrow_and_update().clone() {
            break s;
        }
        send(
            &mut w,
            &LocalReply::Progress(ProgressLine {
                paused: Some("waiting for the server to register this client".into()),
                ..ProgressLine::default()
            }),
        )
        .await?;
        if let Ok(Err(_)) = tokio::time::timeout(Duration::from_secs(1), services.changed()).await {
            return send(
                &mut w,
                &LocalReply::Error("the client is shutting down".into()),
            )
            .await;
        }
    };
    let lock = locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(target.to_string())
        .or_default()
        .clone();
    let _guard = lock.lock().await;
    let (tx, rx) = watch::channel(DownloadProgress::default());
    let job = tokio::spawn(download(svc, target, seed, tx));
    let done = async {
        match job.await {
            Ok(Ok(d)) => LocalReply::Done(d.into()),
            Ok(Err(e)) => LocalReply::Error(e.to_string()),
            Err(e) => LocalReply::Error(format!("download task failed: {e}")),
        }
    };
    relay(&mut w, done, rx).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(have: u64) -> DownloadProgress {
        DownloadProgress {
            have_bytes: have,
            ..DownloadProgress::default()
        }
    }

    /// The answer goes out the moment the download ends, not after the pause between
    /// progress lines; progress lines stay at most one per 200 ms.
    #[tokio::test(start_paused = true)]
    async fn the_answer_is_not_held_back_by_the_progress_throttle() {
        let (tx, rx) = watch::channel(DownloadProgress::default());
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<()>();
        let (mut w, r) = tokio::io::duplex(64 * 1024);
        let start = tokio::time::Instant::now();
        let relay = tokio::spawn(async move {
            let done = async {
                end_rx.await.unwrap();
                LocalReply::Error("finished".into())
            };
            relay(&mut w, done, rx).await
        });
        let mut lines = BufReader::new(r).lines();
        async fn next(
            lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
        ) -> LocalReply {
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
        }
        tx.send(progress(1)).unwrap();
        assert!(matches!(next(&mut lines).await, LocalReply::Progress(p) if p.have_bytes == 1));
        // Two changes within the pause: one line for both, after the pause.
        tx.send(progress(2)).unwrap();
        tx.send(progress(3)).unwrap();
        assert!(matches!(next(&mut lines).await, LocalReply::Progress(p) if p.have_bytes == 3));
        assert!(start.elapsed() >= PROGRESS_EVERY);
        // A change, then the end 10 ms later: the answer does not wait for the pause.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let ended = tokio::time::Instant::now();
        end_tx.send(()).unwrap();
        assert_eq!(next(&mut lines).await, LocalReply::Error("finished".into()));
        assert!(
            ended.elapsed() < Duration::from_millis(1),
            "{:?}",
            ended.elapsed()
        );
        relay.await.unwrap().unwrap();
        drop(tx);
    }
}
