//! Parsing an origin string into a [`Location`]: pure string handling, no I/O.

use std::path::PathBuf;

use crate::OriginError;

/// Where a content item lives, as parsed from the string an admin typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An `http://` or `https://` URL, kept exactly as given (after trimming outer whitespace).
    Http {
        /// The URL, ready to be sent.
        url: String,
        /// True for `https://`.
        tls: bool,
    },
    /// A local file, from `file:///abs/path` or `/abs/path`.
    File(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Http { url, .. } => f.write_str(url),
            Location::File(p) => write!(f, "{}", p.display()),
        }
    }
}

fn invalid(input: &str, reason: impl Into<String>) -> OriginError {
    OriginError::InvalidLocation {
        input: input.to_string(),
        reason: reason.into(),
    }
}

/// Parses an origin string.
///
/// Accepted forms: `http://host[:port]/path`, `https://host[:port]/path`,
/// `file:///abs/path` (also `file://localhost/abs/path`; `%XX` escapes are decoded) and
/// `/abs/path`. Outer ASCII whitespace is ignored. Anything else is an
/// [`OriginError::InvalidLocation`] saying what is wrong.
pub fn parse_location(input: &str) -> Result<Location, OriginError> {
    let s = input.trim_matches(|c: char| c.is_ascii_whitespace());
    if s.is_empty() {
        return Err(invalid(input, "the string is empty"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(invalid(input, "it contains control characters"));
    }
    let lower_prefix: String = s.chars().take(8).collect::<String>().to_ascii_lowercase();
    if lower_prefix.starts_with("http://") || lower_prefix.starts_with("https://") {
        return parse_http(input, s);
    }
    if lower_prefix.starts_with("file://") {
        let rest = &s["file://".len()..];
        let path = if rest.starts_with('/') {
            rest
        } else if rest
            .get(.."localhost/".len())
            .is_some_and(|p| p.eq_ignore_ascii_case("localhost/"))
        {
            &rest["localhost".len()..]
        } else {
            return Err(invalid(
                input,
                "file URLs must name a local absolute path (file:///abs/path); remote hosts are not supported",
            ));
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let decoded = percent_decode(path).ok_or_else(|| {
            invalid(
                input,
                "the file URL has a malformed %-escape or decodes to invalid UTF-8 or NUL",
            )
        })?;
        return file_path(input, &decoded);
    }
    if s.starts_with('/') {
        return file_path(input, s);
    }
    if let Some(idx) = s.find("://") {
        let scheme = &s[..idx];
        return Err(invalid(input, format!("unsupported scheme {scheme:?}")));
    }
    Err(invalid(input, "it is a relative path or an unknown form"))
}

fn file_path(input: &str, path: &str) -> Result<Location, OriginError> {
    if path.contains('\0') {
        return Err(invalid(input, "the path contains a NUL byte"));
    }
    if path.ends_with('/') {
        return Err(invalid(
            input,
            "the path names a directory (ends with '/'), not a file",
        ));
    }
    Ok(Location::File(PathBuf::from(path)))
}

fn parse_http(input: &str, s: &str) -> Result<Location, OriginError> {
    let uri: ureq::http::Uri = s
        .parse()
        .map_err(|e| invalid(input, format!("it is not a valid URL ({e})")))?;
    let tls = match uri.scheme_str() {
        Some(sch) if sch.eq_ignore_ascii_case("https") => true,
        Some(sch) if sch.eq_ignore_ascii_case("http") => false,
        _ => return Err(invalid(input, "the URL scheme is not http or https")),
    };
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid(input, "the URL has no host name"));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split_once(']').map_or("", |(_, rest)| rest),
        None => host_port.find(':').map_or("", |i| &host_port[i..]),
    };
    if let Some(port) = after_host.strip_prefix(':') {
        match port.parse::<u16>() {
            Ok(0) => return Err(invalid(input, "the URL has port 0")),
            Ok(_) => {}
            Err(_) => {
                return Err(invalid(
                    input,
                    "the URL's port is not a number from 1 to 65535",
                ));
            }
        }
    }
    Ok(Location::Http {
        url: s.to_string(),
        tls,
    })
}

/// Decodes `%XX` escapes; `None` for malformed escapes, invalid UTF-8 or NUL.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            let v = u8::from_str_radix(hex, 16).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(s: &str) -> String {
        match parse_location(s) {
            Err(OriginError::InvalidLocation { reason, .. }) => reason,
            other => panic!("expected InvalidLocation for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(
            parse_location("http://example.com/a.bin").unwrap(),
            Location::Http {
                url: "http://example.com/a.bin".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_location(" HTTPS://example.com:8443/p?x=1 \n").unwrap(),
            Location::Http {
                url: "HTTPS://example.com:8443/p?x=1".into(),
                tls: true
            }
        );
        assert_eq!(
            parse_location("http://[::1]:8080/x").unwrap(),
            Location::Http {
                url: "http://[::1]:8080/x".into(),
                tls: false
            }
        );
        assert_eq!(
            parse_location("file:///srv/pkg%20one.bin").unwrap(),
            Location::File("/srv/pkg one.bin".into())
        );
        assert_eq!(
            parse_location("file://localhost/srv/a").unwrap(),
            Location::File("/srv/a".into())
        );
        assert_eq!(
            parse_location("/srv/a.bin").unwrap(),
            Location::File("/srv/a.bin".into())
        );
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert!(reason("").contains("empty"));
        assert!(reason("   ").contains("empty"));
        assert!(reason("ftp://example.com/x").contains("unsupported scheme \"ftp\""));
        assert!(reason("relative/path").contains("relative"));
        assert!(reason("http://").contains("URL"));
        assert!(reason("http:///nohost").contains("URL"));
        assert!(reason("http://exa mple.com/").contains("URL"));
        assert!(reason("http://host:/x").contains("port"));
        assert!(reason("http://[::1]:70000/x").contains("port"));
        assert!(reason("http://host:0/x").contains("port 0"));
        assert!(reason("http://host:99999/x").contains("port"));
        assert!(reason("file://otherhost/x").contains("remote hosts"));
        assert!(reason("file:///a%zz").contains("%-escape"));
        assert!(reason("file:///a%00b").contains("NUL"));
        assert!(reason("/tmp/dir/").contains("directory"));
        assert!(reason("/a\u{7}b").contains("control"));
        assert!(reason("C:\\x").contains("relative"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,80}") {
            match parse_location(&s) {
                Ok(Location::Http { url, .. }) => proptest::prop_assert!(url.len() <= s.len()),
                Ok(Location::File(p)) => proptest::prop_assert!(p.is_absolute()),
                Err(e) => {
                    let typed = matches!(e, OriginError::InvalidLocation { .. });
                    proptest::prop_assert!(typed, "{}", e);
                }
            }
        }

        #[test]
        fn url_like_strings_never_panic(s in "(https?|file|ftp)://[a-z0-9:@\\[\\]/%.?#-]{0,40}") {
            let _ = parse_location(&s);
        }

        #[test]
        fn valid_urls_parse(
            tls in proptest::bool::ANY,
            host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5}){0,2}",
            port in proptest::option::of(1u16..),
            path in "(/[a-zA-Z0-9._~-]{1,12}){0,4}",
        ) {
            let scheme = if tls { "https" } else { "http" };
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let url = format!("{scheme}://{host}{port}{path}");
            proptest::prop_assert_eq!(parse_location(&url).unwrap(), Location::Http { url: url.clone(), tls });
        }

        #[test]
        fn absolute_paths_parse(path in "(/[a-zA-Z0-9._-]([a-zA-Z0-9._ -]{0,10}[a-zA-Z0-9._-])?){1,5}") {
            proptest::prop_assert_eq!(parse_location(&path).unwrap(), Location::File(PathBuf::from(&path)));
            let url = format!("file://{}", path.replace(' ', "%20"));
            proptest::prop_assert_eq!(parse_location(&url).unwrap(), Location::File(PathBuf::from(&path)));
        }
    }

    #[test]
    fn display_names_the_input_and_what_to_do() {
        let e = parse_location("ftp://x/y").unwrap_err().to_string();
        assert!(e.contains("ftp://x/y"), "{e}");
        assert!(e.contains("absolute path"), "{e}");
    }
}
