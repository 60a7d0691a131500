//! Daily UTC time windows ("22:00-06:00") and the WAN link policy that uses them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MINUTE_MS: u64 = 60_000;
const DAY_MIN: u16 = 24 * 60;
const DAY_MS: u64 = DAY_MIN as u64 * MINUTE_MS;

/// A daily window `"HH:MM-HH:MM"` in UTC. It may wrap midnight (`"22:00-06:00"` is open from
/// 22:00 until 06:00 the next morning). The start minute is inside the window, the end minute
/// is not. `start == end` is refused (use no window for "always open").
///
/// Serializes to and from that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoursWindow {
    /// Minutes after 00:00 UTC, `0..1440`.
    pub start_min: u16,
    /// Minutes after 00:00 UTC, `0..1440`, different from `start_min`.
    pub end_min: u16,
}

fn parse_hhmm(s: &str) -> Result<u16, String> {
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
        return Err(format!("{s:?} is not HH:MM"));
    }
    let h = u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0');
    let m = u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0');
    if h > 23 || m > 59 {
        return Err(format!("{s:?} is not a time of day (00:00 to 23:59)"));
    }
    Ok(h * 60 + m)
}

impl HoursWindow {
    /// Parses `"HH:MM-HH:MM"` (UTC, 24-hour clock, two digits each).
    pub fn parse(s: &str) -> Result<HoursWindow, String> {
        let t = s.trim();
        let Some((a, b)) = t.split_once('-') else {
            return Err(format!("{s:?} is not HH:MM-HH:MM"));
        };
        let start_min = parse_hhmm(a.trim())?;
        let end_min = parse_hhmm(b.trim())?;
        if start_min == end_min {
            return Err(format!(
                "{s:?} starts and ends at the same minute (leave hours out for always open)"
            ));
        }
        Ok(HoursWindow { start_min, end_min })
    }

    fn is_open_at_minute(&self, m: u16) -> bool {
        if self.start_min < self.end_min {
            self.start_min <= m && m < self.end_min
        } else {
            m >= self.start_min || m < self.end_min
        }
    }

    /// Whether the window is open at `unix_ms` (UTC).
    pub fn is_open(&self, unix_ms: u64) -> bool {
        let m = ((unix_ms / MINUTE_MS) % u64::from(DAY_MIN)) as u16;
        self.is_open_at_minute(m)
    }

    /// Unix ms of the next opening or closing strictly after `unix_ms` (saturates at
    /// `u64::MAX` at the end of time).
    pub fn next_change(&self, unix_ms: u64) -> u64 {
        let day = unix_ms - unix_ms % DAY_MS;
        let mut best = u64::MAX;
        for d in [0, DAY_MS] {
            for m in [self.start_min, self.end_min] {
                let t = day
                    .saturating_add(d)
                    .saturating_add(u64::from(m) * MINUTE_MS);
                if t > unix_ms && t < best {
                    best = t;
                }
            }
        }
        best
    }
}

impl fmt::Display for HoursWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

impl std::str::FromStr for HoursWindow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HoursWindow::parse(s)
    }
}

impl Serialize for HoursWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HoursWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HoursWindow::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// WAN link policy of an office (its link to its parent office).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkPolicy {
    /// Rate ceiling for Background traffic on this link, bytes/s; None = no ceiling.
    pub ceiling_bytes_per_s: Option<u64>,
    /// When WAN transfers may run (UTC); None = always.
    pub allowed_hours: Option<HoursWindow>,
    /// Most concurrent WAN transfers on the link. Default 1, must be >= 1.
    pub max_transfers: u32,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            ceiling_bytes_per_s: None,
            allowed_hours: None,
            max_transfers: 1,
        }
    }
}

impl LinkPolicy {
    /// Whether WAN transfers may run at `unix_ms`: true when there is no window.
    pub fn is_open(&self, unix_ms: u64) -> bool {
        self.allowed_hours.is_none_or(|w| w.is_open(unix_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn parse_display_round_trip() {
        let w = HoursWindow::parse("22:00-06:00").unwrap();
        assert_eq!((w.start_min, w.end_min), (22 * 60, 6 * 60));
        assert_eq!(w.to_string(), "22:00-06:00");
        assert_eq!(
            HoursWindow::parse(" 08:30 - 17:05 ").unwrap().to_string(),
            "08:30-17:05"
        );
        for bad in [
            "",
            "22:00",
            "22:00-22:00",
            "24:00-01:00",
            "1:00-02:00",
            "01:60-02:00",
            "aa:bb-cc:dd",
            "01:00-02:00-03:00",
            "０１:00-02:00",
        ] {
            assert!(HoursWindow::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wrap_around_midnight() {
        let w = HoursWindow::parse("22:00-06:00").unwrap();
        let day = 20_000 * 24 * H; // some UTC midnight
        assert!(w.is_open(day));
        assert!(w.is_open(day + 5 * H + 59 * 60_000));
        assert!(!w.is_open(day + 6 * H));
        assert!(!w.is_open(day + 21 * H + 59 * 60_000 + 59_999));
        assert!(w.is_open(day + 22 * H));
        assert!(w.is_open(day + 23 * H + 59 * 60_000));
        assert_eq!(w.next_change(day), day + 6 * H);
        assert_eq!(w.next_change(day + 6 * H), day + 22 * H);
        assert_eq!(w.next_change(day + 22 * H), day + 30 * H);
        assert_eq!(w.next_change(day + 23 * H), day + 30 * H);
    }

    #[test]
    fn plain_window_and_next_change() {
        let w = HoursWindow::parse("09:00-17:00").unwrap();
        let day = 19_000 * 24 * H;
        assert!(!w.is_open(day + 8 * H));
        assert!(w.is_open(day + 9 * H));
        assert!(!w.is_open(day + 17 * H));
        assert_eq!(w.next_change(day), day + 9 * H);
        assert_eq!(w.next_change(day + 9 * H - 1), day + 9 * H);
        assert_eq!(w.next_change(day + 12 * H), day + 17 * H);
        assert_eq!(w.next_change(day + 18 * H), day + 33 * H);
        // The state flips exactly at next_change.
        let mut t = day + 1234;
        for _ in 0..10 {
            let n = w.next_change(t);
            assert!(n > t);
            assert_eq!(w.is_open(n - 1), w.is_open(t));
            assert_ne!(w.is_open(n), w.is_open(t));
            t = n;
        }
        assert_eq!(w.next_change(u64::MAX), u64::MAX);
    }

    #[test]
    fn link_policy() {
        let p = LinkPolicy::default();
        assert_eq!(p.max_transfers, 1);
        assert!(p.is_open(0));
        let p = LinkPolicy {
            allowed_hours: Some(HoursWindow::parse("01:00-02:00").unwrap()),
            ..LinkPolicy::default()
        };
        assert!(!p.is_open(0));
        assert!(p.is_open(H));
    }
}
