//! Names: deployments, clients, and the identity a certificate proves.
//!
//! Every certificate of a deployment carries exactly one DNS subject alternative
//! name that says who holds it:
//!
//! | holder | DNS name | example |
//! |---|---|---|
//! | the server | `s.<deployment>` | `s.acme` |
//! | a client | `<client>.c.<deployment>` | `0f3a9c.c.acme` |
//!
//! The same name is the TLS server name the connecting side verifies the peer's
//! certificate against, so it checks that it reached the node it meant to reach, not
//! just some member of the deployment. The name is not sent as SNI (see [`crate::tls`]).
//! This module is pure: no I/O, no clock.

use std::fmt;

use rustls::pki_types::{CertificateDer, ServerName};
use thiserror::Error;

/// Longest label we accept, in bytes (the DNS limit).
pub const MAX_LABEL_LEN: usize = 63;

/// Label of the server in certificate names (`s.<deployment>`).
const SERVER_LABEL: &str = "s";
/// Label between a client name and the deployment (`<client>.c.<deployment>`).
const CLIENT_LABEL: &str = "c";

/// A name was not a valid DNS label, or a certificate did not name an identity.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The text is not a DNS label (1..=63 bytes of `a-z`, `0-9`, `-`, not starting
    /// or ending with `-`).
    #[error(
        "{what} {text:?} is not a valid name: use 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    InvalidLabel {
        /// Which name was being checked ("deployment name", "client name").
        what: &'static str,
        /// The rejected text.
        text: String,
    },
    /// A deployment name must start with a letter.
    #[error("deployment name {0:?} must start with a letter (a-z)")]
    DeploymentStartsWithLetter(String),
    /// The certificate could not be parsed as X.509.
    #[error("peer certificate is not valid X.509: {0}")]
    BadCertificate(String),
    /// The certificate carries no Branchline name of this deployment.
    #[error(
        "peer certificate names no Branchline identity of deployment {deployment:?}; it was not issued by this deployment's server"
    )]
    NoIdentity {
        /// The deployment we expected.
        deployment: String,
    },
    /// The certificate carries more than one Branchline name of this deployment.
    #[error(
        "peer certificate names more than one identity of deployment {deployment:?}; refusing an ambiguous certificate"
    )]
    AmbiguousIdentity {
        /// The deployment we expected.
        deployment: String,
    },
    /// The peer presented no certificate (should not happen under mutual TLS).
    #[error("peer presented no certificate")]
    NoCertificate,
}

fn check_label(what: &'static str, text: &str) -> Result<(), NameError> {
    let ok = !text.is_empty()
        && text.len() <= MAX_LABEL_LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::InvalidLabel {
            what,
            text: text.to_owned(),
        })
    }
}

/// The name of a deployment: one DNS label starting with a letter, e.g. `acme`.
/// It is the last label of every certificate name, and a last label must not
/// look like a number (RFC 9849 section 6.1.7), hence the letter. Short names
/// keep certificates small (every certificate carries it twice: issuer and SAN).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentName(String);

impl DeploymentName {
    /// Checks and wraps a deployment name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_label("deployment name", &name)?;
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(NameError::DeploymentStartsWithLetter(name));
        }
        Ok(Self(name))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeploymentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's name in certificates: one DNS label, e.g. the client id in lowercase
/// hex. The server assigns it at registration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientName(String);

impl ClientName {
    /// Checks and wraps a client name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check_label("client name", &name)?;
        Ok(Self(name))
    }

    /// The name of a client whose id is `id`: the id in lowercase hex, as
    /// `branchline-wire`'s `ClientId` displays it (16 bytes give 32 characters).
    /// Ids of 1 to 31 bytes fit a DNS label.
    pub fn from_id(id: &[u8]) -> Result<Self, NameError> {
        Self::new(hex::encode(id))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who holds a certificate of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// The deployment's server (any of its processes).
    Server,
    /// A registered client.
    Client(ClientName),
}

impl Role {
    /// The DNS name for this role in `deployment`: the certificate SAN, and the name the
    /// connecting side verifies its holder's certificate against (never sent as SNI).
    pub fn dns_name(&self, deployment: &DeploymentName) -> String {
        match self {
            Role::Server => format!("{SERVER_LABEL}.{deployment}"),
            Role::Client(name) => format!("{name}.{CLIENT_LABEL}.{deployment}"),
        }
    }

    /// The TLS server name to pass when connecting to this role's holder.
    pub fn server_name(&self, deployment: &DeploymentName) -> ServerName<'static> {
        // Labels are checked at construction, so the name is always a valid DNS name.
        ServerName::try_from(self.dns_name(deployment))
            .expect("labels checked at construction form a valid DNS name")
    }

    /// Parses a DNS name of `deployment` back into a role; `None` if the name does
    /// not belong to `deployment` or has the wrong shape.
    pub fn from_dns_name(name: &str, deployment: &DeploymentName) -> Option<Role> {
        let prefix = name.strip_suffix(deployment.as_str())?.strip_suffix('.')?;
        if prefix == SERVER_LABEL {
            return Some(Role::Server);
        }
        let client = prefix.strip_suffix(CLIENT_LABEL)?.strip_suffix('.')?;
        ClientName::new(client).ok().map(Role::Client)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Server => f.write_str("server"),
            Role::Client(name) => write!(f, "client {name}"),
        }
    }
}

