//! What the QUIC layer's real-socket tests share: a deployment CA that enrolls clients
//! the way the real flow does, and loopback addresses.

#![allow(dead_code)] // Each test file uses its own part.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use branchline_quic::{
    ClientIdentity, ClientName, DeploymentCa, DeploymentName, DeploymentTrust, NodeIdentity, Role,
};

/// Certificate lifetime in these tests.
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// 127.0.0.1 with a port the kernel picks.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The role of client `name`.
pub fn client_role(name: &str) -> Role {
    Role::Client(ClientName::new(name).unwrap())
}

/// A deployment CA; the key directories of the clients it enrolled live as long as it.
pub struct Deployment {
    /// The CA.
    pub ca: DeploymentCa,
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl Deployment {
    /// A new CA for deployment `acme`.
    pub fn new() -> Self {
        Self {
            ca: DeploymentCa::generate(
                DeploymentName::new("acme").unwrap(),
                SystemTime::now(),
                YEAR,
            )
            .unwrap(),
            dirs: Mutex::new(Vec::new()),
        }
    }

    /// What every node of the deployment trusts.
    pub fn trust(&self) -> DeploymentTrust {
        DeploymentTrust::new(self.ca.deployment().clone(), self.ca.certificate().clone())
    }

    /// Registers a client the way the real flow does: key in a directory, request,
    /// issued certificate, checked and installed.
    pub fn client(&self, name: &str) -> NodeIdentity {
        let dir = tempfile::tempdir().unwrap();
        let id = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let name = ClientName::new(name).unwrap();
        let now = SystemTime::now();
        let cert = self
            .ca
            .issue_client_cert(&name, &id.cert_request().unwrap(), now, YEAR)
            .unwrap();
        let node = id
            .install_certificate(
                cert,
                self.ca.certificate(),
                self.ca.deployment(),
                &Role::Client(name),
                now,
            )
            .unwrap();
        self.dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(dir);
        node
    }

    /// The server's identity.
    pub fn server(&self) -> NodeIdentity {
        self.ca.server_identity(SystemTime::now(), YEAR).unwrap()
    }
}
