//! Per-WAN-link rate policy: a ceiling shared by every Background connection on the link and a
//! floor per connection, both changeable at run time when the server's policy changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::ConfigError;

/// Rate limits for one WAN link, shared by all controllers a [`crate::LedbatFactory`] builds.
///
/// The ceiling (bytes/s) is split evenly between the connections currently open on the link;
/// the floor (bytes/s) holds for each connection. Controllers read both on every update, so
/// [`LinkPolicy::set_ceiling`] takes effect within one acknowledgement.
#[derive(Debug)]
pub struct LinkPolicy {
    /// Ceiling in bytes/s; 0 means unlimited.
    ceiling: AtomicU64,
    /// Floor in bytes/s per connection.
    floor: AtomicU64,
    /// Controllers currently alive.
    active: AtomicUsize,
}

impl LinkPolicy {
    /// A policy with the given ceiling (bytes/s, `None` = unlimited) and floor (bytes/s).
    ///
    /// # Errors
    /// [`ConfigError`] if the ceiling is zero or below the floor.
    pub fn new(ceiling: Option<u64>, floor: u64) -> Result<Self, ConfigError> {
        check(ceiling, floor)?;
        Ok(Self {
            ceiling: AtomicU64::new(ceiling.unwrap_or(0)),
            floor: AtomicU64::new(floor),
            active: AtomicUsize::new(0),
        })
    }

    /// Sets the link's ceiling (bytes/s, `None` = unlimited).
    ///
    /// # Errors
    /// [`ConfigError`] if the ceiling is zero or below the current floor; nothing changes then.
    pub fn set_ceiling(&self, ceiling: Option<u64>) -> Result<(), ConfigError> {
        check(ceiling, self.floor())?;
        self.ceiling.store(ceiling.unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    /// Sets the per-connection floor (bytes/s).
    ///
    /// # Errors
    /// [`ConfigError`] if the floor is above the current ceiling; nothing changes then.
    pub fn set_floor(&self, floor: u64) -> Result<(), ConfigError> {
        check(self.ceiling(), floor)?;
        self.floor.store(floor, Ordering::Relaxed);
        Ok(())
    }

    /// The link's ceiling (bytes/s), `None` if unlimited.
    pub fn ceiling(&self) -> Option<u64> {
        match self.ceiling.load(Ordering::Relaxed) {
            0 => None,
            c => Some(c),
        }
    }

    /// The per-connection floor (bytes/s).
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    /// Number of controllers currently sharing the link.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// One connection's share of the ceiling (bytes/s), `None` if unlimited.
    pub fn ceiling_share(&self) -> Option<u64> {
        let n = self.active().max(1) as u64;
        self.ceiling().map(|c| (c / n).max(1))
    }
}

fn check(ceiling: Option<u64>, floor: u64) -> Result<(), ConfigError> {
    match ceiling {
        Some(0) => Err(ConfigError::Invalid {
            field: "ceiling",
            reason: "must be greater than zero bytes/s (use None for unlimited)",
        }),
        Some(c) if c < floor => Err(ConfigError::CeilingBelowFloor { ceiling: c, floor }),
        _ => Ok(()),
    }
}

/// A controller's membership of a link: counted while alive (clones count too, as quinn keeps
/// clones only transiently).
#[derive(Debug)]
pub(crate) struct Registration(Arc<LinkPolicy>);

impl Registration {
    pub(crate) fn new(link: Arc<LinkPolicy>) -> Self {
        link.active.fetch_add(1, Ordering::Relaxed);
        Self(link)
    }
}

impl Clone for Registration {
    fn clone(&self) -> Self {
        Self::new(self.0.clone())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::ops::Deref for Registration {
    type Target = LinkPolicy;
    fn deref(&self) -> &LinkPolicy {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_is_split_between_live_controllers() {
        let link = Arc::new(LinkPolicy::new(Some(1_000_000), 1000).unwrap());
        assert_eq!(link.ceiling_share(), Some(1_000_000));
        let a = Registration::new(link.clone());
        let b = a.clone();
        assert_eq!(link.active(), 2);
        assert_eq!(link.ceiling_share(), Some(500_000));
        drop(a);
        drop(b);
        assert_eq!(link.active(), 0);
    }

    #[test]
    fn policy_changes_are_checked() {
        let link = LinkPolicy::new(None, 1000).unwrap();
        assert!(link.set_ceiling(Some(10)).is_err());
        assert_eq!(link.ceiling(), None);
        link.set_ceiling(Some(50_000)).unwrap();
        assert!(link.set_floor(60_000).is_err());
        assert_eq!(link.floor(), 1000);
    }
}
