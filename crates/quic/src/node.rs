//! A node's own identity: its key pair, its certificate, and the request a client
//! sends at registration to get one.
//!
//! A client creates an Ed25519 key pair once ([`ClientIdentity::load_or_generate`],
//! kept in its data directory at mode 0600) and sends a [`CertRequest`] (97 bytes:
//! version, public key, proof of possession) inside its registration datagram. The
//! server's [`DeploymentCa`](crate::DeploymentCa) answers with a certificate, which
//! the client checks and stores with [`ClientIdentity::install_certificate`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rcgen::{KeyPair, PKCS_ED25519};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use thiserror::Error;

use crate::files::{self, FileError, KEY_MODE, PUBLIC_MODE};
use crate::identity::{DeploymentName, NameError, PeerIdentity, Role};

/// Version byte of the [`CertRequest`] encoding.
pub const CERT_REQUEST_VERSION: u8 = 1;
/// Length of an encoded [`CertRequest`], in bytes.
pub const CERT_REQUEST_LEN: usize = 1 + 32 + 64;
/// Domain separation for the proof-of-possession signature.
const PROOF_CONTEXT: &[u8] = b"branchline/cert-request/1\0";

/// Key, certificate or request errors.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] FileError),
    /// A name was invalid or a certificate named no identity.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A key file did not hold an Ed25519 PKCS#8 key.
    #[error("{path} does not hold an Ed25519 private key ({detail}); delete it to make a new one")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A PEM certificate file could not be decoded.
    #[error("{path} does not hold a PEM certificate ({detail})")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// An encoded certificate request has the wrong length or version.
    #[error(
        "certificate request is malformed: {0}; the client must send {CERT_REQUEST_LEN} bytes (version {CERT_REQUEST_VERSION})"
    )]
    MalformedRequest(String),
    /// The proof of possession does not verify.
    #[error(
        "certificate request's proof of possession does not verify; the client must sign with the key it asks a certificate for"
    )]
    BadProof,
    /// A certificate does not verify against the deployment CA, or does not name
    /// the expected holder.
    #[error("certificate does not verify for {expected}: {detail}")]
    Untrusted {
        /// Who the certificate should belong to.
        expected: String,
        /// What the verifier said.
        detail: String,
    },
    /// A certificate is for another key than ours.
    #[error(
        "the certificate is for another public key than this node's; the server answered another request"
    )]
    WrongKey,
    /// Key generation or signing failed inside the crypto library.
    #[error("crypto library failed: {0}")]
    Crypto(String),
}

/// What a client sends to get a certificate: its Ed25519 public key and a
/// signature by that key proving it holds the private half.
///
/// Wire form ([`CertRequest::encode`]): `version (1 byte) || public key (32) ||
/// signature (64)` = 97 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRequest {
    /// Raw Ed25519 public key.
    pub public_key: [u8; 32],
    /// Ed25519 signature over `"branchline/cert-request/1\0" || public_key`.
    pub proof: [u8; 64],
}

impl CertRequest {
    fn proof_message(public_key: &[u8; 32]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(PROOF_CONTEXT.len() + 32);
        msg.extend_from_slice(PROOF_CONTEXT);
        msg.extend_from_slice(public_key);
        msg
    }

    /// Encodes to the 97-byte wire form.
    pub fn encode(&self) -> [u8; CERT_REQUEST_LEN] {
        let mut out = [0u8; CERT_REQUEST_LEN];
        out[0] = CERT_REQUEST_VERSION;
        out[1..33].copy_from_slice(&self.public_key);
        out[33..].copy_from_slice(&self.proof);
        out
    }

    /// Decodes the wire form. Does not check the proof: see [`CertRequest::verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() != CERT_REQUEST_LEN {
            return Err(IdentityError::MalformedRequest(format!(
                "{} bytes",
                bytes.len()
            )));
        }
        if bytes[0] != CERT_REQUEST_VERSION {
            return Err(IdentityError::MalformedRequest(format!(
                "version {}",
                bytes[0]
            )));
        }
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(&bytes[1..33]);
        let mut proof = [0u8; 64];
        proof.copy_from_slice(&bytes[33..]);
        Ok(Self { public_key, proof })
    }

    /// Checks the proof of possession.
    pub fn verify(&self) -> Result<(), IdentityError> {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public_key)
            .verify(&Self::proof_message(&self.public_key), &self.proof)
            .map_err(|_| IdentityError::BadProof)
    }
}

