//! Transport settings for Background connections.
//!
//! # Prompt acknowledgements, and why
//!
//! LEDBAT++ reads the queue from round-trip times. An RTT sample taken from an ACK that the
//! peer held back includes that hold time, and quinn's default peer holds an ACK for up to
//! `max_ack_delay` = 25 ms when fewer than two packets arrived: at the tail of every flight
//! and all the time at small windows. 25 ms of phantom queue against a 30 ms target is far too
//! much. Two ways out:
//!
//! 1. *Filter*: subtract the ack delay the peer reports. quinn does not hand the controller
//!    that figure (only `RttEstimator`, which exposes the smoothed and the never-expiring
//!    minimum RTT), so a controller-side correction is impossible without forking quinn.
//! 2. *Ask for prompt ACKs*: quinn 0.11 implements the QUIC ACK-frequency extension
//!    (draft-ietf-quic-ack-frequency) and every quinn endpoint advertises `min_ack_delay`
//!    (1 ms), so a sender can ask its peer to hold ACKs at most 1 ms.
//!
//! Branchline does 2, since both ends of every Background connection are Branchline (quinn)
//! nodes: [`configure_background`] sets `ack_frequency_config` with an ack-eliciting threshold
//! of 1 (an ACK for every second packet, as usual) and a `max_ack_delay` of 1 ms. The
//! controller's own filters then take care of what remains: it keeps the smallest `now − sent`
//! of each ACK frame and uses the minimum of the last 4 samples as the current delay, which
//! drops a sample inflated by the odd late ACK (1 ms at most with the extension, 25 ms from a
//! peer without it). Both sides of a Background connection must use this configuration
//! because either side may send bulk data.

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{AckFrequencyConfig, TransportConfig, VarInt};

use crate::{ConfigError, LedbatConfig, LedbatFactory};

/// Longest time the peer may hold an ACK on a Background connection: 1 ms (quinn's
/// `min_ack_delay`; the peer clamps the request to at least its own minimum).
pub const PROMPT_MAX_ACK_DELAY: Duration = Duration::from_millis(1);

/// Number of ack-eliciting packets the peer may receive before it must ACK: 1, i.e. an ACK for
/// every second packet, the QUIC default.
pub const PROMPT_ACK_ELICITING_THRESHOLD: u32 = 1;

/// The ACK-frequency request Background connections send to their peer.
pub fn prompt_ack_frequency() -> AckFrequencyConfig {
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(PROMPT_ACK_ELICITING_THRESHOLD))
        .max_ack_delay(Some(PROMPT_MAX_ACK_DELAY));
    ack
}

/// Turns `transport` into a Background transport: LEDBAT++ controllers from `factory`, and
/// prompt ACKs requested from the peer. Other settings are left as they are.
///
/// Use one factory per WAN link (for example per remote office), so the link's ceiling is
/// shared by all Background connections on it.
pub fn configure_background(
    transport: &mut TransportConfig,
    factory: Arc<LedbatFactory>,
) -> &mut TransportConfig {
    transport
        .ack_frequency_config(Some(prompt_ack_frequency()))
        .congestion_controller_factory(factory)
}

/// A fresh Background [`TransportConfig`] (quinn's defaults otherwise) and the factory behind
/// it, whose [`LedbatFactory::link`] adjusts the ceiling and floor at run time.
///
/// # Errors
/// [`ConfigError`] if `config` is inconsistent.
pub fn background_transport_config(
    config: LedbatConfig,
) -> Result<(TransportConfig, Arc<LedbatFactory>), ConfigError> {
    let factory = Arc::new(LedbatFactory::new(config)?);
    let mut transport = TransportConfig::default();
    configure_background(&mut transport, factory.clone());
    Ok((transport, factory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_config_builds_and_rejects_bad_config() {
        let (transport, factory) = background_transport_config(LedbatConfig::default()).unwrap();
        assert!(format!("{transport:?}").contains("ack_frequency_config: Some"));
        assert_eq!(factory.link().ceiling(), None);
        let bad = LedbatConfig {
            ceiling: Some(1),
            floor: 10,
            ..LedbatConfig::default()
        };
        assert!(background_transport_config(bad).is_err());
    }
}
