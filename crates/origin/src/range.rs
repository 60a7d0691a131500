//! Byte-range header parsing, both sides: the server's `Range` request header and the
//! client's `Content-Range` response header (RFC 9110 §14). Pure functions, no I/O.

/// What a server should send for a `Range` request header, for a representation of a
/// given size (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// Send the whole representation with 200: no header, a unit other than `bytes`,
    /// a multi-range request, or a syntactically invalid header (RFC 9110 says to
    /// ignore those).
    Full,
    /// Send bytes `start..=end` (inclusive, 0-based) with 206.
    Partial {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive, always `< size`.
        end: u64,
    },
    /// Answer 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

/// Parses a decimal number of ASCII digits, saturating at `u64::MAX`; `None` when
/// empty or not all digits.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |acc, b| {
        acc.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// Interprets a `Range` header value (without the `Range:` name) for a representation
/// of `size` bytes. Supports one `bytes=a-b`, `bytes=a-` or `bytes=-n` spec. Never
/// panics, whatever the input.
pub fn parse_range_header(value: &str, size: u64) -> RangeRequest {
    let value = value.trim();
    let Some((unit, spec)) = value.split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeRequest::Full;
    }
    let spec = spec.trim();
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = parse_decimal(last) else {
            return RangeRequest::Full;
        };
        if n == 0 || size == 0 {
            return RangeRequest::Unsatisfiable;
        }
        return RangeRequest::Partial {
            start: size - n.min(size),
            end: size - 1,
        };
    }
    let Some(start) = parse_decimal(first) else {
        return RangeRequest::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_decimal(last) {
            Some(e) if e >= start => Some(e),
            _ => return RangeRequest::Full,
        }
    };
    if start >= size {
        return RangeRequest::Unsatisfiable;
    }
    let end = end.map_or(size - 1, |e| e.min(size - 1));
    RangeRequest::Partial { start, end }
}

/// A parsed `Content-Range` response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes start-end/total` (`total` is `None` for `*`); `end` inclusive.
    Bytes {
        /// First byte offset.
        start: u64,
        /// Last byte offset, inclusive.
        end: u64,
        /// Size of the whole representation, when the server says.
        total: Option<u64>,
    },
    /// `bytes */total`, sent with 416.
    Unsatisfied {
        /// Size of the whole representation.
        total: u64,
    },
}

/// Parses a `Content-Range` header value; `None` when malformed (including
/// `start > end` or `end >= total`). Never panics.
pub fn parse_content_range(value: &str) -> Option<ContentRange> {
    let value = value.trim();
    let (unit, rest) = value.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, total) = rest.trim().split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(parse_decimal(t)?),
    };
    let range = range.trim();
    if range == "*" {
        return total.map(|total| ContentRange::Unsatisfied { total });
    }
    let (a, b) = range.split_once('-')?;
    let (start, end) = (parse_decimal(a)?, parse_decimal(b)?);
    if start > end || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange::Bytes { start, end, total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn range_examples() {
        use RangeRequest::*;
        assert_eq!(
            parse_range_header("bytes=0-9", 100),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range_header("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range_header("bytes=90-500", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range_header("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range_header("bytes=-1000", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range_header(" Bytes = 5 - 6 ", 100),
            Partial { start: 5, end: 6 }
        );
        assert_eq!(parse_range_header("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range_header("bytes=0-0", 0), Unsatisfiable);
        assert_eq!(parse_range_header("bytes=-0", 100), Unsatisfiable);
        assert_eq!(
            parse_range_header("bytes=99999999999999999999999-", 100),
            Unsatisfiable
        );
        assert_eq!(parse_range_header("bytes=9-5", 100), Full);
        assert_eq!(parse_range_header("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range_header("items=0-1", 100), Full);
        assert_eq!(parse_range_header("bytes=x-1", 100), Full);
        assert_eq!(parse_range_header("bytes=+1-2", 100), Full);
        assert_eq!(parse_range_header("", 100), Full);
    }

    #[test]
    fn content_range_examples() {
        assert_eq!(
            parse_content_range("bytes 0-0/1234"),
            Some(ContentRange::Bytes {
                start: 0,
                end: 0,
                total: Some(1234)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-9/*"),
            Some(ContentRange::Bytes {
                start: 5,
                end: 9,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */77"),
            Some(ContentRange::Unsatisfied { total: 77 })
        );
        assert_eq!(parse_content_range("bytes */*"), None);
        assert_eq!(parse_content_range("bytes 5-4/10"), None);
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes=0-1/2"), None);
        assert_eq!(parse_content_range(""), None);
    }

    proptest! {
        #[test]
        fn range_header_never_panics(s in ".{0,64}", size in any::<u64>()) {
            let r = parse_range_header(&s, size);
            if let RangeRequest::Partial { start, end } = r {
                prop_assert!(start <= end && end < size);
            }
        }

        #[test]
        fn range_header_bytes_like_never_panics(s in "[bB]ytes ?= ?[-0-9, ]{0,30}", size in 0u64..1000) {
            if let RangeRequest::Partial { start, end } = parse_range_header(&s, size) {
                prop_assert!(start <= end && end < size);
            }
        }

        #[test]
        fn range_header_correct_on_valid_input(size in 1u64..1u64 << 50, a in any::<u64>(), len in 0u64..1u64 << 40) {
            let start = a % size;
            let end = start.saturating_add(len);
            let got = parse_range_header(&format!("bytes={start}-{end}"), size);
            prop_assert_eq!(got, RangeRequest::Partial { start, end: end.min(size - 1) });
            let open = parse_range_header(&format!("bytes={start}-"), size);
            prop_assert_eq!(open, RangeRequest::Partial { start, end: size - 1 });
            let past = parse_range_header(&format!("bytes={}-", size.saturating_add(a % 7)), size);
            prop_assert_eq!(past, RangeRequest::Unsatisfiable);
        }

        #[test]
        fn content_range_never_panics(s in ".{0,64}") {
            let _ = parse_content_range(&s);
        }

        #[test]
        fn content_range_roundtrip(start in any::<u64>(), span in any::<u64>(), extra in 1u64..1000) {
            let end = start.saturating_add(span % (u64::MAX - start).max(1));
            let total = end.saturating_add(extra);
            prop_assume!(total > end);
            prop_assert_eq!(
                parse_content_range(&format!("bytes {start}-{end}/{total}")),
                Some(ContentRange::Bytes { start, end, total: Some(total) })
            );
        }
    }
}