/// A node's TLS identity: its certificate and private key, ready for rustls.
///
/// The TLS configurations built from an identity ([`crate::tls`]) present its *live*
/// certificate, which [`NodeIdentity::renew`] replaces while the endpoints run: new
/// handshakes use the new certificate, open connections keep theirs. Clones share the
/// live certificate.
pub struct NodeIdentity {
    /// The deployment the certificate belongs to.
    pub deployment: DeploymentName,
    /// Who the certificate says we are.
    pub role: Role,
    /// The certificate (DER), signed by the deployment CA, this identity was made with
    /// (see [`NodeIdentity::current_certificate`] for the one presented now).
    pub certificate: CertificateDer<'static>,
    key_pkcs8: Vec<u8>,
    live: LiveCert,
}

/// The certificate and key presented now, shared by every TLS configuration of a node.
pub(crate) type LiveCert = Arc<RwLock<Arc<CertifiedKey>>>;

fn certified(
    certificate: &CertificateDer<'static>,
    key_pkcs8: &[u8],
) -> Result<Arc<CertifiedKey>, IdentityError> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(
        vec![certificate.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pkcs8.to_vec())),
        &provider,
    )
    .map(Arc::new)
    .map_err(|e| {
        IdentityError::Crypto(format!(
            "certificate and key do not form a TLS identity: {e}"
        ))
    })
}

impl NodeIdentity {
    pub(crate) fn new(
        deployment: DeploymentName,
        role: Role,
        certificate: CertificateDer<'static>,
        key_pkcs8: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let live = Arc::new(RwLock::new(certified(&certificate, &key_pkcs8)?));
        Ok(Self {
            deployment,
            role,
            certificate,
            key_pkcs8,
            live,
        })
    }

    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    pub(crate) fn live(&self) -> LiveCert {
        self.live.clone()
    }

    /// The certificate presented in new handshakes now.
    pub fn current_certificate(&self) -> CertificateDer<'static> {
        let live = self.live.read().unwrap_or_else(|e| e.into_inner());
        live.cert[0].clone()
    }

    /// Hot-swaps the certificate: every endpoint built from this identity (or a clone)
    /// presents `newer`'s certificate and key in new handshakes, as server and as client.
    /// `newer` must name the same node of the same deployment.
    pub fn renew(&self, newer: &NodeIdentity) -> Result<(), IdentityError> {
        if newer.deployment != self.deployment || newer.role != self.role {
            return Err(IdentityError::Untrusted {
                expected: format!("{} of deployment {}", self.role, self.deployment),
                detail: format!(
                    "the renewed certificate is for {} of deployment {}",
                    newer.role, newer.deployment
                ),
            });
        }
        let fresh = newer.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            deployment: self.deployment.clone(),
            role: self.role.clone(),
            certificate: self.certificate.clone(),
            key_pkcs8: self.key_pkcs8.clone(),
            live: self.live.clone(),
        }
    }
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("deployment", &self.deployment)
            .field("role", &self.role)
            .field("certificate_len", &self.certificate.len())
            .field("key", &"[elided]")
            .finish()
    }
}

