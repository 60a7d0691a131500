//! Shared helpers for the end-to-end tests: real `branchline` processes on loopback.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_branchline");

/// A random /24 inside 127.0.0.0/8, as "127.X.Y".
pub fn net() -> String {
    format!(
        "127.{}.{}",
        rand::random_range(100..=250u8),
        rand::random_range(1..=254u8)
    )
}

/// A child process that is killed when the test ends, however it ends.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env(
                "BRANCHLINE_LOG",
                std::env::var("BL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            child,
            name: name.into(),
            log,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        format!(
            "--- {} log ---\n{}",
            self.name,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes a deployment key file with mode 0600 (a key file others can read is refused).
pub fn write_key(path: impl AsRef<Path>, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path.as_ref(), text).unwrap();
    std::fs::set_permissions(path.as_ref(), std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run branchline")
}

pub struct Bed {
    pub dir: tempfile::TempDir,
    pub net: String,
}

impl Bed {
    pub fn new() -> Bed {
        Bed {
            dir: tempfile::tempdir().unwrap(),
            net: net(),
        }
    }
    pub fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }
    pub fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }
    /// The server with extra global arguments before `server` (e.g. `--config FILE`).
    pub fn server_with(&self, global: &[&str]) -> Proc {
        let data = self.path("server");
        let bind = self.ip(1);
        let mut args: Vec<&str> = global.to_vec();
        args.extend([
            "server",
            "--data-dir",
            &data,
            "--bind",
            &bind,
            "--offline-after",
            "3",
        ]);
        Proc::spawn(self.dir.path(), "server", &args)
    }

    pub fn server(&self) -> Proc {
        self.server_with(&[])
    }
    /// Starts the server and waits until it answers health requests; the server and its
    /// deployment key file.
    pub fn started_server(&self) -> (Proc, String) {
        self.started_server_with(&[])
    }
    /// [`Bed::started_server`] with extra global arguments (see [`Bed::server_with`]).
    pub fn started_server_with(&self, global: &[&str]) -> (Proc, String) {
        let server = self.server_with(global);
        let key = self.path("server/deployment.key");
        wait_for("the server", Duration::from_secs(30), &[&server], || {
            self.health(&key)
        });
        (server, key)
    }
    /// Client `n` (hostname `client-N`, address `.1N`, data in `clientN`).
    pub fn client(&self, n: u8, key: &str) -> Proc {
        self.client_with(&[], n, key, &["--hostname", &format!("client-{n}")])
    }
    /// Client `n` with extra `global` arguments before `client` and `extra` ones after its
    /// own (no `--hostname` unless given).
    pub fn client_with(&self, global: &[&str], n: u8, key: &str, extra: &[&str]) -> Proc {
        let (server, data, bind) = (
            self.ip(1),
            self.path(&format!("client{n}")),
            self.ip(10 + n),
        );
        let mut args: Vec<&str> = global.to_vec();
        args.extend([
            "client",
            "--server",
            &server,
            "--key-file",
            key,
            "--data-dir",
            &data,
            "--bind",
            &bind,
            "--heartbeat-interval",
            "0.3",
        ]);
        args.extend_from_slice(extra);
        Proc::spawn(self.dir.path(), &format!("client{n}"), &args)
    }
    /// Runs a connector command. Admin commands need the connector's credential (issue
    /// #10): the first one enrols the connector with the server's pending token (its
    /// credential lands beside the key file).
    pub fn connector(&self, key: &str, action: &[&str]) -> Output {
        let admin = matches!(
            action.first().copied(),
            Some("publish" | "topology" | "deploy" | "status")
        );
        let credential = Path::new(key).with_file_name("connector.credential");
        if admin && !credential.exists() {
            let tokens = self.path("server/connector.tokens");
            // The server writes the token a moment after its key file.
            let start = std::time::Instant::now();
            while std::fs::metadata(&tokens).map_or(true, |m| m.len() == 0)
                && start.elapsed() < std::time::Duration::from_secs(30)
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let out = self.connector_raw(key, &["activate", "--token-file", &tokens]);
            assert!(out.status.success(), "enrolment: {out:?}");
        }
        self.connector_raw(key, action)
    }

    /// Runs a connector command as given.
    pub fn connector_raw(&self, key: &str, action: &[&str]) -> Output {
        let mut args = vec![
            "connector",
            "--server",
            &self.ip(1),
            "--bind",
            &self.ip(2),
            "--key-file",
            key,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(action.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs)
    }
    /// Runs a connector command that must succeed (see [`Bed::connector`]); its JSON output.
    pub fn connector_json(&self, key: &str, action: &[&str]) -> Value {
        let out = self.connector(key, action);
        assert!(
            out.status.success(),
            "connector {action:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
    pub fn health(&self, key: &str) -> Option<Value> {
        let out = self.connector(key, &["health", "--json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("health --json prints JSON"))
    }
    /// Waits (up to 30 s) until the server counts exactly `n` clients online; its health
    /// report then.
    pub fn wait_online(&self, key: &str, n: u64, procs: &[&Proc]) -> Value {
        wait_for(
            &format!("{n} clients online"),
            Duration::from_secs(30),
            procs,
            || {
                self.health(key)
                    .filter(|h| h["clients_online"].as_u64() == Some(n))
            },
        )
    }
}

/// Writes `len` random bytes to `path`; the bytes.
pub fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::fill(&mut data[..]);
    std::fs::write(path, &data).unwrap();
    data
}

/// Publishes `file` as `name` with `origin` and the `extra` arguments (the connector
/// enrols with the server's token on its first admin command); the content id.
pub fn publish(
    bed: &Bed,
    key: &str,
    file: &Path,
    name: &str,
    origin: &str,
    extra: &[&str],
) -> String {
    let mut args = vec![
        "publish",
        file.to_str().unwrap(),
        "--name",
        name,
        "--origin",
        origin,
        "--json",
    ];
    args.extend_from_slice(extra);
    let v = bed.connector_json(key, &args);
    v["content_id"].as_str().unwrap().to_owned()
}

/// A server, an HTTP origin and one published package of random bytes.
pub struct Lan {
    pub bed: Bed,
    pub server: Proc,
    pub key: String,
    pub origin: Origin,
    pub data: Vec<u8>,
    pub id: String,
}

/// A [`Lan`] whose package, `size` random bytes behind the origin as `pkg.bin`, is
/// published as `name` with the `publish_args`.
pub fn lan(size: usize, name: &str, publish_args: &[&str]) -> Lan {
    let bed = Bed::new();
    let (server, key) = bed.started_server();
    let origin = Origin::start(&bed.ip(5));
    let src = PathBuf::from(bed.path("pkg.bin"));
    let data = random_file(&src, size);
    let url = origin.add("pkg.bin", &data);
    let id = publish(&bed, &key, &src, name, &url, publish_args);
    Lan {
        bed,
        server,
        key,
        origin,
        data,
        id,
    }
}

/// A requester on `rt` that seals with the deployment key of the file `key` (as every
/// device holds it), bound to `ip`, port chosen by the kernel.
pub fn key_holder(
    rt: &tokio::runtime::Runtime,
    key: &str,
    ip: std::net::IpAddr,
) -> branchline_transport::Requester {
    let key = branchline_transport::read_key_file(Path::new(key)).unwrap();
    rt.block_on(async {
        branchline_transport::Requester::new(
            tokio::net::UdpSocket::bind((ip, 0)).await.unwrap(),
            branchline_transport::Context::new(vec![key.derive()]),
        )
    })
}

/// The detail of an `unauthorized` refusal; panics on any other outcome.
pub fn unauthorized<T: std::fmt::Debug>(
    r: Result<T, branchline_transport::RequestError>,
) -> String {
    match r {
        Err(branchline_transport::RequestError::Refused {
            code: branchline_wire::msg::ErrorCode::Unauthorized,
            detail,
            ..
        }) => detail,
        other => panic!("expected an unauthorized refusal, got {other:?}"),
    }
}

/// Polls `check` until it returns `Some`, or fails with `what` and the logs.
pub fn wait_for<T>(
    what: &str,
    limit: Duration,
    procs: &[&Proc],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        if start.elapsed() > limit {
            let logs: Vec<String> = procs.iter().map(|p| p.log()).collect();
            panic!(
                "timed out after {limit:?} waiting for {what}\n{}",
                logs.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP origin (the counting test server) on its own runtime thread, for the whole
/// test.
pub struct Origin {
    /// The runtime the server runs on.
    pub rt: tokio::runtime::Runtime,
    /// The server: its counters say what the origin served.
    pub server: std::sync::Arc<branchline_origin::testserver::CountingServer>,
}

impl Origin {
    /// Starts an origin on `ip`, port chosen by the kernel, serving nothing yet.
    pub fn start(ip: &str) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(branchline_origin::testserver::CountingServer::start(
                format!("{ip}:0").parse().unwrap(),
                Vec::<(String, bytes::Bytes)>::new(),
            ))
            .unwrap();
        Origin {
            rt,
            server: std::sync::Arc::new(server),
        }
    }

    /// Serves `data` as `name`; its URL.
    pub fn add(&self, name: &str, data: &[u8]) -> String {
        let _g = self.rt.enter();
        self.server
            .set_file(name, bytes::Bytes::copy_from_slice(data));
        self.server.url(name)
    }
}
