//! Which version of an object a read must see.
//!
//! A ranged fetch reads one object in several requests, and a cached object
//! is served again long after it was read: both must notice when the object
//! changed in between, or a reader gets a mix of two versions (or old bytes
//! as fresh). A [`Version`] is the identity one response gave; every later
//! response is held to it with [`Version::check`], and backends turn it into
//! the precondition their protocol offers (`If-Match`,
//! `If-Unmodified-Since`).
//!
//! The check is only as strong as what the backend reports, strongest first
//! ([`Strength`]):
//! - **ETag** (S3; `file://` derives one from size, mtime in nanoseconds and
//!   inode): any overwrite changes it.
//! - **Size + Last-Modified**, for S3-compatible servers that send no ETag.
//!   HTTP dates have one-second resolution, so an overwrite by an object of
//!   the same size within the same second goes unnoticed — the weakest
//!   check, and still far better than none.
//! - **None**: neither was sent. Nothing can be checked; the engine counts
//!   such reads (`sluice_backend_unversioned_reads_total`) so an operator
//!   sees that the server gives no consistency guarantee.
//!
//! The size is compared whenever both sides know it, whatever the strength.
//! Two sizes for one ETag mean a wrong `Content-Range` total in one of the
//! answers rather than a change; it is still `Changed` (ABORTED), because
//! retrying the part cannot tell which answer lied, while the caller's
//! retry of the whole read starts over from a fresh first answer.

use std::time::SystemTime;

use crate::{ErrorKind, ObjectMeta, Result, StorageError};

/// The identity of one version of an object, as far as the backend tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Version {
    /// Entity tag, quoted or not.
    pub etag: Option<String>,
    /// Last modification time.
    pub last_modified: Option<SystemTime>,
    /// Size of the whole object.
    pub size: Option<u64>,
}

/// How much a [`Version`] can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    /// By entity tag (and size).
    Etag,
    /// By size and last-modified time (one-second resolution over HTTP).
    LastModified,
    /// Not at all: the backend reported neither.
    None,
}

impl Version {
    /// The version `meta` describes.
    pub fn of(meta: &ObjectMeta) -> Version {
        Version {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
            size: Some(meta.size),
        }
    }

    /// The version with entity tag `etag`; nothing else is compared.
    pub fn etag(etag: impl Into<String>) -> Version {
        Version {
            etag: Some(etag.into()),
            ..Version::default()
        }
    }

    /// What this version can tell apart.
    pub fn strength(&self) -> Strength {
        match (&self.etag, self.last_modified) {
            (Some(_), _) => Strength::Etag,
            (None, Some(_)) => Strength::LastModified,
            (None, None) => Strength::None,
        }
    }

    /// `Changed` unless `got` is this version of the object `uri` names: the
    /// etag must match when this one has one (a response without one does
    /// not), else the last-modified time; the size whenever it is known.
    pub fn check(&self, uri: &str, got: &ObjectMeta) -> Result<()> {
        let changed = |what: &str| {
            Err(StorageError::new(
                ErrorKind::Changed,
                uri,
                format!("object changed while being read ({what} differs)"),
            ))
        };
        if let Some(want) = &self.etag {
            if !got.etag.as_deref().is_some_and(|e| etag_matches(e, want)) {
                return changed("etag");
            }
            if self.size.is_some_and(|size| size != got.size) {
                // One etag names one content: one of the two answers has a
                // wrong size. Retrying this part cannot tell which; the
                // caller's retry of the whole read can (ABORTED).
                return Err(StorageError::new(
                    ErrorKind::Changed,
                    uri,
                    format!(
                        "the server reported sizes {} and {} for one etag during the read",
                        self.size.unwrap_or_default(),
                        got.size
                    ),
                ));
            }
        } else if let Some(want) = self.last_modified
            && got.last_modified != Some(want)
        {
            return changed("last-modified time");
        }
        if self.size.is_some_and(|size| size != got.size) {
            return changed("size");
        }
        Ok(())
    }
}

/// Whether two ETags are the same, with or without their quotes.
pub fn etag_matches(a: &str, b: &str) -> bool {
    fn bare(t: &str) -> &str {
        let t = t.trim();
        t.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t)
    }
    bare(a) == bare(b)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn meta(size: u64, etag: Option<&str>, secs: Option<u64>) -> ObjectMeta {
        ObjectMeta {
            uri: "s3://b/k".into(),
            size,
            etag: etag.map(str::to_owned),
            last_modified: secs.map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s)),
            version: None,
        }
    }

    fn changed(v: &Version, got: &ObjectMeta) -> Option<String> {
        v.check("s3://b/k", got).err().map(|e| {
            assert_eq!((e.kind(), e.uri()), (ErrorKind::Changed, "s3://b/k"));
            e.message().to_owned()
        })
    }

    #[test]
    fn an_etag_decides_and_the_size_must_agree() {
        let v = Version::of(&meta(10, Some("\"a\""), Some(5)));
        assert_eq!(v.strength(), Strength::Etag);
        assert_eq!(changed(&v, &meta(10, Some("a"), Some(5))), None);
        // Another date with the same etag: the etag is the stronger word.
        assert_eq!(changed(&v, &meta(10, Some("\"a\""), Some(6))), None);
        let etag = changed(&v, &meta(10, Some("\"b\""), Some(5))).unwrap();
        assert!(etag.contains("etag differs"), "{etag}");
        assert!(changed(&v, &meta(10, None, Some(5))).is_some());
        let e = v.check("s3://b/k", &meta(11, Some("\"a\""), Some(5)));
        let e = e.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Changed, "{e}");
        assert!(e.message().contains("sizes 10 and 11 for one etag"), "{e}");
    }

    #[test]
    fn without_an_etag_size_and_last_modified_decide() {
        let v = Version::of(&meta(10, None, Some(5)));
        assert_eq!(v.strength(), Strength::LastModified);
        assert_eq!(changed(&v, &meta(10, None, Some(5))), None);
        let date = changed(&v, &meta(10, None, Some(6))).unwrap();
        assert!(date.contains("last-modified time differs"), "{date}");
        assert!(changed(&v, &meta(10, None, None)).is_some());
        assert!(changed(&v, &meta(9, None, Some(5))).is_some());
    }

    #[test]
    fn with_neither_only_the_size_is_compared() {
        let v = Version::of(&meta(10, None, None));
        assert_eq!(v.strength(), Strength::None);
        assert_eq!(changed(&v, &meta(10, Some("x"), Some(1))), None);
        assert!(changed(&v, &meta(12, None, None)).is_some());
        assert_eq!(Version::default().strength(), Strength::None);
        assert_eq!(changed(&Version::default(), &meta(3, None, None)), None);
    }

    #[test]
    fn etags_compare_without_their_quotes() {
        assert!(etag_matches("\"abc\"", "abc"));
        assert!(etag_matches("abc", "\"abc\""));
        assert!(!etag_matches("\"abc\"", "\"abd\""));
        assert!(!etag_matches("\"abc-2\"", "abc"));
    }
}
