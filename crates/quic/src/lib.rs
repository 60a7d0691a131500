//! Branchline's QUIC layer (documentation being written).

pub mod ca;
pub mod files;
pub mod identity;
pub mod node;

pub use ca::DeploymentCa;
pub use identity::{ClientName, DeploymentName, NameError, PeerIdentity, Role};
pub use node::{CertRequest, ClientIdentity, IdentityError, NodeIdentity};
