//! Branchline's QUIC layer (documentation being written).

pub mod ca;
pub mod content;
pub mod endpoint;
pub mod files;
pub mod frame;
pub mod identity;
pub mod large;
pub mod node;
pub mod piece_wire;
pub mod tls;

pub use ca::DeploymentCa;
pub use content::{ContentConfig, ContentError, ContentNode, PieceError, PieceSource, fetch_piece};
pub use endpoint::{
    ALPN_CONTENT, ALPN_LARGE, Congestion, Direction, QuicError, TransportSettings, transport_config,
};
pub use identity::{ClientName, DeploymentName, NameError, PeerIdentity, Role};
pub use large::{HandlerError, LargeConfig, LargeError, LargeMessaging, send_request};
pub use node::{CertRequest, ClientIdentity, IdentityError, NodeIdentity};
pub use piece_wire::PieceRequest;
pub use tls::{DeploymentTrust, RevocationList, TlsError};
