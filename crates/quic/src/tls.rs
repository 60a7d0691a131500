//! rustls configurations for mutually authenticated QUIC inside one deployment.
//!
//! Both directions use the same checks:
//!
//! 1. the peer's chain verifies against the deployment CA certificate alone (no
//!    system or web roots), with rustls' WebPKI verifiers and the ring provider;
//! 2. the connecting side also checks the peer's certificate names the node it
//!    meant to reach (the TLS server name, see [`Role::server_name`](crate::Role::server_name));
//! 3. the peer's certificate names exactly one identity of the deployment;
//! 4. neither that client nor that certificate serial is in the [`RevocationList`],
//!    which the application updates at run time (checked at every handshake, and
//!    by the serving loops at every new stream, so open connections of a revoked
//!    peer end too).
//!
//! TLS 1.3 only (QUIC requires it), without session resumption, so every handshake
//! runs these checks and presents the node's live certificate (renewal,
//! [`NodeIdentity::renew`](crate::NodeIdentity::renew)). The client side does not send SNI: the name
//! is still checked locally against the peer's certificate, but client names do
//! not travel in clear text, and the accepting side has only one certificate.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use thiserror::Error;

use crate::identity::{ClientName, DeploymentName, NameError, PeerIdentity};
use crate::node::NodeIdentity;

/// A TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The CA certificate cannot serve as a trust anchor.
    #[error("deployment CA certificate is not usable as a trust anchor: {0}")]
    BadCa(String),
    /// rustls refused the identity or settings.
    #[error("TLS configuration failed: {0}; check the node's certificate and key")]
    Rustls(#[from] rustls::Error),
    /// The node's certificate and the trust settings are of different deployments.
    #[error(
        "node certificate is of deployment {identity:?} but trust is for deployment {trust:?}; re-register the node"
    )]
    DeploymentMismatch {
        /// Deployment of the node's certificate.
        identity: String,
        /// Deployment of the trust settings.
        trust: String,
    },
}

#[derive(Debug, Default)]
struct Revoked {
    clients: HashSet<ClientName>,
    serials: HashSet<Vec<u8>>,
}

/// The set of revoked clients and certificate serials, shared between the
/// application (which updates it) and the TLS verifiers (which read it at each
/// handshake). Cloning shares the same set.
#[derive(Debug, Clone, Default)]
pub struct RevocationList(Arc<RwLock<Revoked>>);

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Revoked> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revoked> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses every certificate of `client` from now on.
    pub fn revoke_client(&self, client: ClientName) {
        self.write().clients.insert(client);
    }

    /// Accepts `client` again (its certificates still need to verify).
    pub fn reinstate_client(&self, client: &ClientName) {
        self.write().clients.remove(client);
    }

    /// Refuses the one certificate with this serial (big-endian bytes, as in
    /// [`PeerIdentity::serial`]), e.g. a client's old certificate after renewal.
    pub fn revoke_serial(&self, serial: &[u8]) {
        self.write().serials.insert(serial.to_vec());
    }

    /// Replaces the whole list, e.g. with the list the server last sent.
    pub fn replace(
        &self,
        clients: impl IntoIterator<Item = ClientName>,
        serials: impl IntoIterator<Item = Vec<u8>>,
    ) {
        let mut w = self.write();
        w.clients = clients.into_iter().collect();
        w.serials = serials.into_iter().collect();
    }

    /// Replaces the revoked clients, keeping the revoked serials (e.g. with the list
    /// the server last sent). Returns true when the set changed.
    pub fn replace_clients(&self, clients: impl IntoIterator<Item = ClientName>) -> bool {
        let new: HashSet<ClientName> = clients.into_iter().collect();
        let mut w = self.write();
        if w.clients == new {
            return false;
        }
        w.clients = new;
        true
    }

    /// Number of revoked clients.
    pub fn clients_len(&self) -> usize {
        self.read().clients.len()
    }

    /// Whether this peer's client or certificate is revoked. The server itself is
    /// never revoked by name (a compromised server means a new deployment CA).
    pub fn is_revoked(&self, peer: &PeerIdentity) -> bool {
        let r = self.read();
        if r.serials.contains(&peer.serial) {
            return true;
        }
        match &peer.role {
            crate::identity::Role::Client(name) => r.clients.contains(name),
            crate::identity::Role::Server => false,
        }
    }
}

/// What a node trusts: the deployment, its CA certificate, and the revocations.
#[derive(Debug, Clone)]
pub struct DeploymentTrust {
    /// The deployment.
    pub deployment: DeploymentName,
    /// The deployment CA certificate (DER), the only trust anchor.
    pub ca: CertificateDer<'static>,
    /// Revoked clients and serials.
    pub revoked: RevocationList,
}

impl DeploymentTrust {
    /// Trust for `deployment` anchored at `ca`, with an empty revocation list.
    pub fn new(deployment: DeploymentName, ca: CertificateDer<'static>) -> Self {
        Self {
            deployment,
            ca,
            revoked: RevocationList::new(),
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::BadCa(e.to_string()))?;
        Ok(Arc::new(roots))
    }

    /// Checks a verified end-entity certificate's identity and revocation.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<PeerIdentity, rustls::Error> {
        let peer = PeerIdentity::from_certificate(end_entity, &self.deployment)
            .map_err(|e| rustls::Error::InvalidCertificate(name_error(e)))?;
        if self.revoked.is_revoked(&peer) {
            tracing::info!(peer = %peer.role, "refused a revoked certificate");
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(peer)
    }
}

