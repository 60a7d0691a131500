//! The deployment certificate authority, run by the server.
//!
//! One Ed25519 CA per deployment, created when the server is first set up. It signs
//! the server's own certificate and one certificate per registered client. The CA
//! certificate is the only trust anchor of every node of the deployment, so a
//! certificate from another deployment never verifies.
//!
//! Files in the CA directory:
//!
//! | file | contents | mode |
//! |---|---|---|
//! | `ca.crt` | CA certificate, PEM | 0644 |
//! | `ca.key` | CA private key, PKCS#8 PEM | 0600 |
//! | `deployment` | the deployment name | 0644 |

use std::path::Path;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints, PKCS_ED25519, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::SecureRandom;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::files::{self, KEY_MODE, PUBLIC_MODE};
use crate::identity::{ClientName, DeploymentName, Role};
use crate::node::{self, CertRequest, IdentityError, NodeIdentity};

/// How far back a new certificate's `notBefore` is set, so nodes whose clocks run
/// behind the server's still accept it (1 hour).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Length of certificate serial numbers, in bytes (random, top bit clear).
pub const SERIAL_LEN: usize = 9;

const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const DEPLOYMENT_FILE: &str = "deployment";

/// The fingerprint clients pin a deployment CA by: `sha256:` and the SHA-256 of the CA
/// certificate's DER in lowercase hex.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An Ed25519 public key as rcgen wants it for signing a certificate.
struct Ed25519Public([u8; 32]);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// The deployment's CA: its key, its certificate, and the parameters to sign with.
pub struct DeploymentCa {
    deployment: DeploymentName,
    certificate: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DeploymentCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentCa")
            .field("deployment", &self.deployment)
            .finish_non_exhaustive()
    }
}

fn crypto(e: rcgen::Error) -> IdentityError {
    IdentityError::Crypto(e.to_string())
}

fn to_time(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

/// CA certificate parameters. They are rebuilt identically when the CA is loaded,
/// so the issuer name in new certificates matches the stored CA certificate.
fn ca_params(deployment: &DeploymentName) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, deployment.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    // Even a misused CA key cannot sign names outside the deployment.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![GeneralSubtree::DnsName(deployment.as_str().to_owned())],
        excluded_subtrees: Vec::new(),
    });
    params
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut serial = [0u8; SERIAL_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| IdentityError::Crypto("system random generator failed".into()))?;
    serial[0] &= 0x7f;
    // A leading zero byte would be dropped by DER; keep the length fixed.
    serial[0] |= 0x01;
    Ok(SerialNumber::from_slice(&serial))
}

impl DeploymentCa {
    /// Creates a new CA for `deployment`, valid from `now` (less the clock-skew
    /// allowance) for `validity`.
    pub fn generate(
        deployment: DeploymentName,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Self, IdentityError> {
        let key = node::generate_key()?;
        let mut params = ca_params(&deployment);
        params.not_before = to_time(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = to_time(now + validity);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key).map_err(crypto)?;
        Ok(Self {
            certificate: cert.der().clone(),
            issuer: Issuer::new(ca_params(&deployment), key),
            deployment,
        })
    }

    /// Saves the CA to `dir` (created if missing); the key file gets mode 0600.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        files::write_atomic(
            &dir.join(DEPLOYMENT_FILE),
            self.deployment.as_str().as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_atomic(
            &dir.join(CA_CERT_FILE),
            node::cert_pem(&self.certificate).as_bytes(),
            PUBLIC_MODE,
        )?;
        files::write_atomic(
            &dir.join(CA_KEY_FILE),
            self.issuer.key().serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        Ok(())
    }

    /// Loads a CA saved by [`DeploymentCa::save`], checking that the key and the
    /// certificate belong together.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let deployment = DeploymentName::new(files::read_text(&dir.join(DEPLOYMENT_FILE))?.trim())?;
        let cert_path = dir.join(CA_CERT_FILE);
        let certificate = node::read_cert_pem(&cert_path)?;
        let key = node::load_key(&dir.join(CA_KEY_FILE))?;
        let mismatch = |detail: &str| IdentityError::Untrusted {
            expected: format!("CA of deployment {deployment}"),
            detail: format!("{}: {detail}", cert_path.display()),
        };
        let parsed =
            webpki::EndEntityCert::try_from(&certificate).map_err(|e| mismatch(&e.to_string()))?;
        if parsed.subject_public_key_info().as_ref() != key.subject_public_key_info().as_slice() {
            return Err(mismatch("the CA key does not match the CA certificate"));
        }
        // The issuer name we will write must equal the stored certificate's subject.
        let probe = ca_params(&deployment).self_signed(&key).map_err(crypto)?;
        let probe =
            webpki::EndEntityCert::try_from(probe.der()).map_err(|e| mismatch(&e.to_string()))?;
        if probe.subject() != parsed.subject() {
            return Err(mismatch(
                "the CA certificate's name does not match the deployment name",
            ));
        }
        Ok(Self {
            certificate,
            issuer: Issuer::new(ca_params(&deployment), key),
            deployment,
        })
    }

