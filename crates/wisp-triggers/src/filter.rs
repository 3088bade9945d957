//! Filters on CloudEvents attributes, with Knative Trigger semantics: a
//! trigger's filters are a list that must all match; each is `exact`,
//! `prefix` or `suffix` on one or more attributes (all must match), or a
//! combination (`all`, `any`, `not`). An attribute the event does not
//! carry matches nothing, not even an empty string.

use crate::TriggerError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use wisp_events::{AttributesReader, Event};

/// Most filters in one trigger, counting nested ones.
pub const MAX_FILTERS: usize = 64;
/// Deepest nesting of `all`, `any` and `not`.
pub const MAX_FILTER_DEPTH: usize = 8;

/// One filter expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Filter {
    /// Every named attribute equals its value.
    Exact(BTreeMap<String, String>),
    /// Every named attribute starts with its value.
    Prefix(BTreeMap<String, String>),
    /// Every named attribute ends with its value.
    Suffix(BTreeMap<String, String>),
    /// Every nested filter matches.
    #[schema(no_recursion)]
    All(Vec<Filter>),
    /// At least one nested filter matches.
    #[schema(no_recursion)]
    Any(Vec<Filter>),
    /// The nested filter does not match.
    #[schema(no_recursion)]
    Not(Box<Filter>),
}

/// The value of an attribute by its CloudEvents name: a context attribute
/// (`id`, `source`, `type`, `subject`, `datacontenttype`, `dataschema`,
/// `time`, `specversion`) or an extension.
pub fn attribute(event: &Event, name: &str) -> Option<String> {
    match name {
        "id" => Some(event.id().to_string()),
        "source" => Some(event.source().to_string()),
        "type" => Some(event.ty().to_string()),
        "specversion" => Some(event.specversion().to_string()),
        "subject" => event.subject().map(str::to_string),
        "datacontenttype" => event.datacontenttype().map(str::to_string),
        "dataschema" => event.dataschema().map(|u| u.to_string()),
        "time" => event.time().map(|t| t.to_rfc3339()),
        other => event.extension(other).map(|v| v.to_string()),
    }
}

impl Filter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &Event) -> bool {
        let each = |map: &BTreeMap<String, String>, test: fn(&str, &str) -> bool| {
            map.iter()
                .all(|(name, want)| attribute(event, name).is_some_and(|got| test(&got, want)))
        };
        match self {
            Filter::Exact(m) => each(m, |got, want| got == want),
            Filter::Prefix(m) => each(m, |got, want| got.starts_with(want)),
            Filter::Suffix(m) => each(m, |got, want| got.ends_with(want)),
            Filter::All(fs) => fs.iter().all(|f| f.matches(event)),
            Filter::Any(fs) => fs.iter().any(|f| f.matches(event)),
            Filter::Not(f) => !f.matches(event),
        }
    }

    fn check(&self, depth: usize, count: &mut usize) -> Result<(), String> {
        *count += 1;
        if *count > MAX_FILTERS {
            return Err(format!(
                "at most {MAX_FILTERS} filters, nested ones included"
            ));
        }
        if depth > MAX_FILTER_DEPTH {
            return Err(format!("nested at most {MAX_FILTER_DEPTH} deep"));
        }
        let names = |m: &BTreeMap<String, String>, op: &str| {
            if m.is_empty() {
                return Err(format!("`{op}` needs at least one attribute"));
            }
            for name in m.keys() {
                let ok = !name.is_empty()
                    && name.len() <= 20
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                if !ok {
                    return Err(format!(
                        "`{name}` is not a CloudEvents attribute name (1 to 20 lowercase letters and digits)"
                    ));
                }
            }
            Ok(())
        };
        match self {
            Filter::Exact(m) => names(m, "exact"),
            Filter::Prefix(m) => names(m, "prefix"),
            Filter::Suffix(m) => names(m, "suffix"),
            Filter::All(fs) | Filter::Any(fs) => {
                fs.iter().try_for_each(|f| f.check(depth + 1, count))
            }
            Filter::Not(f) => f.check(depth + 1, count),
        }
    }
}

