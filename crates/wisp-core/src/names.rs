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

/// [`FunctionName`]'s rule as an ECMA-262 pattern, for the OpenAPI
/// document (the same rule names triggers). A test checks that it accepts
/// exactly what the parser accepts.
pub const NAME_PATTERN: &str = "^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$";

/// [`AliasName`]'s rule as a pattern: a name, and not `latest`.
pub const ALIAS_PATTERN: &str = "^(?!latest$)[a-z]([a-z0-9-]{0,61}[a-z0-9])?$";

/// [`Qualifier`]'s rule as a pattern: `latest`, a version number from 1
/// to `u32::MAX` (leading zeros allowed) or an alias name.
pub const QUALIFIER_PATTERN: &str = concat!(
    "^(latest|",
    "0*([1-9][0-9]{0,8}|[1-3][0-9]{9}|4[01][0-9]{8}|42[0-8][0-9]{7}",
    "|429[0-3][0-9]{6}|4294[0-8][0-9]{5}|42949[0-5][0-9]{4}|429496[0-6][0-9]{3}",
    "|4294967[01][0-9]{2}|42949672[0-8][0-9]|429496729[0-5])",
    "|[a-z]([a-z0-9-]{0,61}[a-z0-9])?)$"
);

/// A string schema with a pattern (and a length bound, if any), for the
/// OpenAPI document.
pub fn string_schema(
    pattern: &str,
    max_length: Option<usize>,
    description: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(pattern))
        .min_length(Some(1))
        .max_length(max_length)
        .description(Some(description))
        .into()
}

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
    ($(#[$doc:meta])* $ty:ident, $pattern:expr, $what:expr, $check:expr) => {
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
                string_schema($pattern, Some(MAX_NAME_LEN), $what)
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

name_type!(
    /// A function name: 1 to 63 characters of `[a-z0-9-]`, starting with a
    /// letter and not ending with `-`.
    FunctionName,
    NAME_PATTERN,
    "1 to 63 characters of `[a-z0-9-]`, starting with a letter and not ending with `-`",
    check_name
);

name_type!(
    /// An alias name: the same rules as a function name, and not `latest`.
    AliasName,
    ALIAS_PATTERN,
    "a name like a function's, and not `latest`",
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

impl utoipa::PartialSchema for Qualifier {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        // Version numbers may have any number of leading zeros.
        string_schema(
            QUALIFIER_PATTERN,
            None,
            "`latest`, a published version number or an alias name",
        )
    }
}

impl utoipa::ToSchema for Qualifier {}

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

    /// Whether the OpenAPI schema of `T` accepts `s`.
    fn schema_accepts<T: utoipa::PartialSchema>(s: &str) -> bool {
        let schema = serde_json::to_value(T::schema()).unwrap();
        jsonschema::validator_for(&schema)
            .unwrap()
            .is_valid(&serde_json::json!(s))
    }

    #[test]
    fn documented_patterns_accept_exactly_what_the_parsers_accept() {
        let mut cases: Vec<String> = [
            "",
            "a",
            "z9",
            "hello",
            "hello-world-2",
            "a-",
            "-a",
            "Hello",
            "1abc",
            "a_b",
            "a.b",
            "a b",
            "é",
            "latest",
            "latestx",
            "xlatest",
            "late-st",
            "0",
            "00",
            "1",
            "01",
            "007",
            "9",
            "10",
            "999999999",
            "1000000000",
            "3999999999",
            "4099999999",
            "4199999999",
            "4289999999",
            "4293999999",
            "4294899999",
            "4294959999",
            "4294966999",
            "4294967199",
            "4294967289",
            "4294967295",
            "4294967296",
            "4294967299",
            "4294967300",
            "4294968000",
            "4295000000",
            "5000000000",
            "9999999999",
            "10000000000",
            "00004294967295",
            "00004294967296",
            "-1",
            "+1",
            "1.0",
            "1a",
            "a1",
            "prod:1",
            " prod",
            "prod\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for n in [61, 62, 63, 64] {
            cases.push("a".repeat(n));
            cases.push(format!("{}-b", "a".repeat(n - 2)));
        }
        for s in &cases {
            assert_eq!(
                schema_accepts::<FunctionName>(s),
                s.parse::<FunctionName>().is_ok(),
                "function name {s:?}"
            );
            assert_eq!(
                schema_accepts::<AliasName>(s),
                s.parse::<AliasName>().is_ok(),
                "alias name {s:?}"
            );
            assert_eq!(
                schema_accepts::<Qualifier>(s),
                s.parse::<Qualifier>().is_ok(),
                "qualifier {s:?}"
            );
        }
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