    /// Loads the CA from `dir`, or, on first setup, creates one for `deployment`
    /// and saves it there. A CA found in `dir` must be for `deployment`.
    pub fn load_or_generate(
        dir: &Path,
        deployment: DeploymentName,
        now: SystemTime,
        validity: Duration,
    ) -> Result<Self, IdentityError> {
        if dir.join(CA_KEY_FILE).exists() {
            let ca = Self::load(dir)?;
            if ca.deployment != deployment {
                return Err(IdentityError::Untrusted {
                    expected: format!("CA of deployment {deployment}"),
                    detail: format!(
                        "{} holds the CA of deployment {}; point the server at the right directory",
                        dir.display(),
                        ca.deployment
                    ),
                });
            }
            return Ok(ca);
        }
        let ca = Self::generate(deployment, now, validity)?;
        ca.save(dir)?;
        Ok(ca)
    }

    /// The deployment this CA serves.
    pub fn deployment(&self) -> &DeploymentName {
        &self.deployment
    }

    /// The CA certificate (DER): the trust anchor every node of the deployment
    /// needs. The server sends it to a client with its issued certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    fn leaf(
        &self,
        role: &Role,
        public_key: &impl PublicKeyData,
        now: SystemTime,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        let mut params = CertificateParams::default();
        // Empty subject: the identity is in the SAN alone (which rcgen then marks
        // critical, as RFC 5280 section 4.1.2.6 requires). Keeps certificates small.
        params.distinguished_name = DistinguishedName::new();
        let dns = role
            .dns_name(&self.deployment)
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Crypto(e.to_string()))?;
        params.subject_alt_names = vec![SanType::DnsName(dns)];
        params.not_before = to_time(now - CLOCK_SKEW_ALLOWANCE);
        params.not_after = to_time(now + validity);
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(public_key, &self.issuer).map_err(crypto)?;
        Ok(cert.der().clone())
    }

    /// Issues a certificate to client `client` for the key in `request`, after
    /// checking the request's proof of possession. Valid from `now` (less the
    /// clock-skew allowance) for `validity`.
    pub fn issue_client_cert(
        &self,
        client: &ClientName,
        request: &CertRequest,
        now: SystemTime,
        validity: Duration,
    ) -> Result<CertificateDer<'static>, IdentityError> {
        request.verify()?;
        self.leaf(
            &Role::Client(client.clone()),
            &Ed25519Public(request.public_key),
            now,
            validity,
        )
    }

    /// Makes a fresh key pair and certificate for the server itself. The server
    /// may call this at every start: peers trust the CA, not a given server key.
    pub fn server_identity(
        &self,
        now: SystemTime,
        validity: Duration,
    ) -> Result<NodeIdentity, IdentityError> {
        let key = node::generate_key()?;
        let certificate = self.leaf(&Role::Server, &key, now, validity)?;
        NodeIdentity::new(
            self.deployment.clone(),
            Role::Server,
            certificate,
            key.serialize_der(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ClientIdentity, verify_certificate};

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn dep(name: &str) -> DeploymentName {
        DeploymentName::new(name).unwrap()
    }

    #[test]
    fn issued_client_certificate_verifies_and_is_installed() {
        let now = SystemTime::now();
        let ca = DeploymentCa::generate(dep("acme"), now, 10 * YEAR).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let name = ClientName::new("0f3a9c").unwrap();
        let cert = ca
            .issue_client_cert(&name, &client.cert_request().unwrap(), now, YEAR)
            .unwrap();
        let role = Role::Client(name);
        let node = client
            .install_certificate(cert.clone(), ca.certificate(), ca.deployment(), &role, now)
            .unwrap();
        assert_eq!(node.role, role);
        let (loaded, loaded_ca) = client.load_certificate(now).unwrap().unwrap();
        assert_eq!(loaded.certificate, cert);
        assert_eq!(loaded.role, role);
        assert_eq!(&loaded_ca, ca.certificate());
        // Once expired, the stored certificate is refused: register again.
        let err = client.load_certificate(now + 2 * YEAR).unwrap_err();
        assert!(matches!(err, IdentityError::Untrusted { .. }), "{err}");
    }

    #[test]
    fn certificate_for_another_key_is_not_installed() {
        let now = SystemTime::now();
        let ca = DeploymentCa::generate(dep("acme"), now, YEAR).unwrap();
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let one = ClientIdentity::load_or_generate(d1.path()).unwrap();
        let two = ClientIdentity::load_or_generate(d2.path()).unwrap();
        let name = ClientName::new("one").unwrap();
        let cert = ca
            .issue_client_cert(&name, &one.cert_request().unwrap(), now, YEAR)
            .unwrap();
        let err = two
            .install_certificate(
                cert,
                ca.certificate(),
                ca.deployment(),
                &Role::Client(name),
                now,
            )
            .unwrap_err();
        assert!(matches!(err, IdentityError::WrongKey), "{err}");
    }

    #[test]
    fn foreign_ca_wrong_name_and_expiry_are_refused() {
        let now = SystemTime::now();
        let ca = DeploymentCa::generate(dep("acme"), now, YEAR).unwrap();
        let other = DeploymentCa::generate(dep("acme"), now, YEAR).unwrap();
        let server = ca.server_identity(now, YEAR).unwrap();
        let d = ca.deployment();
        verify_certificate(&server.certificate, ca.certificate(), d, &Role::Server, now).unwrap();
        // Same deployment name, different CA: refused.
        assert!(
            verify_certificate(
                &server.certificate,
                other.certificate(),
                d,
                &Role::Server,
                now
            )
            .is_err()
        );
        // Right CA, wrong holder: refused.
        let client = Role::Client(ClientName::new("x").unwrap());
        assert!(
            verify_certificate(&server.certificate, ca.certificate(), d, &client, now).is_err()
        );
        // Expired: refused.
        let later = now + 2 * YEAR;
        assert!(
            verify_certificate(
                &server.certificate,
                ca.certificate(),
                d,
                &Role::Server,
                later
            )
            .is_err()
        );
    }

    #[test]
    fn bad_proof_gets_no_certificate() {
        let now = SystemTime::now();
        let ca = DeploymentCa::generate(dep("acme"), now, YEAR).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let mut req = client.cert_request().unwrap();
        req.proof[0] ^= 0x80;
        let err = ca
            .issue_client_cert(&ClientName::new("x").unwrap(), &req, now, YEAR)
            .unwrap_err();
        assert!(matches!(err, IdentityError::BadProof));
    }

    #[test]
    fn saved_ca_loads_and_keeps_issuing_trusted_certificates() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let ca = DeploymentCa::generate(dep("acme"), now, YEAR).unwrap();
        ca.save(dir.path()).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let loaded = DeploymentCa::load(dir.path()).unwrap();
        assert_eq!(loaded.certificate(), ca.certificate());
        let server = loaded.server_identity(now, YEAR).unwrap();
        verify_certificate(
            &server.certificate,
            ca.certificate(),
            ca.deployment(),
            &Role::Server,
            now,
        )
        .unwrap();
    }

    /// Registration replies carry the client certificate and the CA certificate
    /// in one datagram of at most about 1100 bytes of payload: even with the
    /// longest names both fit, with room for other fields.
    #[test]
    fn certificates_fit_in_a_registration_reply() {
        let now = SystemTime::now();
        let longest = "z".repeat(crate::identity::MAX_LABEL_LEN);
        let ca = DeploymentCa::generate(dep(&longest), now, 20 * YEAR).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let cert = ca
            .issue_client_cert(
                &ClientName::new(longest.clone()).unwrap(),
                &client.cert_request().unwrap(),
                now,
                YEAR,
            )
            .unwrap();
        assert!(
            cert.len() <= 450,
            "client certificate of {} bytes",
            cert.len()
        );
        assert!(
            ca.certificate().len() <= 520,
            "CA certificate of {} bytes",
            ca.certificate().len()
        );
        assert!(cert.len() + ca.certificate().len() <= 1000);
    }

    #[test]
    fn first_setup_creates_the_ca_and_later_starts_load_it() {
        let now = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let first = DeploymentCa::load_or_generate(dir.path(), dep("acme"), now, YEAR).unwrap();
        let again = DeploymentCa::load_or_generate(dir.path(), dep("acme"), now, YEAR).unwrap();
        assert_eq!(first.certificate(), again.certificate());
        let err = DeploymentCa::load_or_generate(dir.path(), dep("beta"), now, YEAR).unwrap_err();
        assert!(err.to_string().contains("deployment acme"), "{err}");
    }

    #[test]
    fn mismatched_ca_files_are_refused() {
        let now = SystemTime::now();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        DeploymentCa::generate(dep("acme"), now, YEAR)
            .unwrap()
            .save(a.path())
            .unwrap();
        DeploymentCa::generate(dep("acme"), now, YEAR)
            .unwrap()
            .save(b.path())
            .unwrap();
        std::fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).unwrap();
        let err = DeploymentCa::load(a.path()).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        // A renamed deployment does not match the certificate's name either.
        std::fs::write(b.path().join(DEPLOYMENT_FILE), "other").unwrap();
        let err = DeploymentCa::load(b.path()).unwrap_err();
        assert!(err.to_string().contains("name"), "{err}");
    }
}
