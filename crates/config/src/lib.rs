//! Branchline configuration.
//!
//! One TOML file (`--config FILE`) holds every setting; environment variables
//! (`BRANCHLINE_*`) and command-line flags override it; every setting has a default that
//! works on one machine, stated in its doc comment here and in `docs/configuration.md`.
//! A file with an error is refused with its path, the line and the key.

pub mod ports;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ports::{ClientPorts, ConnectorPorts, PortOverrideError, Ports, ServerPorts};

/// Default address to bind: every interface.
fn any() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

/// Server settings (`[server]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Data directory (database, deployment key). Default: none, `--data-dir` is required.
    pub data_dir: Option<PathBuf>,
    /// Address to bind every server port on. Default `0.0.0.0`.
    pub bind: IpAddr,
    /// A client is offline after this many heartbeat intervals without one. Default 3.
    pub offline_after_missed_heartbeats: u32,
    /// Number of worker threads (0 = one per core). Default 0.
    pub threads: usize,
    /// Cap of the server's own content cache: `"0"` (the server holds no content), bytes
    /// (`"20GiB"`) or a share of the disk (`"25%"`). When set, the server keeps a copy of
    /// every package published with a file origin it can read and sends it to Central
    /// Office clients. Default `"0"`.
    pub content_cache_size: String,
    /// How new clients enroll: `"open"` (any client holding the deployment key, at its
    /// first registration) or `"approve"` (it waits without a certificate until the admin
    /// runs `branchline connector client approve ID`). Default `"open"`.
    pub enrollment: String,
    /// Seconds a rotated-out deployment key stays accepted after `connector key rotate`
    /// (the overlap in which online clients move to the new key). Default 3600.
    pub key_overlap_s: f64,
    /// Validity of the client certificates the server issues, in seconds; clients renew
    /// at two thirds of it. Default 2592000 (30 days).
    pub client_cert_lifetime_s: f64,
    /// New client ids one source address may register per minute (re-registrations of
    /// known ids are not limited); 0 = no limit. Default 600.
    pub new_clients_per_source_per_minute: u32,
    /// Clients the server admits in all; 0 = no limit. Default 500,000.
    pub max_clients: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data_dir: None,
            bind: any(),
            offline_after_missed_heartbeats: 3,
            threads: 0,
            content_cache_size: "0".into(),
            enrollment: "open".into(),
            key_overlap_s: 3600.0,
            client_cert_lifetime_s: 2_592_000.0,
            new_clients_per_source_per_minute: 600,
            max_clients: 500_000,
        }
    }
}

/// The server's admin endpoint (`[admin]`): metrics, JSON and the dashboard over HTTP.
/// Not in the seed's port table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the admin endpoint. Default true.
    pub enabled: bool,
    /// Address to listen on. Default: `127.0.0.1`, or `server.bind` when that is a
    /// loopback address. On any address but loopback the endpoint serves TLS only.
    pub address: Option<IpAddr>,
    /// Port. Default 34800.
    pub port: u16,
    /// `"auto"` (TLS unless the address is loopback) or `"always"`. Default `"auto"`.
    pub tls: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: None,
            port: 34800,
            tls: "auto".into(),
        }
    }
}

impl AdminConfig {
    /// The address to listen on for a server bound to `server_bind`.
    pub fn address_for(&self, server_bind: IpAddr) -> IpAddr {
        self.address.unwrap_or(if server_bind.is_loopback() {
            server_bind
        } else {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        })
    }
}

/// Client settings (`[client]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// The server's address. Default: none, `--server` is required.
    pub server: Option<IpAddr>,
    /// File holding the deployment key. Default: none, `--key-file` is required.
    pub key_file: Option<PathBuf>,
    /// Data directory (client id, cache). Default: none, `--data-dir` is required.
    pub data_dir: Option<PathBuf>,
    /// Address to bind every client port on. Default `0.0.0.0`.
    pub bind: IpAddr,
    /// Seconds between heartbeats. Default 30.
    pub heartbeat_interval_s: f64,
    /// Cache cap: bytes (`"20GiB"`, `"500MB"`, `"1073741824"`) or a share of the disk
    /// holding the data directory (`"25%"`). Default `"10GiB"`.
    pub cache_size: String,
    /// Name reported to the server. Default: the host's name.
    pub hostname: Option<String>,
    /// Serve Prometheus metrics on this port of a loopback address (the client's bind
    /// address when that is loopback, else 127.0.0.1). Default 0: off.
    pub metrics_port: u16,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            server: None,
            key_file: None,
            data_dir: None,
            bind: any(),
            heartbeat_interval_s: 30.0,
            cache_size: "10GiB".into(),
            hostname: None,
            metrics_port: 0,
        }
    }
}