/// Whether `event` passes every filter (an empty list passes everything).
pub fn matches_all(filters: &[Filter], event: &Event) -> bool {
    filters.iter().all(|f| f.matches(event))
}

/// Checks names, nesting and count.
pub fn validate(filters: &[Filter]) -> Result<(), TriggerError> {
    let mut count = 0;
    for (i, f) in filters.iter().enumerate() {
        f.check(1, &mut count)
            .map_err(|m| TriggerError::invalid(format!("filters[{i}]"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wisp_events::{EventBuilder, EventBuilderV10};

    fn event() -> Event {
        EventBuilderV10::new()
            .id("1")
            .source("/shop/orders")
            .ty("com.example.order.created")
            .subject("order-42")
            .extension("region", "eu-west")
            .build()
            .unwrap()
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn exact_prefix_suffix_on_context_and_extensions() {
        let e = event();
        assert!(Filter::Exact(map(&[("type", "com.example.order.created")])).matches(&e));
        assert!(!Filter::Exact(map(&[("type", "com.example.order")])).matches(&e));
        assert!(Filter::Prefix(map(&[("source", "/shop/")])).matches(&e));
        assert!(!Filter::Prefix(map(&[("source", "/warehouse")])).matches(&e));
        assert!(Filter::Suffix(map(&[("type", ".created"), ("subject", "-42")])).matches(&e));
        assert!(!Filter::Suffix(map(&[("type", ".created"), ("subject", "-43")])).matches(&e));
        assert!(Filter::Exact(map(&[("region", "eu-west")])).matches(&e));
        assert!(Filter::Prefix(map(&[("region", "eu-")])).matches(&e));
    }

    #[test]
    fn a_missing_attribute_matches_nothing() {
        let e = event();
        assert!(!Filter::Exact(map(&[("tenant", "")])).matches(&e));
        assert!(!Filter::Prefix(map(&[("tenant", "")])).matches(&e));
        assert!(!Filter::Exact(map(&[("dataschema", "")])).matches(&e));
    }

    #[test]
    fn combinations() {
        let e = event();
        let created = Filter::Suffix(map(&[("type", ".created")]));
        let deleted = Filter::Suffix(map(&[("type", ".deleted")]));
        assert!(Filter::Any(vec![deleted.clone(), created.clone()]).matches(&e));
        assert!(!Filter::All(vec![deleted.clone(), created.clone()]).matches(&e));
        assert!(Filter::Not(Box::new(deleted.clone())).matches(&e));
        assert!(matches_all(&[], &e));
        assert!(!matches_all(&[created, deleted], &e));
    }

    #[test]
    fn json_form_and_validation() {
        let filters: Vec<Filter> = serde_json::from_str(
            r#"[{"exact": {"type": "a"}}, {"any": [{"prefix": {"source": "/x"}}, {"not": {"suffix": {"subject": "y"}}}]}]"#,
        )
        .unwrap();
        validate(&filters).unwrap();
        let bad: Vec<Filter> = serde_json::from_str(r#"[{"exact": {"Type": "a"}}]"#).unwrap();
        let err = validate(&bad).unwrap_err();
        assert!(err.to_string().contains("filters[0]"), "{err}");
        let empty: Vec<Filter> = serde_json::from_str(r#"[{"exact": {}}]"#).unwrap();
        assert!(validate(&empty).is_err());
        assert!(serde_json::from_str::<Vec<Filter>>(r#"[{"regex": {"type": "a"}}]"#).is_err());
        let mut deep = Filter::Exact(map(&[("type", "a")]));
        for _ in 0..MAX_FILTER_DEPTH + 1 {
            deep = Filter::Not(Box::new(deep));
        }
        assert!(validate(&[deep]).is_err());
    }
}
