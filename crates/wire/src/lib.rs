//! Branchline's small-message wire format.
//!
//! A small message is one UDP datagram of at most [`frame::MAX_DATAGRAM`] bytes: a clear,
//! authenticated header and a ChaCha20-Poly1305-sealed protobuf [`msg::Envelope`]. This
//! crate is pure: it turns values into bytes and bytes into values, and never touches a
//! socket or a clock (the caller passes nonces in). Reliability, replay protection and
//! sockets live in `branchline-transport`.
//!
//! * [`key`]: the deployment key and what HKDF derives from it.
//! * [`frame`]: datagram layout, sealing and opening.
//! * [`msg`]: the message schema and its evolution rules.
//! * [`large`]: the schema of large messages (QUIC), same rules.
//! * [`validate`]: typed values that handlers act on.
//! * [`connector`]: the connector's own credential (tokens, enrolment, signed admin requests).
//!
//! The wire format is specified in `docs/wire.md` (normative, with the test vectors in
//! `tests/vectors/` and the messages in `proto/branchline.proto`); the transport's
//! behaviour is in `docs/protocol.md`.

pub mod connector;
pub mod frame;
pub mod key;
pub mod large;
pub mod msg;
pub mod validate;

pub use frame::{Incoming, OpenError, SealError};
pub use key::{DeploymentKey, KeyId, SealingKey};
pub use msg::{Body, Envelope};
pub use validate::{ClientId, Invalid};

