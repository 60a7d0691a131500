//! Prints the sizes of what registration carries, in bytes.
//!
//! Run: `cargo run -p branchline-quic --example sizes`

use std::time::{Duration, SystemTime};

use branchline_quic::{ClientIdentity, ClientName, DeploymentCa, DeploymentName};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let year = Duration::from_secs(365 * 24 * 3600);
    let now = SystemTime::now();
    let dir = tempfile::tempdir()?;
    let client = ClientIdentity::load_or_generate(dir.path())?;
    let request = client.cert_request()?.encode();
    println!(
        "certificate request (version + Ed25519 key + proof): {} bytes",
        request.len()
    );
    for (deployment, client_name) in [
        ("acme", "0f3a9c"),
        ("acme", "0123456789abcdef0123456789abcdef"),
        ("a".repeat(63).as_str(), "f".repeat(63).as_str()),
    ] {
        let ca = DeploymentCa::generate(DeploymentName::new(deployment)?, now, 20 * year)?;
        let name = ClientName::new(client_name)?;
        let cert = ca.issue_client_cert(&name, &client.cert_request()?, now, year)?;
        let server = ca.server_identity(now, year)?;
        println!(
            "deployment {:>2} chars, client name {:>2} chars: client cert {} bytes, server cert {} bytes, CA cert {} bytes",
            deployment.len(),
            client_name.len(),
            cert.len(),
            server.certificate.len(),
            ca.certificate().len()
        );
    }
    Ok(())
}
