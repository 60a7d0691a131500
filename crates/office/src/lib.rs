//! Branchline's office model (work in progress): WAN link policy and daily hour windows.

mod hours;

pub use hours::{HoursWindow, LinkPolicy};

/// A client id.
pub type ClientKey = [u8; 16];