fn name_error(e: NameError) -> CertificateError {
    CertificateError::Other(rustls::OtherError(Arc::new(e)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The handshake-signature methods, which both verifiers leave to their WebPKI `inner`
/// verifier (the client and server verifier traits declare them alike).
macro_rules! delegate_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// Verifies clients for the accepting side: WebPKI chain to the deployment CA,
/// then identity and revocation.
#[derive(Debug)]
struct DeploymentClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust: DeploymentTrust,
}

impl ClientCertVerifier for DeploymentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.trust.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    delegate_signatures!();

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// Verifies the accepting peer for the connecting side: WebPKI chain to the
/// deployment CA and name = the node we dialled, then identity and revocation.
#[derive(Debug)]
struct DeploymentServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    trust: DeploymentTrust,
}

impl ServerCertVerifier for DeploymentServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        self.trust.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    delegate_signatures!();
}

/// Presents a node's live certificate ([`NodeIdentity::renew`] swaps it), as the
/// accepting side and as the connecting side.
#[derive(Debug)]
struct LiveResolver(crate::node::LiveCert);

impl LiveResolver {
    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::server::ResolvesServerCert for LiveResolver {
    fn resolve(
        &self,
        _client_hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for LiveResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn check_same_deployment(identity: &NodeIdentity, trust: &DeploymentTrust) -> Result<(), TlsError> {
    if identity.deployment != trust.deployment {
        return Err(TlsError::DeploymentMismatch {
            identity: identity.deployment.to_string(),
            trust: trust.deployment.to_string(),
        });
    }
    Ok(())
}

/// The rustls configuration for the accepting side of `alpn`: presents
/// `identity`'s live certificate (swapped by [`NodeIdentity::renew`]), requires a
/// client certificate of the deployment.
pub fn server_config(
    identity: &NodeIdentity,
    trust: &DeploymentTrust,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    check_same_deployment(identity, trust)?;
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(trust.roots()?, provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa(e.to_string()))?;
    let verifier = Arc::new(DeploymentClientVerifier {
        inner,
        trust: trust.clone(),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(LiveResolver(identity.live())));
    config.alpn_protocols = vec![alpn.to_vec()];
    // No session resumption: every handshake verifies the peer's certificate (revocation,
    // renewal) and presents our live certificate.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// The rustls configuration for the connecting side of `alpn`: presents
/// `identity`'s live certificate, requires the peer to hold the certificate of the
/// node dialled.
pub fn client_config(
    identity: &NodeIdentity,
    trust: &DeploymentTrust,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    check_same_deployment(identity, trust)?;
    let provider = provider();
    let inner = WebPkiServerVerifier::builder_with_provider(trust.roots()?, provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa(e.to_string()))?;
    let verifier = Arc::new(DeploymentServerVerifier {
        inner,
        trust: trust.clone(),
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(LiveResolver(identity.live())));
    config.alpn_protocols = vec![alpn.to_vec()];
    config.enable_sni = false;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;
    use std::time::{Duration, SystemTime};

    fn client(name: &str, serial: u8) -> PeerIdentity {
        PeerIdentity {
            role: Role::Client(ClientName::new(name).unwrap()),
            serial: vec![serial],
        }
    }

    #[test]
    fn revocation_by_client_and_by_serial() {
        let list = RevocationList::new();
        let shared = list.clone();
        let (a1, a2, b) = (client("a", 1), client("a", 2), client("b", 3));
        assert!(!list.is_revoked(&a1));
        shared.revoke_client(ClientName::new("a").unwrap());
        assert!(list.is_revoked(&a1) && list.is_revoked(&a2) && !list.is_revoked(&b));
        list.reinstate_client(&ClientName::new("a").unwrap());
        list.revoke_serial(&[1]);
        assert!(list.is_revoked(&a1) && !list.is_revoked(&a2));
        // The server is never revoked by name, only by serial.
        let server = PeerIdentity {
            role: Role::Server,
            serial: vec![9],
        };
        list.replace([ClientName::new("b").unwrap()], [vec![9]]);
        assert!(list.is_revoked(&server) && list.is_revoked(&b) && !list.is_revoked(&a1));
        list.replace([], []);
        assert!(!list.is_revoked(&server) && !list.is_revoked(&b));
    }

    #[test]
    fn configs_refuse_another_deployments_trust() {
        let now = SystemTime::now();
        let year = Duration::from_secs(365 * 24 * 3600);
        let ca =
            crate::DeploymentCa::generate(DeploymentName::new("acme").unwrap(), now, year).unwrap();
        let other =
            crate::DeploymentCa::generate(DeploymentName::new("beta").unwrap(), now, year).unwrap();
        let id = ca.server_identity(now, year).unwrap();
        let trust = DeploymentTrust::new(ca.deployment().clone(), ca.certificate().clone());
        assert!(server_config(&id, &trust, b"x").is_ok());
        assert!(client_config(&id, &trust, b"x").is_ok());
        let wrong = DeploymentTrust::new(other.deployment().clone(), other.certificate().clone());
        assert!(matches!(
            server_config(&id, &wrong, b"x"),
            Err(TlsError::DeploymentMismatch { .. })
        ));
        assert!(matches!(
            client_config(&id, &wrong, b"x"),
            Err(TlsError::DeploymentMismatch { .. })
        ));
        // A non-certificate as CA is refused clearly.
        let garbage = DeploymentTrust::new(
            ca.deployment().clone(),
            CertificateDer::from(vec![1u8, 2, 3]),
        );
        assert!(matches!(
            server_config(&id, &garbage, b"x"),
            Err(TlsError::BadCa(_))
        ));
    }
}
