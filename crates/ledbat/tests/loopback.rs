//! Wiring test over real sockets on 127.0.0.1: a Background connection built with
//! [`background_transport_config`] runs the LEDBAT++ controller and asks its peer for prompt
//! ACKs (ACK_FREQUENCY frame), and a bulk transfer completes through it.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use branchline_ledbat::{Ledbat, LedbatConfig, background_transport_config};
use quinn::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const NAME: &str = "loopback.branchline.invalid";
const BYTES: usize = 4 << 20;

#[test]
fn background_connection_uses_ledbat_and_prompt_acks() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), transfer())
            .await
            .expect("the loopback transfer finishes within 60 s");
    });
}

async fn transfer() {
    let cert = rcgen::generate_simple_self_signed(vec![NAME.to_string()]).unwrap();
    let cert_der = cert.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));

    let (server_transport, _) = background_transport_config(LedbatConfig::default()).unwrap();
    let mut server_config =
        quinn::ServerConfig::with_single_cert(vec![cert_der.clone()], key).unwrap();
    server_config.transport_config(Arc::new(server_transport));
    let server = quinn::Endpoint::server(server_config, (Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    let server_addr: SocketAddr = server.local_addr().unwrap();

    let (client_transport, factory) = background_transport_config(LedbatConfig::default()).unwrap();
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(cert_der).unwrap();
    let mut client_config = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    client_config.transport_config(Arc::new(client_transport));
    let mut client = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
    client.set_default_client_config(client_config);

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.expect("a connection").await.unwrap();
        let mut stream = conn.accept_uni().await.unwrap();
        let data = stream.read_to_end(BYTES * 2).await.unwrap();
        let stats = conn.stats();
        conn.close(0u32.into(), b"done");
        server.wait_idle().await;
        (data.len(), stats)
    });

    let conn = client.connect(server_addr, NAME).unwrap().await.unwrap();
    let mut stream = conn.open_uni().await.unwrap();
    stream.write_all(&vec![7u8; BYTES]).await.unwrap();
    stream.finish().unwrap();

    // The connection's controller counts on the factory's link while the connection lives.
    assert_eq!(factory.link().active(), 1);
    let state = conn.congestion_state();
    let ledbat = state
        .into_any()
        .downcast::<Ledbat>()
        .expect("the Background connection runs LEDBAT++");
    let (received, server_stats) = receiver.await.unwrap();
    let client_stats = conn.stats();
    client.wait_idle().await;

    assert_eq!(received, BYTES);
    assert!(
        ledbat.stats().base_delay.is_some(),
        "the controller took RTT samples: {:?}",
        ledbat.stats()
    );
    // The sender asked for prompt ACKs, and the peer got the request.
    assert!(client_stats.frame_tx.ack_frequency >= 1, "{client_stats:?}");
    assert!(server_stats.frame_rx.ack_frequency >= 1, "{server_stats:?}");
}
