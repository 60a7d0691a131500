//! Branchline's office model (work in progress): the office tree and its topology file.

mod file;
mod hours;
mod tree;

pub use file::{
    MAX_NAME_LEN, MAX_OFFICES, MAX_SUBNETS_PER_OFFICE, OfficeKind, OfficeSpec, TopologyError,
    TopologyFile, client_key_hex, parse_client_key, parse_subnet, valid_name,
};
pub use hours::{HoursWindow, LinkPolicy};
pub use tree::{CENTRAL, MAX_AUTO_OFFICES, OfficeIdx, Tree};

/// A client id.
pub type ClientKey = [u8; 16];