impl ClientConfig {
    /// The heartbeat interval as a [`Duration`].
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_secs_f64(self.heartbeat_interval_s)
    }
}

/// Connector settings (`[connector]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectorConfig {
    /// The server's address. Default: none, `--server` is required.
    pub server: Option<IpAddr>,
    /// File holding the deployment key. Default: none, `--key-file` is required.
    pub key_file: Option<PathBuf>,
    /// Address to bind the connector's reply port on. Default `0.0.0.0`.
    pub bind: IpAddr,
    /// The connector credential file, written by `connector activate --token`. Default:
    /// `connector.credential` beside the key file.
    pub credential_file: Option<PathBuf>,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        ConnectorConfig {
            server: None,
            key_file: None,
            bind: any(),
            credential_file: None,
        }
    }
}

/// Small-message transport settings (`[transport]`), shared by every component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Seconds before the first retransmission of an unanswered request. Default 0.25.
    pub initial_retry_s: f64,
    /// Longest wait between retransmissions, in seconds. Default 4.
    pub max_retry_s: f64,
    /// Seconds after which an unanswered request fails. Default 10.
    pub request_deadline_s: f64,
    /// Oldest accepted send time, seconds behind the receiver's clock. Default 120.
    pub replay_window_s: f64,
    /// Newest accepted send time, seconds ahead of the receiver's clock. Kept small, so a
    /// flood dated ahead cannot hold the replay guard for long. Default 5.
    pub replay_future_skew_s: f64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            initial_retry_s: 0.25,
            max_retry_s: 4.0,
            request_deadline_s: 10.0,
            replay_window_s: 120.0,
            replay_future_skew_s: 5.0,
        }
    }
}

/// Background transfers (`[background]`): LEDBAT++ on every Background port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackgroundConfig {
    /// Ceiling for all of this node's Background transfers together (bytes/s); 0 = none,
    /// LEDBAT++ alone decides. Default 0.
    pub ceiling_bytes_per_s: u64,
    /// Floor per Background connection (bytes/s), so a transfer never starves for ever.
    /// Default 8000.
    pub floor_bytes_per_s: u64,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        BackgroundConfig {
            ceiling_bytes_per_s: 0,
            floor_bytes_per_s: 8000,
        }
    }
}

/// Every setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[ports.*]`: the port table.
    pub ports: Ports,
    /// `[server]`: the server daemon.
    pub server: ServerConfig,
    /// `[client]`: the client daemon.
    pub client: ClientConfig,
    /// `[connector]`: the admin's command line.
    pub connector: ConnectorConfig,
    /// `[transport]`: small-message retries and replay protection.
    pub transport: TransportConfig,
    /// `[background]`: the Background (LEDBAT++) rate limits.
    pub background: BackgroundConfig,
    /// `[admin]`: the server's admin endpoint.
    pub admin: AdminConfig,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings, at a known place.
    #[error("config file {path}, line {line}, key `{key}`: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// The key at fault.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The file is not valid TOML for these settings, at no known place.
    #[error("config file {path}: {message}")]
    ParseNoLocation {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid setting {key}: {message}")]
    Invalid {
        /// The setting, dotted (e.g. `client.heartbeat_interval_s`).
        key: String,
        /// What is wrong and what to use.
        message: String,
    },
}

