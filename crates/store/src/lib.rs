//! Branchline content store (being built).
pub mod id;
pub mod map;