/// The authenticated identity of a peer, read from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Who the peer is.
    pub role: Role,
    /// The certificate's serial number (big-endian bytes, as in the DER), for
    /// revoking one certificate rather than a whole client.
    pub serial: Vec<u8>,
}

impl PeerIdentity {
    /// Reads the identity from an end-entity certificate of `deployment`. This does
    /// not verify the certificate: call it on certificates the TLS layer verified.
    pub fn from_certificate(
        cert: &CertificateDer<'_>,
        deployment: &DeploymentName,
    ) -> Result<Self, NameError> {
        let parsed = webpki::EndEntityCert::try_from(cert)
            .map_err(|e| NameError::BadCertificate(e.to_string()))?;
        let mut roles = parsed
            .valid_dns_names()
            .filter_map(|n| Role::from_dns_name(n, deployment));
        let role = roles.next().ok_or_else(|| NameError::NoIdentity {
            deployment: deployment.to_string(),
        })?;
        if roles.next().is_some() {
            return Err(NameError::AmbiguousIdentity {
                deployment: deployment.to_string(),
            });
        }
        Ok(Self {
            role,
            serial: parsed.serial().to_vec(),
        })
    }

    /// Reads the identity from a verified certificate chain (leaf first).
    pub fn from_chain(
        chain: &[CertificateDer<'_>],
        deployment: &DeploymentName,
    ) -> Result<Self, NameError> {
        let leaf = chain.first().ok_or(NameError::NoCertificate)?;
        Self::from_certificate(leaf, deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dep() -> DeploymentName {
        DeploymentName::new("acme").unwrap()
    }

    #[test]
    fn labels_are_checked() {
        assert!(DeploymentName::new("acme-2").is_ok());
        assert!(DeploymentName::new("").is_err());
        assert!(DeploymentName::new("Acme").is_err());
        assert!(DeploymentName::new("-acme").is_err());
        assert!(DeploymentName::new("acme-").is_err());
        assert!(DeploymentName::new("a.b").is_err());
        assert!(DeploymentName::new("a".repeat(64)).is_err());
        assert!(DeploymentName::new("1234").is_err());
        assert!(DeploymentName::new("0xab").is_err());
        assert!(ClientName::new("1234").is_ok());
        assert_eq!(
            ClientName::from_id(&[0x0f, 0xa0, 0x01]).unwrap().as_str(),
            "0fa001"
        );
        assert_eq!(ClientName::from_id(&[0xab; 16]).unwrap().as_str().len(), 32);
        assert!(ClientName::from_id(&[]).is_err());
        assert!(ClientName::from_id(&[1; 32]).is_err());
        assert!(ClientName::new("a".repeat(63)).is_ok());
    }

    #[test]
    fn dns_names_round_trip() {
        let d = dep();
        assert_eq!(Role::Server.dns_name(&d), "s.acme");
        let c = Role::Client(ClientName::new("0f3a").unwrap());
        assert_eq!(c.dns_name(&d), "0f3a.c.acme");
        assert_eq!(Role::from_dns_name("s.acme", &d), Some(Role::Server));
        assert_eq!(Role::from_dns_name("0f3a.c.acme", &d), Some(c));
    }

    #[test]
    fn foreign_or_malformed_names_are_not_identities() {
        let d = dep();
        for n in [
            "s.other",
            "x.c.other",
            "acme",
            ".acme",
            "c.acme",
            "x.y.c.acme",
            "x.d.acme",
            "s.xacme",
            "xs.acme",
            "-x.c.acme",
        ] {
            assert_eq!(Role::from_dns_name(n, &d), None, "{n}");
        }
    }

    proptest! {
        #[test]
        fn client_names_round_trip(name in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            let d = dep();
            let role = Role::Client(ClientName::new(name).unwrap());
            prop_assert_eq!(Role::from_dns_name(&role.dns_name(&d), &d), Some(role));
        }

        #[test]
        fn every_valid_name_is_a_valid_tls_server_name(
            dep in "[a-z0-9-]{1,63}",
            client in "[a-z0-9-]{1,63}",
        ) {
            if let (Ok(d), Ok(c)) = (DeploymentName::new(dep), ClientName::new(client)) {
                // server_name() would panic otherwise.
                let _ = Role::Server.server_name(&d);
                let _ = Role::Client(c).server_name(&d);
            }
        }

        #[test]
        fn name_parser_never_panics(name in ".{0,80}") {
            let _ = Role::from_dns_name(&name, &dep());
        }

        #[test]
        fn certificate_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let cert = CertificateDer::from(bytes);
            prop_assert!(PeerIdentity::from_certificate(&cert, &dep()).is_err());
        }
    }
}
