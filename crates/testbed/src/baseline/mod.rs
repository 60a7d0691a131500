//! Baselines measured on the same test bed, so that Branchline's figures
//! stand next to them:
//!
//! - [`tcp`]: a plain TCP bulk transfer (to calibrate links; also a
//!   competing flow with a chosen congestion control);
//! - [`http`]: every client downloads the package over HTTP from the
//!   origin host, the naive way;
//! - [`bittorrent`]: a BitTorrent swarm of the same package with aria2.

pub mod tcp;