impl Config {
    /// Reads `path`, or returns the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses TOML `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let (line, key) = locate(text, span.start);
                    ConfigError::Parse {
                        path: path.to_owned(),
                        line,
                        key,
                        message,
                    }
                }
                None => ConfigError::ParseNoLocation {
                    path: path.to_owned(),
                    message,
                },
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(p) = self.ports.problems().into_iter().next() {
            return Err(ConfigError::Invalid {
                key: "ports".into(),
                message: p,
            });
        }
        let positive = [
            (
                "client.heartbeat_interval_s",
                self.client.heartbeat_interval_s,
            ),
            ("transport.initial_retry_s", self.transport.initial_retry_s),
            ("transport.max_retry_s", self.transport.max_retry_s),
            (
                "transport.request_deadline_s",
                self.transport.request_deadline_s,
            ),
            ("transport.replay_window_s", self.transport.replay_window_s),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0 && v < 1e7) {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    message: format!("{v} must be a positive number of seconds"),
                });
            }
        }
        if !(0.1..=3600.0).contains(&self.client.heartbeat_interval_s) {
            return Err(ConfigError::Invalid {
                key: "client.heartbeat_interval_s".into(),
                message: format!(
                    "{} is outside 0.1..=3600 seconds",
                    self.client.heartbeat_interval_s
                ),
            });
        }
        let b = &self.background;
        if b.ceiling_bytes_per_s != 0 && b.ceiling_bytes_per_s < b.floor_bytes_per_s {
            return Err(ConfigError::Invalid {
                key: "background.ceiling_bytes_per_s".into(),
                message: format!(
                    "{} is below background.floor_bytes_per_s ({})",
                    b.ceiling_bytes_per_s, b.floor_bytes_per_s
                ),
            });
        }
        if !matches!(self.admin.tls.as_str(), "auto" | "always") {
            return Err(ConfigError::Invalid {
                key: "admin.tls".into(),
                message: format!("{:?}: expected \"auto\" or \"always\"", self.admin.tls),
            });
        }
        if !matches!(self.server.enrollment.as_str(), "open" | "approve") {
            return Err(ConfigError::Invalid {
                key: "server.enrollment".into(),
                message: format!(
                    "{:?}: expected \"open\" or \"approve\"",
                    self.server.enrollment
                ),
            });
        }
        if !(1.0..=2_592_000.0).contains(&self.server.key_overlap_s) {
            return Err(ConfigError::Invalid {
                key: "server.key_overlap_s".into(),
                message: format!(
                    "{} is outside 1..=2592000 seconds (30 days)",
                    self.server.key_overlap_s
                ),
            });
        }
        if !(3.0..=315_360_000.0).contains(&self.server.client_cert_lifetime_s) {
            return Err(ConfigError::Invalid {
                key: "server.client_cert_lifetime_s".into(),
                message: format!(
                    "{} is outside 3..=315360000 seconds (10 years)",
                    self.server.client_cert_lifetime_s
                ),
            });
        }
        if self.server.offline_after_missed_heartbeats == 0 {
            return Err(ConfigError::Invalid {
                key: "server.offline_after_missed_heartbeats".into(),
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// The 1-based line of byte `offset` in `text`, and the dotted key defined on that line
/// (or the table whose header is on it).
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let line_no = text[..offset].matches('\n').count() + 1;
    let mut table = String::new();
    let mut key = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            let name = l.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            if i + 1 == line_no {
                return (line_no, name);
            }
            table = name;
        } else if i + 1 == line_no {
            key = l
                .split('=')
                .next()
                .unwrap_or("")
                .trim()
                .trim_matches('"')
                .to_owned();
            break;
        }
    }
    let full = match (table.is_empty(), key.is_empty()) {
        (true, _) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    (line_no, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/branchline.toml"))
    }

    #[test]
    fn empty_file_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn values_override_defaults() {
        let c = parse(
            "[ports.server]\nsmall_request = 44323\n[client]\nheartbeat_interval_s = 2.5\nserver = \"10.0.0.1\"\n",
        )
        .unwrap();
        assert_eq!(c.ports.server.small_request, 44323);
        assert_eq!(c.ports.server.small_reply, 34322);
        assert_eq!(c.client.heartbeat_interval(), Duration::from_millis(2500));
        assert_eq!(c.client.server, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn wrong_type_names_file_line_and_key() {
        let err = parse("# comment\n[ports.server]\nsmall_reply = 1\nsmall_request = \"abc\"\n")
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/etc/branchline.toml"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("ports.server.small_request"), "{msg}");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("[client]\nheartbeat_interval_s = 3\nhartbeat = 4\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 3"), "{msg}");
        assert!(msg.contains("client.hartbeat"), "{msg}");
    }

    #[test]
    fn syntax_error_names_line() {
        let err = parse("[client]\nserver = \n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("line 2"), "{msg}");
    }

    #[test]
    fn out_of_range_port_is_refused() {
        let msg = parse("[ports.client]\ncontent_fg = 70000\n")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("line 2") && msg.contains("ports.client.content_fg"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_are_refused_by_key() {
        let msg = parse("[client]\nheartbeat_interval_s = -1\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("client.heartbeat_interval_s"), "{msg}");
        let msg = parse("[ports.client]\ncontent_fg = 34325\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("client.small_request"), "{msg}");
    }

    /// The example in docs/configuration.md lists every key with its default.
    #[test]
    fn documented_example_is_the_defaults() {
        let doc = include_str!("../../../docs/configuration.md");
        let start = doc.find("```toml\n").expect("a toml block") + 8;
        let end = start + doc[start..].find("```").expect("block end");
        let c = parse(&doc[start..end]).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn background_ceiling_below_floor_is_refused() {
        let msg = parse("[background]\nceiling_bytes_per_s = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("background.ceiling_bytes_per_s"), "{msg}");
        let c = parse("[background]\nceiling_bytes_per_s = 2500000\n").unwrap();
        assert_eq!(c.background.ceiling_bytes_per_s, 2_500_000);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let err = Config::load(Some(Path::new("/nonexistent/branchline.toml"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/branchline.toml"));
    }
}
