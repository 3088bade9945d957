//! Function names, alias names and qualifiers (`NAME[:QUALIFIER]`).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A hash map looked up on every request (by function name, qualifier,
/// version or code digest): foldhash, seeded per map, where the standard
/// map uses SipHash. Its keys are names and digests an authenticated
/// caller created (names at most [`MAX_NAME_LEN`] characters); looking up
/// an unknown one inserts nothing.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set beside [`FastMap`], with the same hasher, for the same keys.
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Longest function or alias name.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name or qualifier was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty or longer than the limit.
    #[error("must be 1 to {MAX_NAME_LEN} characters long")]
    Length,
    /// The name has a character outside the allowed set.
    #[error(
        "must start with a lowercase letter, contain only lowercase letters, digits and '-', and not end with '-'"
    )]
    Charset,
    /// The alias name is reserved.
    #[error("`latest` is reserved and cannot name an alias")]
    Reserved,
    /// A version number of zero or out of range.
    #[error("a version is a number from 1 to {}", u32::MAX)]
    Version,
}

fn check_name(s: &str) -> Result<(), NameError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(NameError::Length);
    }
    let bytes = s.as_bytes();
    let ok = bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !s.ends_with('-');
    if ok { Ok(()) } else { Err(NameError::Charset) }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(s)?;
                Ok($ty(s.to_string()))
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                s.parse()
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$"))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

name_type!(
    /// A function name: 1 to 63 characters of `[a-z0-9-]`, starting with a
    /// letter and not ending with `-`.
    FunctionName,
    check_name
);

name_type!(
    /// An alias name: the same rules as a function name, and not `latest`.
    AliasName,
    |s| {
        check_name(s)?;
        if s == "latest" { Err(NameError::Reserved) } else { Ok(()) }
    }
);

/// Which version of a function an invocation or query addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Qualifier {
    /// The mutable working copy.
    Latest,
    /// A published, immutable version (1, 2, 3, ...).
    Version(u32),
    /// A named alias that points at a version.
    Alias(AliasName),
}

impl FromStr for Qualifier {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        if s == "latest" {
            Ok(Qualifier::Latest)
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            match s.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(Qualifier::Version(n)),
                _ => Err(NameError::Version),
            }
        } else {
            Ok(Qualifier::Alias(s.parse()?))
        }
    }
}

impl fmt::Display for Qualifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qualifier::Latest => f.write_str("latest"),
            Qualifier::Version(n) => write!(f, "{n}"),
            Qualifier::Alias(a) => f.write_str(a.as_str()),
        }
    }
}

/// `NAME[:QUALIFIER]`, the way users address a function; the qualifier
/// defaults to `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The function.
    pub name: FunctionName,
    /// The version, alias or `latest`.
    pub qualifier: Qualifier,
}

impl FromStr for Target {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let (name, qualifier) = match s.split_once(':') {
            Some((n, q)) => (n, q.parse()?),
            None => (s, Qualifier::Latest),
        };
        Ok(Target {
            name: name.parse()?,
            qualifier,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.qualifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names() {
        for good in ["a", "hello", "hello-world-2", &"a".repeat(63)] {
            assert!(good.parse::<FunctionName>().is_ok(), "{good}");
        }
        assert_eq!("".parse::<FunctionName>(), Err(NameError::Length));
        assert_eq!(
            "a".repeat(64).parse::<FunctionName>(),
            Err(NameError::Length)
        );
        for bad in ["Hello", "1abc", "-a", "a-", "a_b", "a.b", "a b", "é"] {
            assert_eq!(
                bad.parse::<FunctionName>(),
                Err(NameError::Charset),
                "{bad}"
            );
        }
    }

    #[test]
    fn qualifiers() {
        assert_eq!("latest".parse::<Qualifier>(), Ok(Qualifier::Latest));
        assert_eq!("12".parse::<Qualifier>(), Ok(Qualifier::Version(12)));
        assert_eq!("0".parse::<Qualifier>(), Err(NameError::Version));
        assert_eq!("99999999999".parse::<Qualifier>(), Err(NameError::Version));
        assert_eq!(
            "prod".parse::<Qualifier>(),
            Ok(Qualifier::Alias("prod".parse().unwrap()))
        );
        assert_eq!("latest".parse::<AliasName>(), Err(NameError::Reserved));
    }

    #[test]
    fn targets() {
        let t: Target = "fn-1".parse().unwrap();
        assert_eq!(t.qualifier, Qualifier::Latest);
        assert_eq!(t.to_string(), "fn-1:latest");
        assert!("fn:".parse::<Target>().is_err());
        assert!("Fn:1".parse::<Target>().is_err());
    }
}
