//! What identifies one version of the file at an origin, and the comparison that notices
//! when it changes between two reads. Pure logic.

/// What the origin told us about the file's version. Fields the origin did not give are
/// `None` and are never compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Size in bytes.
    pub size: Option<u64>,
    /// HTTP `ETag`, verbatim (a weak one starts with `W/`).
    pub etag: Option<String>,
    /// HTTP `Last-Modified` verbatim, or for a local file its modification time as
    /// nanoseconds since the Unix epoch.
    pub last_modified: Option<String>,
}

impl Version {
    /// Checks `seen` against `self` (the version pinned so far) and, when they agree,
    /// adopts fields `self` did not know yet. On disagreement returns a sentence
    /// describing what changed and leaves `self` untouched.
    pub fn check_and_merge(&mut self, seen: &Version) -> Result<(), String> {
        if let (Some(a), Some(b)) = (self.size, seen.size)
            && a != b
        {
            return Err(format!("its size went from {a} to {b} bytes"));
        }
        if let (Some(a), Some(b)) = (&self.etag, &seen.etag)
            && a != b
        {
            return Err(format!("its ETag went from {a} to {b}"));
        }
        if let (Some(a), Some(b)) = (&self.last_modified, &seen.last_modified)
            && a != b
        {
            return Err(format!("its modification time went from {a} to {b}"));
        }
        if self.size.is_none() {
            self.size = seen.size;
        }
        if self.etag.is_none() {
            self.etag.clone_from(&seen.etag);
        }
        if self.last_modified.is_none() {
            self.last_modified.clone_from(&seen.last_modified);
        }
        Ok(())
    }

    /// The ETag when it is strong (usable with `If-Match`).
    pub fn strong_etag(&self) -> Option<&str> {
        self.etag.as_deref().filter(|e| !e.starts_with("W/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(size: Option<u64>, etag: Option<&str>, lm: Option<&str>) -> Version {
        Version {
            size,
            etag: etag.map(str::to_string),
            last_modified: lm.map(str::to_string),
        }
    }

    #[test]
    fn merges_unknown_fields_and_flags_changes() {
        let mut pin = v(Some(10), None, None);
        pin.check_and_merge(&v(None, Some("\"a\""), None)).unwrap();
        assert_eq!(pin, v(Some(10), Some("\"a\""), None));
        pin.check_and_merge(&v(Some(10), Some("\"a\""), Some("x")))
            .unwrap();
        assert_eq!(pin, v(Some(10), Some("\"a\""), Some("x")));
        let before = pin.clone();
        assert!(
            pin.check_and_merge(&v(Some(11), None, None))
                .unwrap_err()
                .contains("size went from 10 to 11")
        );
        assert!(
            pin.check_and_merge(&v(None, Some("\"b\""), None))
                .unwrap_err()
                .contains("ETag")
        );
        assert!(
            pin.check_and_merge(&v(None, None, Some("y")))
                .unwrap_err()
                .contains("modification time")
        );
        assert_eq!(pin, before);
    }

    #[test]
    fn weak_etags_are_not_used_for_if_match() {
        assert_eq!(v(None, Some("W/\"a\""), None).strong_etag(), None);
        assert_eq!(v(None, Some("\"a\""), None).strong_etag(), Some("\"a\""));
    }
}
