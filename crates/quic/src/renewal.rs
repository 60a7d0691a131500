//! When a node renews its certificate (pure: time passed in).
//!
//! A certificate's `notBefore` is set [`CLOCK_SKEW_ALLOWANCE`] before it is issued, so the
//! moment of issue is `notBefore + allowance` (clamped to `notAfter`). A client renews at
//! [`RENEW_AT`] (two thirds) of the time from issue to `notAfter`: with the 30-day
//! default that is day 20, leaving ten days of retries before the certificate expires.

use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;

use crate::ca::CLOCK_SKEW_ALLOWANCE;

/// Share of a certificate's lifetime (from issue to expiry) after which it is renewed.
pub const RENEW_AT: (u32, u32) = (2, 3);

/// Shortest wait between two renewal checks.
pub const MIN_CHECK: Duration = Duration::from_secs(1);

/// A certificate's validity period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
}

impl Validity {
    /// Reads the validity of a DER certificate; `None` if it does not parse.
    pub fn of(cert: &CertificateDer<'_>) -> Option<Validity> {
        let (not_before, not_after) = parse_validity(cert.as_ref())?;
        Some(Validity {
            not_before,
            not_after,
        })
    }

    /// When the certificate was issued (see the module text).
    pub fn issued(&self) -> SystemTime {
        (self.not_before + CLOCK_SKEW_ALLOWANCE).min(self.not_after)
    }

    /// When to renew it.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued())
            .unwrap_or(Duration::ZERO);
        self.issued() + life * RENEW_AT.0 / RENEW_AT.1
    }

    /// How long a node that checks every `interval` waits from `now` before its next
    /// check: the interval, or less when renewal is due sooner, but at least
    /// [`MIN_CHECK`] (so a certificate that is due at once is not asked for in a tight
    /// loop).
    pub fn wait_before_renewal(&self, interval: Duration, now: SystemTime) -> Duration {
        let until = self
            .renew_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO);
        interval.min(until.max(MIN_CHECK))
    }

    /// Whether it is time to renew at `now`.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }
}

/// One DER TLV at the start of `b`: (tag, contents, rest).
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | x as usize;
        }
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

fn parse_validity(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    const SEQUENCE: u8 = 0x30;
    let (SEQUENCE, cert, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = tlv(cert)? else {
        return None;
    };
    // [0] EXPLICIT version, optional.
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    let (_serial, _, rest) = tlv(tbs)?;
    let (_signature, _, rest) = tlv(rest)?;
    let (_issuer, _, rest) = tlv(rest)?;
    let (SEQUENCE, validity, _) = tlv(rest)? else {
        return None;
    };
    let (t1, v1, rest) = tlv(validity)?;
    let (t2, v2, _) = tlv(rest)?;
    Some((time_of(t1, v1)?, time_of(t2, v2)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time_of(tag: u8, v: &[u8]) -> Option<SystemTime> {
    let s = std::str::from_utf8(v).ok()?;
    let s = s.strip_suffix('Z')?;
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |a: usize, b: usize| s.get(a..b)?.parse::<u32>().ok();
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(0, 2)? as i32;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        (0x18, 14) => (num(0, 4)? as i32, 4),
        _ => return None,
    };
    let month = time::Month::try_from(num(rest, rest + 2)? as u8).ok()?;
    let date = time::Date::from_calendar_date(year, month, num(rest + 2, rest + 4)? as u8).ok()?;
    let t = time::Time::from_hms(
        num(rest + 4, rest + 6)? as u8,
        num(rest + 6, rest + 8)? as u8,
        num(rest + 8, rest + 10)? as u8,
    )
    .ok()?;
    let secs = time::PrimitiveDateTime::new(date, t)
        .assume_utc()
        .unix_timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientIdentity, ClientName, DeploymentCa, DeploymentName};
    use proptest::prelude::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn issued_certificates_parse_and_renew_at_two_thirds() {
        let now = at(1_800_000_000);
        let ca =
            DeploymentCa::generate(DeploymentName::new("acme").unwrap(), now, 3650 * DAY).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let client = ClientIdentity::load_or_generate(dir.path()).unwrap();
        let cert = ca
            .issue_client_cert(
                &ClientName::new("c1").unwrap(),
                &client.cert_request().unwrap(),
                now,
                30 * DAY,
            )
            .unwrap();
        let v = Validity::of(&cert).unwrap();
        assert_eq!(v.not_before, now - CLOCK_SKEW_ALLOWANCE);
        assert_eq!(v.not_after, now + 30 * DAY);
        assert_eq!(v.issued(), now);
        assert_eq!(v.renew_at(), now + 20 * DAY);
        assert!(!v.renewal_due(now + 20 * DAY - Duration::from_secs(1)));
        assert!(v.renewal_due(now + 20 * DAY));
        // A lifetime of seconds (tests) renews after two thirds of it too.
        let short = ca
            .issue_client_cert(
                &ClientName::new("c1").unwrap(),
                &client.cert_request().unwrap(),
                now,
                Duration::from_secs(9),
            )
            .unwrap();
        assert_eq!(
            Validity::of(&short).unwrap().renew_at(),
            now + Duration::from_secs(6)
        );
    }

    #[test]
    fn checks_come_early_enough_but_not_in_a_tight_loop() {
        let v = Validity {
            not_before: at(1000) - CLOCK_SKEW_ALLOWANCE,
            not_after: at(1030),
        };
        assert_eq!(v.renew_at(), at(1020));
        let beat = Duration::from_secs(30);
        assert_eq!(
            v.wait_before_renewal(beat, at(1000)),
            Duration::from_secs(20)
        );
        assert_eq!(
            v.wait_before_renewal(Duration::from_secs(5), at(1000)),
            Duration::from_secs(5)
        );
        assert_eq!(v.wait_before_renewal(beat, at(1019)), MIN_CHECK);
        assert_eq!(v.wait_before_renewal(beat, at(1025)), MIN_CHECK, "overdue");
        assert_eq!(
            v.wait_before_renewal(Duration::from_millis(300), at(1025)),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn both_time_forms_parse() {
        assert_eq!(time_of(0x17, b"700101000000Z"), Some(at(0)));
        assert_eq!(time_of(0x17, b"491231235959Z"), Some(at(2_524_607_999)));
        assert_eq!(time_of(0x18, b"20540101000000Z"), Some(at(2_650_838_400)));
        assert_eq!(time_of(0x17, b"701301000000Z"), None, "month 13");
        assert_eq!(time_of(0x17, b"7001010000Z"), None, "too short");
        assert_eq!(
            time_of(0x18, b"700101000000Z"),
            None,
            "wrong form for the tag"
        );
    }

    #[test]
    fn expired_or_odd_validity_is_due_at_once() {
        let v = Validity {
            not_before: at(1000),
            not_after: at(1000),
        };
        assert!(v.renewal_due(at(1000)));
    }

    proptest! {
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Validity::of(&CertificateDer::from(bytes));
        }
    }
}
