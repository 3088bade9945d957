//! Content digests that name code artifacts.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};
use std::{fs, io};

/// A `sha256:<64 lowercase hex>` digest of a component's bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    hex: String,
}

/// [`Digest`]'s form as an ECMA-262 pattern, for the OpenAPI document.
pub const DIGEST_PATTERN: &str = "^sha256:[0-9a-f]{64}$";

/// Why a digest string was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a code digest must look like `sha256:` followed by 64 lowercase hex digits")]
pub struct DigestError;

impl Digest {
    /// Digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest {
            hex: hex::encode(Sha256::digest(bytes)),
        }
    }

    /// The 64 hex digits, without the `sha256:` prefix (used for file names).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The digest whose 64 hex digits are `hex` (a file name's stem).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError);
        }
        Ok(Digest {
            hex: hex.to_string(),
        })
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::from_hex(s.strip_prefix("sha256:").ok_or(DigestError)?)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl utoipa::PartialSchema for Digest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(DIGEST_PATTERN))
            .description(Some("SHA-256 digest of the component bytes"))
            .into()
    }
}

impl utoipa::ToSchema for Digest {}

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// Removes the files `<hex>.<extension>` in `dir` whose digest is not in
/// `keep` and whose modification time is more than `grace` ago, and
/// answers what it removed and the digests of the files left: the
/// sweep of both the uploaded artifacts and the cache of compiled code,
/// which name files the same way. Other names are left alone.
pub fn sweep_digest_files(
    dir: &Path,
    extension: &str,
    keep: &HashSet<Digest>,
    grace: Duration,
) -> io::Result<(Swept, HashSet<Digest>)> {
    let mut swept = Swept::default();
    let mut remaining = HashSet::new();
    let now = SystemTime::now();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(digest) = name
            .to_str()
            .and_then(|n| n.strip_suffix(extension)?.strip_suffix('.'))
            .and_then(|hex| Digest::from_hex(hex).ok())
        else {
            continue;
        };
        let removable = if keep.contains(&digest) {
            None
        } else {
            entry.metadata().ok().filter(|m| {
                let age = m.modified().ok().and_then(|t| now.duration_since(t).ok());
                m.is_file() && age.is_some_and(|age| age > grace)
            })
        };
        let Some(meta) = removable else {
            remaining.insert(digest);
            continue;
        };
        match fs::remove_file(entry.path()) {
            Ok(()) => {
                swept.files += 1;
                swept.bytes += meta.len();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok((swept, remaining))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_input() {
        let d = Digest::of(b"hello");
        let s = d.to_string();
        assert!(s.starts_with("sha256:2cf24dba"));
        assert_eq!(s.parse::<Digest>().unwrap(), d);
        assert!("sha256:XYZ".parse::<Digest>().is_err());
        assert!("md5:2cf24dba".parse::<Digest>().is_err());
        assert!(s.to_uppercase().parse::<Digest>().is_err());
        assert_eq!(Digest::from_hex(d.hex()).unwrap(), d);
        assert!(Digest::from_hex(&d.hex()[1..]).is_err());
        assert!(Digest::from_hex(&d.hex().to_uppercase()).is_err());
    }
}
