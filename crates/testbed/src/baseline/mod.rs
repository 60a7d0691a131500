//! Baselines measured on the same test bed, so that Branchline's figures
//! stand next to them:
//!
//! - [`tcp`]: a plain TCP bulk transfer (to calibrate links; also a
//!   competing flow with a chosen congestion control);
//! - [`http`]: every client downloads the package over HTTP from the
//!   origin host, the naive way;
//! - [`bittorrent`]: a BitTorrent swarm of the same package with aria2
//!   (Debian package `aria2`) and a small tracker in this crate.
//!
//! The download baselines return a [`DownloadReport`]: when each client
//! finished, how many bytes crossed each WAN link and how many the origin
//! sent, against the package size. Those are the figures Branchline's own
//! runs are compared with (each byte across each WAN link once, the origin
//! serving each package once).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::testbed::{LinkCounters, Testbed};
use crate::topology::Direction;

pub mod bittorrent;
pub mod http;
pub mod tcp;

/// A package to distribute: deterministic pseudo-random bytes.
#[derive(Clone, Debug)]
pub struct Package {
    /// File name.
    pub name: String,
    /// Contents.
    pub bytes: Arc<Vec<u8>>,
}

impl Package {
    /// `size` bytes from a xorshift generator seeded with `seed`, so that
    /// nothing compresses and every run can rebuild the same package.
    pub fn generate(name: &str, size: usize, seed: u64) -> Package {
        let mut x = seed | 1;
        let mut v = Vec::with_capacity(size + 8);
        while v.len() < size {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(size);
        Package {
            name: name.to_string(),
            bytes: Arc::new(v),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Whether the package is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes the package to `dir/name`.
    pub fn write_to(&self, dir: &std::path::Path) -> Result<std::path::PathBuf> {
        let p = dir.join(&self.name);
        std::fs::write(&p, &*self.bytes)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        Ok(p)
    }
}

/// When one client had the whole package.
#[derive(Clone, Debug, Serialize)]
pub struct ClientResult {
    /// Host name.
    pub host: String,
    /// Its office.
    pub office: String,
    /// From the common start to the verified, complete package.
    pub seconds: f64,
}

/// Traffic over one WAN link during a run, and as a multiple of the
/// package size.
#[derive(Clone, Debug, Serialize)]
pub struct LinkUse {
    /// Office behind the link.
    pub link: String,
    /// Direction seen from the office.
    pub dir: Direction,
    /// Bytes of Ethernet frames.
    pub bytes: u64,
    /// `bytes / package size`.
    pub packages: f64,
}

/// Result of a download baseline.
#[derive(Clone, Debug, Serialize)]
pub struct DownloadReport {
    /// `http` or `bittorrent`.
    pub method: String,
    /// Package size in bytes.
    pub package_bytes: u64,
    /// Per-client completion, in topology order.
    pub clients: Vec<ClientResult>,
    /// When the last client finished, seconds.
    pub makespan_seconds: f64,
    /// WAN traffic per link and direction.
    pub wan: Vec<LinkUse>,
    /// Bytes the origin host's interface sent (Ethernet frames).
    pub origin_tx_bytes: u64,
}

impl DownloadReport {
    pub(crate) fn wan_use(
        before: &[LinkCounters],
        after: &[LinkCounters],
        size: u64,
    ) -> Vec<LinkUse> {
        after
            .iter()
            .map(|a| {
                let b = LinkCounters::find(before, &a.link, a.dir).map_or(0, |b| b.bytes);
                let bytes = a.bytes.saturating_sub(b);
                LinkUse {
                    link: a.link.clone(),
                    dir: a.dir,
                    bytes,
                    packages: bytes as f64 / size.max(1) as f64,
                }
            })
            .collect()
    }
}

impl fmt::Display for DownloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = self.package_bytes as f64 / (1 << 20) as f64;
        writeln!(
            f,
            "{}: {} clients, package {:.1} MiB, last client done after {:.2} s",
            self.method,
            self.clients.len(),
            mib,
            self.makespan_seconds
        )?;
        for c in &self.clients {
            writeln!(
                f,
                "  client {:<12} office {:<10} {:>8.2} s",
                c.host, c.office, c.seconds
            )?;
        }
        for w in &self.wan {
            writeln!(
                f,
                "  WAN {:<10} {:<8} {:>12} bytes = {:>5.2} x package",
                w.link, w.dir, w.bytes, w.packages
            )?;
        }
        write!(
            f,
            "  origin sent {} bytes = {:.2} x package",
            self.origin_tx_bytes,
            self.origin_tx_bytes as f64 / self.package_bytes.max(1) as f64
        )
    }
}

/// Options shared by the download baselines.
#[derive(Clone, Debug)]
pub struct DownloadOptions {
    /// Host that holds the package.
    pub origin: String,
    /// Hosts that download it; empty means every host except the origin
    /// and any host named `server`.
    pub clients: Vec<String>,
    /// Package size in bytes.
    pub size: usize,
    /// Longest the whole run may take.
    pub timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            origin: "origin".into(),
            clients: Vec::new(),
            size: 8 << 20,
            timeout: Duration::from_secs(120),
        }
    }
}

impl DownloadOptions {
    /// The client list, defaulted as documented.
    pub fn resolve_clients(&self, tb: &Testbed) -> Result<Vec<String>> {
        tb.host_addr(&self.origin)?;
        if !self.clients.is_empty() {
            for c in &self.clients {
                tb.host_addr(c)?;
            }
            return Ok(self.clients.clone());
        }
        let v: Vec<String> = tb
            .topology()
            .host_names()
            .filter(|h| *h != self.origin && *h != "server")
            .map(str::to_string)
            .collect();
        if v.is_empty() {
            return Err(Error::Baseline("no client hosts in the topology".into()));
        }
        Ok(v)
    }
}
