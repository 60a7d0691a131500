//! Counted drops: every datagram that is not acted on is counted under one reason.

use std::sync::atomic::{AtomicU64, Ordering};

use branchline_wire::OpenError;

/// Why a datagram was not acted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than the datagram limit.
    Oversized,
    /// Shorter than a header (+ tag).
    TooShort,
    /// Not a Branchline datagram.
    BadMagic,
    /// A framing version this build does not speak.
    UnsupportedVersion,
    /// A frame type this build does not know.
    UnknownFrameType,
    /// Sealed under a key this node does not hold (another deployment, or a stale key).
    WrongKey,
    /// Authentication failed: forged, garbled or truncated.
    AuthFailed,
    /// Authenticated but undecodable payload.
    Decode,
    /// Reserved message id 0.
    ZeroMessageId,
    /// Sent outside the replay window (replayed late, or clocks too far apart).
    OutOfWindow,
    /// A copy of a message already handled (retransmission or replay).
    Duplicate,
    /// A reply, ack or notice nobody was waiting for.
    Unsolicited,
    /// Failed validation after authentication.
    Invalid,
    /// A message kind this build does not know.
    Unsupported,
    /// Arrived on a port whose protocol this build does not serve yet.
    ReservedPort,
    /// The sender (source address) already holds its whole quota of remembered messages.
    OverQuota,
    /// A subnet-discovery datagram from outside this node's subnet.
    OutOfSubnet,
    /// More discovery requests than this node answers (rate limit).
    RateLimited,
}

impl DropReason {
    /// Every reason, in the order the counters are kept and shown.
    pub const ALL: [DropReason; 18] = [
        DropReason::Oversized,
        DropReason::TooShort,
        DropReason::BadMagic,
        DropReason::UnsupportedVersion,
        DropReason::UnknownFrameType,
        DropReason::WrongKey,
        DropReason::AuthFailed,
        DropReason::Decode,
        DropReason::ZeroMessageId,
        DropReason::OutOfWindow,
        DropReason::Duplicate,
        DropReason::Unsolicited,
        DropReason::Invalid,
        DropReason::Unsupported,
        DropReason::ReservedPort,
        DropReason::OverQuota,
        DropReason::OutOfSubnet,
        DropReason::RateLimited,
    ];

    /// Stable snake_case name, used in health output and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::TooShort => "too_short",
            DropReason::BadMagic => "bad_magic",
            DropReason::UnsupportedVersion => "unsupported_version",
            DropReason::UnknownFrameType => "unknown_frame_type",
            DropReason::WrongKey => "wrong_key",
            DropReason::AuthFailed => "auth_failed",
            DropReason::Decode => "decode",
            DropReason::ZeroMessageId => "zero_message_id",
            DropReason::OutOfWindow => "out_of_window",
            DropReason::Duplicate => "duplicate",
            DropReason::Unsolicited => "unsolicited",
            DropReason::Invalid => "invalid",
            DropReason::Unsupported => "unsupported",
            DropReason::ReservedPort => "reserved_port",
            DropReason::OverQuota => "over_quota",
            DropReason::OutOfSubnet => "out_of_subnet",
            DropReason::RateLimited => "rate_limited",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("every reason is in ALL")
    }
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::Oversized(_) => DropReason::Oversized,
            OpenError::TooShort(_) => DropReason::TooShort,
            OpenError::BadMagic => DropReason::BadMagic,
            OpenError::UnsupportedVersion(_) => DropReason::UnsupportedVersion,
            OpenError::UnknownFrameType(_) => DropReason::UnknownFrameType,
            OpenError::WrongKey(_) => DropReason::WrongKey,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::Decode => DropReason::Decode,
            OpenError::ZeroMessageId => DropReason::ZeroMessageId,
        }
    }
}

/// Drop counters of one node, shared by all its endpoints.
#[derive(Debug, Default)]
pub struct Counters {
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Counters {
    /// Counts one drop for `reason`.
    pub fn count(&self, reason: DropReason) {
        self.drops[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The drops counted so far for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].load(Ordering::Relaxed)
    }

    /// All drops.
    pub fn total(&self) -> u64 {
        self.drops.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Every reason with its count, in [`DropReason::ALL`] order.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.name(), self.get(*r)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_reason() {
        let c = Counters::default();
        c.count(DropReason::AuthFailed);
        c.count(DropReason::AuthFailed);
        c.count(DropReason::from(OpenError::BadMagic));
        assert_eq!(c.get(DropReason::AuthFailed), 2);
        assert_eq!(c.get(DropReason::BadMagic), 1);
        assert_eq!(c.total(), 3);
        let names: std::collections::HashSet<_> =
            c.snapshot().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), DropReason::ALL.len(), "names are unique");
    }
}
