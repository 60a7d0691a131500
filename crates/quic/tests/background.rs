//! The Background content port's wiring, over real sockets on 127.0.0.1: two content
//! nodes built with [`branchline_quic::background_transport`] (the transport every
//! Background port uses, 34750 among them) move pieces, and LEDBAT++ drives the
//! connection: its controller took delay samples, the link's factory counted the
//! connection, and the sender asked its peer for prompt ACKs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use branchline_ledbat::{Ledbat, LedbatConfig, LedbatFactory};
use branchline_quic::{
    ContentConfig, ContentNode, PeerIdentity, PieceError, PieceRequest, PieceSource,
    TransportSettings, background_transport,
};
use bytes::Bytes;

mod common;
use common::{Deployment, any_port, client_role};

const CONTENT: [u8; 32] = [9; 32];
const PIECES: u32 = 16;
const PIECE: usize = 256 * 1024;

struct MemSource(HashMap<u32, Bytes>);

impl PieceSource for MemSource {
    async fn read_piece(
        &self,
        _peer: &PeerIdentity,
        content: &[u8; 32],
        piece: u32,
    ) -> Result<Bytes, PieceError> {
        if *content != CONTENT {
            return Err(PieceError::NotFound);
        }
        self.0.get(&piece).cloned().ok_or(PieceError::NotFound)
    }
}

fn piece(n: u32) -> Bytes {
    (0..PIECE)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(n as u8))
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn background_port_moves_pieces_under_ledbat() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), transfer())
            .await
            .expect("the Background transfer finishes within 60 s");
    });
}

async fn transfer() {
    let dep = Deployment::new();
    let settings = TransportSettings::default();
    // One factory per side, as each node has its own per-link factory in the daemon.
    let serving_link = Arc::new(LedbatFactory::new(LedbatConfig::default()).unwrap());
    let fetching_link = Arc::new(LedbatFactory::new(LedbatConfig::default()).unwrap());
    let parent = ContentNode::bind(
        any_port(),
        &dep.client("aa01"),
        dep.trust(),
        Arc::new(background_transport(&settings, serving_link.clone())),
        ContentConfig::default(),
    )
    .unwrap();
    let child = ContentNode::bind(
        any_port(),
        &dep.client("bb02"),
        dep.trust(),
        Arc::new(background_transport(&settings, fetching_link.clone())),
        ContentConfig::default(),
    )
    .unwrap();
    let pieces: HashMap<u32, Bytes> = (0..PIECES).map(|n| (n, piece(n))).collect();
    let _serving = parent.serve(Arc::new(MemSource(pieces.clone())));

    let (conn, _) = child
        .connect(
            parent.endpoint().local_addr().unwrap(),
            &client_role("aa01"),
        )
        .await
        .unwrap();
    // The connection's controller counts on its link while it lives.
    assert_eq!(fetching_link.link().active(), 1);
    for n in 0..PIECES {
        let whole = PieceRequest {
            content: CONTENT,
            piece: n,
            offset: 0,
            len: 0,
        };
        assert_eq!(child.fetch(&conn, &whole).await.unwrap(), pieces[&n]);
    }
    // The serving side sent 4 MiB through its LEDBAT++ controller; the fetching side's
    // controller ran too (it sent the requests), and both are LEDBAT++.
    let ledbat = conn
        .congestion_state()
        .into_any()
        .downcast::<Ledbat>()
        .expect("the Background connection runs LEDBAT++");
    let stats = ledbat.stats();
    // The copy counts on the link like the connection's own controller.
    drop(ledbat);
    assert!(
        stats.base_delay.is_some() && stats.smoothed_rtt.is_some(),
        "the controller took delay samples: {stats:?}"
    );
    assert_eq!(serving_link.link().active(), 1, "the serving side's link");
    let client_stats = conn.stats();
    assert!(
        client_stats.frame_tx.ack_frequency >= 1,
        "the Background sender asks for prompt ACKs: {client_stats:?}"
    );
    assert!(
        client_stats.udp_rx.bytes >= u64::from(PIECES) * PIECE as u64,
        "{client_stats:?}"
    );
    conn.close(0u32.into(), b"done");
    child.endpoint().wait_idle().await;
    drop(conn);
    // The link forgets a connection once it is gone.
    assert_eq!(fetching_link.link().active(), 0);
}