/// Checks that `cert` chains to `ca`, is valid at `now`, and names `role` in
/// `deployment`. Used by a client before it stores a certificate and by tests.
pub fn verify_certificate(
    cert: &CertificateDer<'_>,
    ca: &CertificateDer<'_>,
    deployment: &DeploymentName,
    role: &Role,
    now: SystemTime,
) -> Result<PeerIdentity, IdentityError> {
    let untrusted = |detail: String| IdentityError::Untrusted {
        expected: format!("{role} of deployment {deployment}"),
        detail,
    };
    let anchor = webpki::anchor_from_trusted_cert(ca).map_err(|e| untrusted(e.to_string()))?;
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| untrusted(e.to_string()))?;
    let now = UnixTime::since_unix_epoch(
        now.duration_since(SystemTime::UNIX_EPOCH)
            .map_err(|_| untrusted("clock is before 1970".into()))?,
    );
    let algs = rustls::crypto::ring::default_provider().signature_verification_algorithms;
    ee.verify_for_usage(
        algs.all,
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    )
    .map_err(|e| untrusted(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(&role.server_name(deployment))
        .map_err(|e| untrusted(e.to_string()))?;
    let identity = PeerIdentity::from_certificate(cert, deployment)?;
    if &identity.role != role {
        return Err(untrusted(format!("certificate is for {}", identity.role)));
    }
    Ok(identity)
}

/// Reads the first PEM certificate in `path`.
pub(crate) fn read_cert_pem(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    let text = files::read_text(path)?;
    CertificateDer::from_pem_slice(text.as_bytes()).map_err(|e| IdentityError::BadPem {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Encodes a DER certificate as PEM text.
pub(crate) fn cert_pem(cert: &CertificateDer<'_>) -> String {
    use std::fmt::Write;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in cert.as_ref().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        let _ = writeln!(out, "{}", std::str::from_utf8(line).unwrap_or_default());
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

pub(crate) fn load_key(path: &Path) -> Result<KeyPair, IdentityError> {
    let pem = files::read_key(path)?;
    let key = KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKey {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    if key.algorithm() != &PKCS_ED25519 {
        return Err(IdentityError::BadKey {
            path: path.to_owned(),
            detail: "not Ed25519".into(),
        });
    }
    Ok(key)
}

pub(crate) fn generate_key() -> Result<KeyPair, IdentityError> {
    KeyPair::generate_for(&PKCS_ED25519).map_err(|e| IdentityError::Crypto(e.to_string()))
}

/// File names inside a client's identity directory.
const CLIENT_KEY_FILE: &str = "identity.key";
const CLIENT_CERT_FILE: &str = "identity.crt";
const CLIENT_CA_FILE: &str = "ca.crt";
const CLIENT_DEPLOYMENT_FILE: &str = "deployment";

/// A client's key pair and, once registered, its certificate, kept in a directory:
///
/// | file | contents | mode |
/// |---|---|---|
/// | `identity.key` | Ed25519 private key, PKCS#8 PEM | 0600 |
/// | `identity.crt` | certificate issued by the server, PEM | 0644 |
/// | `ca.crt` | the deployment CA certificate, PEM | 0644 |
/// | `deployment` | the deployment name | 0644 |
pub struct ClientIdentity {
    dir: PathBuf,
    key: KeyPair,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Loads the key pair from `dir`, or creates and saves one (mode 0600) if there
    /// is none. The key survives restarts so the certificate stays valid.
    pub fn load_or_generate(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(CLIENT_KEY_FILE);
        let key = if path.exists() {
            load_key(&path)?
        } else {
            let key = generate_key()?;
            files::write_atomic(&path, key.serialize_pem().as_bytes(), KEY_MODE)?;
            key
        };
        Ok(Self {
            dir: dir.to_owned(),
            key,
        })
    }

    /// The directory holding the identity files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Builds the request to send at registration.
    pub fn cert_request(&self) -> Result<CertRequest, IdentityError> {
        let raw = self.key.public_key_raw();
        let public_key: [u8; 32] = raw
            .try_into()
            .map_err(|_| IdentityError::Crypto(format!("Ed25519 key of {} bytes", raw.len())))?;
        let sig = rcgen::SigningKey::sign(&self.key, &CertRequest::proof_message(&public_key))
            .map_err(|e| IdentityError::Crypto(e.to_string()))?;
        let proof: [u8; 64] = sig
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::Crypto(format!("signature of {} bytes", sig.len())))?;
        Ok(CertRequest { public_key, proof })
    }

    /// Checks a certificate the server issued us (our key, chains to `ca`, names
    /// `role` in `deployment`, valid at `now`) and stores it with the CA
    /// certificate. Returns the identity to build TLS configs from.
    pub fn install_certificate(
        &self,
        certificate: CertificateDer<'static>,
        ca: &CertificateDer<'_>,
        deployment: &DeploymentName,
        role: &Role,
        now: SystemTime,
    ) -> Result<NodeIdentity, IdentityError> {
        verify_certificate(&certificate, ca, deployment, role, now)?;
        self.check_key(&certificate, role)?;
        files::write_atomic(
            &self.dir.join(CLIENT_CA_FILE),
            cert_pem(ca).as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_atomic(
            &self.dir.join(CLIENT_DEPLOYMENT_FILE),
            deployment.as_str().as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_atomic(
            &self.dir.join(CLIENT_CERT_FILE),
            cert_pem(&certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        NodeIdentity::new(
            deployment.clone(),
            role.clone(),
            certificate,
            self.key.serialize_der(),
        )
    }

    fn check_key(
        &self,
        certificate: &CertificateDer<'_>,
        role: &Role,
    ) -> Result<(), IdentityError> {
        let ee =
            webpki::EndEntityCert::try_from(certificate).map_err(|e| IdentityError::Untrusted {
                expected: role.to_string(),
                detail: e.to_string(),
            })?;
        if ee.subject_public_key_info().as_ref()
            != rcgen::PublicKeyData::subject_public_key_info(&self.key).as_slice()
        {
            return Err(IdentityError::WrongKey);
        }
        Ok(())
    }

    /// The CA certificate stored at the first registration (`ca.crt`), which the client
    /// pins: a server presenting another CA is refused. `Ok(None)` before the first one.
    pub fn pinned_ca(&self) -> Result<Option<CertificateDer<'static>>, IdentityError> {
        let path = self.dir.join(CLIENT_CA_FILE);
        if !path.exists() {
            return Ok(None);
        }
        read_cert_pem(&path).map(Some)
    }

    /// Loads the stored certificate, CA certificate and deployment name, as written
    /// by [`ClientIdentity::install_certificate`], and checks them again at `now`
    /// (our key, chains to the CA, not expired). Returns `Ok(None)` when the client
    /// has not been issued a certificate yet; an error (e.g. expired) means the
    /// client should register again for a new certificate.
    pub fn load_certificate(
        &self,
        now: SystemTime,
    ) -> Result<Option<(NodeIdentity, CertificateDer<'static>)>, IdentityError> {
        let cert_path = self.dir.join(CLIENT_CERT_FILE);
        if !cert_path.exists() {
            return Ok(None);
        }
        let deployment =
            DeploymentName::new(files::read_text(&self.dir.join(CLIENT_DEPLOYMENT_FILE))?.trim())?;
        let certificate = read_cert_pem(&cert_path)?;
        let ca = read_cert_pem(&self.dir.join(CLIENT_CA_FILE))?;
        let identity = PeerIdentity::from_certificate(&certificate, &deployment)?;
        verify_certificate(&certificate, &ca, &deployment, &identity.role, now)?;
        self.check_key(&certificate, &identity.role)?;
        Ok(Some((
            NodeIdentity::new(
                deployment,
                identity.role,
                certificate,
                self.key.serialize_der(),
            )?,
            ca,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_round_trips_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let id = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let req = id.cert_request().unwrap();
        let bytes = req.encode();
        assert_eq!(bytes.len(), CERT_REQUEST_LEN);
        let back = CertRequest::decode(&bytes).unwrap();
        assert_eq!(back, req);
        back.verify().unwrap();
    }

    #[test]
    fn tampered_proof_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let id = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let mut req = id.cert_request().unwrap();
        req.proof[10] ^= 1;
        assert!(matches!(req.verify(), Err(IdentityError::BadProof)));
        let mut req = id.cert_request().unwrap();
        req.public_key[0] ^= 1;
        assert!(matches!(req.verify(), Err(IdentityError::BadProof)));
    }

    #[test]
    fn key_is_kept_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let b = ClientIdentity::load_or_generate(dir.path()).unwrap();
        assert_eq!(
            a.cert_request().unwrap().public_key,
            b.cert_request().unwrap().public_key
        );
        assert!(b.load_certificate(SystemTime::now()).unwrap().is_none());
    }

    #[test]
    fn pem_encoding_round_trips() {
        for len in 0..10usize {
            let der: Vec<u8> = (0..(100 + len) as u8).collect();
            let cert = CertificateDer::from(der.clone());
            let back = CertificateDer::from_pem_slice(cert_pem(&cert).as_bytes()).unwrap();
            assert_eq!(back.as_ref(), der.as_slice());
        }
    }

    proptest! {
        #[test]
        fn request_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            match CertRequest::decode(&bytes) {
                Ok(req) => {
                    prop_assert_eq!(bytes.len(), CERT_REQUEST_LEN);
                    prop_assert_eq!(&req.encode()[..], &bytes[..]);
                    // Random bytes essentially never carry a valid proof.
                    let _ = req.verify();
                }
                Err(_) => prop_assert!(bytes.len() != CERT_REQUEST_LEN || bytes[0] != CERT_REQUEST_VERSION),
            }
        }
    }
}