/// Version of this software, reported in registrations and health.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::frame::*;
    use super::msg::*;
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> SealingKey {
        DeploymentKey::from_bytes([b; 32]).derive()
    }

    fn heartbeat(id: u64) -> Envelope {
        Envelope {
            msg_id: id,
            sent_at_ms: 1_700_000_000_000,
            in_reply_to: 0,
            body: Some(Body::Heartbeat(Heartbeat {
                client_id: "00112233445566778899aabbccddeeff".into(),
                cache_free_bytes: 42,
                uptime_s: 7,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key(1);
        let env = heartbeat(99);
        let dg = seal(&k, [3; 12], &env).unwrap();
        assert!(dg.len() <= MAX_DATAGRAM);
        match open(std::slice::from_ref(&k), &dg).unwrap() {
            Incoming::Message { header, envelope } => {
                assert_eq!(*envelope, env);
                assert_eq!(header.key_id, k.id());
                assert_eq!(header.nonce, [3; 12]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Every message kind survives sealing and opening (a kind missing from the
    /// envelope's tag list would decode as "unknown").
    #[test]
    fn every_body_kind_round_trips() {
        let bodies = vec![
            Body::Ack(Ack {}),
            Body::Error(ErrorReply::default()),
            Body::Register(Register::default()),
            Body::RegisterOk(RegisterOk::default()),
            Body::Heartbeat(Heartbeat::default()),
            Body::HeartbeatAck(HeartbeatAck::default()),
            Body::Activate(Activate::default()),
            Body::ActivateOk(ActivateOk::default()),
            Body::HealthRequest(HealthRequest::default()),
            Body::Health(Health::default()),
            Body::Ping(Ping::default()),
            Body::PublishBegin(PublishBegin::default()),
            Body::PublishChunk(PublishChunk::default()),
            Body::PublishCommit(PublishCommit::default()),
            Body::Published(Published::default()),
            Body::ListContent(ListContent::default()),
            Body::ContentList(ContentList::default()),
            Body::AdminChunk(AdminChunk::default()),
            Body::AdminRun(AdminRun::default()),
            Body::AdminPage(AdminPage::default()),
            Body::Assign(Assign::default()),
            Body::WhoHas(WhoHas::default()),
            Body::IHave(IHave::default()),
            Body::TransferSignal(TransferSignal::default()),
            Body::TransferControl(TransferControl::default()),
        ];
        let k = key(1);
        for body in bodies {
            let env = Envelope {
                msg_id: 1,
                sent_at_ms: 2,
                in_reply_to: 0,
                body: Some(body.clone()),
            };
            let dg = seal(&k, [0; 12], &env).unwrap();
            match open(std::slice::from_ref(&k), &dg).unwrap() {
                Incoming::Message { envelope, .. } => {
                    assert_eq!(envelope.body, Some(body.clone()), "{}", body.kind())
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn wrong_key_is_reported_by_id_not_as_forgery() {
        let dg = seal(&key(1), [0; 12], &heartbeat(1)).unwrap();
        assert_eq!(open(&[key(2)], &dg), Err(OpenError::WrongKey(key(1).id())));
        // Rotation: a receiver holding old and new keys accepts both.
        assert!(open(&[key(2), key(1)], &dg).is_ok());
    }

    #[test]
    fn key_mismatch_notice_round_trip() {
        let dg = seal(&key(1), [9; 12], &heartbeat(1)).unwrap();
        let header = Header::parse(&dg).unwrap();
        let notice = key_mismatch_notice(key(2).id(), &header);
        assert_eq!(
            open(&[key(1)], &notice).unwrap(),
            Incoming::KeyMismatch {
                responder_key: key(2).id(),
                echoed_nonce: [9; 12]
            }
        );
    }

    #[test]
    fn oversized_message_is_refused_at_sealing() {
        let mut env = heartbeat(1);
        if let Some(Body::Heartbeat(h)) = &mut env.body {
            h.client_id = "x".repeat(2000);
        }
        assert!(matches!(
            seal(&key(1), [0; 12], &env),
            Err(SealError::TooLarge(_))
        ));
    }

    #[test]
    fn framing_errors() {
        let k = [key(1)];
        assert_eq!(open(&k, &[0u8; 5]), Err(OpenError::TooShort(5)));
        assert_eq!(open(&k, &[0u8; 1300]), Err(OpenError::Oversized(1300)));
        let mut dg = seal(&key(1), [0; 12], &heartbeat(1)).unwrap();
        dg[0] = b'X';
        assert_eq!(open(&k, &dg), Err(OpenError::BadMagic));
        let mut dg = seal(&key(1), [0; 12], &heartbeat(1)).unwrap();
        dg[2] = 9;
        assert_eq!(open(&k, &dg), Err(OpenError::UnsupportedVersion(9)));
        let mut dg = seal(&key(1), [0; 12], &heartbeat(1)).unwrap();
        dg[3] = 77;
        assert_eq!(open(&k, &dg), Err(OpenError::UnknownFrameType(77)));
        let dg = seal(&key(1), [0; 12], &heartbeat(0)).unwrap();
        assert_eq!(open(&k, &dg), Err(OpenError::ZeroMessageId));
    }

    #[test]
    fn unknown_fields_and_kinds_are_skipped() {
        // A newer peer adds field 99 to the envelope and a message kind with tag 50.
        use prost::Message as _;
        let mut bytes = heartbeat(5).encode_to_vec();
        // field 99, wire type 2 (length-delimited), 3 bytes
        bytes.extend_from_slice(&[0x9a, 0x06, 3, b'n', b'e', b'w']);
        let decoded = Envelope::decode(&bytes[..]).unwrap();
        assert_eq!(decoded, heartbeat(5));

        let mut only_new_kind = Envelope {
            msg_id: 6,
            sent_at_ms: 1,
            in_reply_to: 0,
            body: None,
        }
        .encode_to_vec();
        only_new_kind.extend_from_slice(&[0x92, 0x03, 1, 0x08]); // tag 50, 1-byte message
        let decoded = Envelope::decode(&only_new_kind[..]).unwrap();
        assert_eq!(decoded.msg_id, 6);
        assert_eq!(decoded.body, None);
    }

    proptest! {
        /// Any single flipped bit anywhere in a sealed datagram is rejected.
        #[test]
        fn any_tampered_bit_is_rejected(id in 1u64.., byte in 0usize..1000, bit in 0u8..8) {
            let k = key(1);
            let mut dg = seal(&k, [5; 12], &heartbeat(id)).unwrap();
            let i = byte % dg.len();
            dg[i] ^= 1 << bit;
            prop_assert!(open(std::slice::from_ref(&k), &dg).is_err());
        }

        /// Arbitrary bytes never panic the decoder and are never accepted as a message.
        #[test]
        fn garbage_never_opens(data in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let r = open(&[key(1)], &data);
            let accepted = matches!(r, Ok(Incoming::Message { .. }));
            prop_assert!(!accepted);
        }

        /// Garbage after a valid header (right magic, version, key id) never opens either.
        #[test]
        fn garbage_with_valid_header_never_opens(
            tail in proptest::collection::vec(any::<u8>(), 0..1180)
        ) {
            let k = key(1);
            let mut dg = seal(&k, [5; 12], &heartbeat(1)).unwrap();
            dg.truncate(HEADER_LEN);
            dg.extend_from_slice(&tail);
            let accepted = matches!(open(&[k], &dg), Ok(Incoming::Message { .. }));
            prop_assert!(!accepted);
        }

        /// Any envelope that fits round-trips; the decoder accepts any protobuf bytes safely.
        #[test]
        fn envelope_round_trip(
            id in 1u64.., at in any::<u64>(), reply in any::<u64>(),
            host in "[a-z0-9.-]{1,60}",
        ) {
            let env = Envelope {
                msg_id: id, sent_at_ms: at, in_reply_to: reply,
                body: Some(Body::Activate(Activate { hostname: host, version: "1".into() })),
            };
            let k = key(3);
            let dg = seal(&k, [1; 12], &env).unwrap();
            prop_assert_eq!(open(&[k], &dg).unwrap(), Incoming::Message {
                header: Header::parse(&dg).unwrap(), envelope: Box::new(env) });
        }

        #[test]
        fn envelope_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..1200)) {
            use prost::Message as _;
            let _ = Envelope::decode(&data[..]);
        }
    }
}
