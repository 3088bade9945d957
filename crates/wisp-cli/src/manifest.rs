//! `wisp.toml`, the declarative list of functions that `wisp deploy` applies.
//!
//! ```toml
//! [[function]]
//! name = "hello"                                    # required
//! wasm = "target/wasm32-wasip2/release/hello.wasm"  # required, relative to this file
//! build = "cargo build --release"                   # optional, run with `sh -c` here
//! description = "Returns a greeting"                # optional
//! memory_mib = 64                                   # optional
//! timeout_ms = 5000                                 # optional
//! max_concurrency = 10                              # optional
//! min_instances = 1                                 # optional
//! max_requests_per_instance = 100                   # optional
//! invoke_auth = "public"                            # optional, "private" (default) or "public"
//! [function.async_policy]                           # optional, every key optional
//! max_retries = 2
//! semantics = "at_least_once"                       # or "at_most_once", "effectively_once"
//! [function.env]                                    # optional
//! KEY = "value"
//! [function.labels]                                 # optional
//! tier = "demo"
//!
//! [[trigger]]                                       # optional, any number
//! name = "nightly"                                  # required
//! target = "hello:live"                             # required, NAME[:QUALIFIER]
//! source = { kind = "cron", schedule = "0 3 * * *", timezone = "Europe/Berlin" }
//! filters = [{ exact = { type = "wisp.cron.tick" } }]  # optional
//! enabled = true                                    # optional
//! description = "Nightly report"                    # optional
//! ```
//!
//! Triggers are applied after the functions, so they may target them.
//!
//! Unknown keys, duplicate names and an empty manifest are errors; every
//! error names the file, and the key or function at fault.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use wisp_core::{FunctionConfig, FunctionName};

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The manifest.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("{}: {message}", .path.display())]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong, naming the key or function.
        message: String,
    },
}

/// One `[[function]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFunction {
    name: FunctionName,
    wasm: PathBuf,
    build: Option<String>,
    description: Option<String>,
    memory_mib: Option<u32>,
    timeout_ms: Option<u64>,
    max_concurrency: Option<u32>,
    min_instances: Option<u32>,
    max_requests_per_instance: Option<u32>,
    async_policy: Option<wisp_core::AsyncConfig>,
    invoke_auth: Option<wisp_core::InvokeAuth>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// One `[[trigger]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    name: FunctionName,
    target: String,
    source: wisp_triggers::SourceConfig,
    #[serde(default)]
    filters: Vec<wisp_triggers::Filter>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    function: Vec<RawFunction>,
    #[serde(default)]
    trigger: Vec<RawTrigger>,
}

/// A trigger to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerEntry {
    /// Its name.
    pub name: String,
    /// Its definition, validated.
    pub spec: wisp_triggers::TriggerSpec,
}

/// A function to deploy, with paths resolved and defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    /// Its name.
    pub name: FunctionName,
    /// The component, resolved against the manifest's directory.
    pub wasm: PathBuf,
    /// Shell command that builds the component, run in the manifest's directory.
    pub build: Option<String>,
    /// Its configuration: what the server holds after a `PUT` of this entry.
    pub config: FunctionConfig,
}

/// A parsed and checked manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it came from.
    pub path: PathBuf,
    /// Its directory: relative paths and build commands start here.
    pub dir: PathBuf,
    /// The functions, in file order.
    pub functions: Vec<FunctionSpec>,
    /// The triggers, in file order.
    pub triggers: Vec<TriggerEntry>,
}

impl Manifest {
    /// Reads and checks the manifest at `path`.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks manifest `text`, as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let invalid = |message: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawManifest =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        if raw.function.is_empty() && raw.trigger.is_empty() {
            return Err(invalid(
                "no functions are defined; add at least one [[function]] table with `name` and `wasm`"
                    .into(),
            ));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut seen: HashMap<FunctionName, usize> = HashMap::new();
        let mut functions = Vec::with_capacity(raw.function.len());
        for (i, f) in raw.function.into_iter().enumerate() {
            if let Some(first) = seen.insert(f.name.clone(), i) {
                return Err(invalid(format!(
                    "function `{}` is defined twice (entries {} and {} of [[function]])",
                    f.name,
                    first + 1,
                    i + 1
                )));
            }
            if f.wasm.as_os_str().is_empty() {
                return Err(invalid(format!("function `{}`: `wasm` is empty", f.name)));
            }
            if f.build.as_deref().is_some_and(|b| b.trim().is_empty()) {
                return Err(invalid(format!("function `{}`: `build` is empty", f.name)));
            }
            let defaults = FunctionConfig::default();
            let config = FunctionConfig {
                description: f.description.unwrap_or(defaults.description),
                labels: f.labels,
                env: f.env,
                memory_mib: f.memory_mib.unwrap_or(defaults.memory_mib),
                timeout_ms: f.timeout_ms.unwrap_or(defaults.timeout_ms),
                max_concurrency: f.max_concurrency.unwrap_or(defaults.max_concurrency),
                min_instances: f.min_instances.unwrap_or(defaults.min_instances),
                max_requests_per_instance: f
                    .max_requests_per_instance
                    .unwrap_or(defaults.max_requests_per_instance),
                async_policy: f.async_policy.unwrap_or_default(),
                invoke_auth: f.invoke_auth.unwrap_or(defaults.invoke_auth),
            };
            config
                .validate()
                .map_err(|e| invalid(format!("function `{}`: {e}", f.name)))?;
            functions.push(FunctionSpec {
                wasm: dir.join(&f.wasm),
                name: f.name,
                build: f.build,
                config,
            });
        }
        let mut triggers: Vec<TriggerEntry> = Vec::with_capacity(raw.trigger.len());
        for t in raw.trigger {
            let name = t.name.to_string();
            if triggers.iter().any(|e| e.name == name) {
                return Err(invalid(format!("trigger `{name}` is defined twice")));
            }
            let spec = wisp_triggers::TriggerSpec {
                description: t.description,
                target: t.target,
                enabled: t.enabled,
                filters: t.filters,
                source: t.source,
            };
            spec.validate()
                .map_err(|e| invalid(format!("trigger `{name}`: {e}")))?;
            triggers.push(TriggerEntry { name, spec });
        }
        Ok(Manifest {
            path: path.to_path_buf(),
            dir,
            functions,
            triggers,
        })
    }

    /// The distinct build commands, in the order they first appear.
    pub fn build_commands(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for cmd in self.functions.iter().filter_map(|f| f.build.as_deref()) {
            if !out.contains(&cmd) {
                out.push(cmd);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(text, Path::new("/srv/app/wisp.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_entry_and_defaults() {
        let m = parse(
            r#"
            [[function]]
            name = "hello"
            wasm = "target/hello.wasm"
            build = "cargo build --release"
            description = "hi"
            memory_mib = 64
            timeout_ms = 5000
            max_concurrency = 10
            [function.env]
            KEY = "value"
            [function.labels]
            tier = "demo"

            [[function]]
            name = "bare"
            wasm = "/abs/bare.wasm"
            build = "cargo build --release"
            "#,
        )
        .unwrap();
        assert_eq!(m.dir, Path::new("/srv/app"));
        let hello = &m.functions[0];
        assert_eq!(hello.name.as_str(), "hello");
        assert_eq!(hello.config.memory_mib, 64);
        assert_eq!(hello.config.timeout_ms, 5000);
        assert_eq!(hello.config.max_concurrency, 10);
        assert_eq!(hello.config.description, "hi");
        assert_eq!(hello.config.env["KEY"], "value");
        assert_eq!(hello.config.labels["tier"], "demo");
        let bare = &m.functions[1];
        assert_eq!(bare.config, FunctionConfig::default());
        assert_eq!(m.build_commands(), ["cargo build --release"]);
    }

    #[test]
    fn invoke_auth_is_private_unless_made_public() {
        let m = parse(
            "[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\n\
             [[function]]\nname = \"b\"\nwasm = \"b.wasm\"\ninvoke_auth = \"public\"\n\
             [[function]]\nname = \"c\"\nwasm = \"c.wasm\"\ninvoke_auth = \"private\"\n",
        )
        .unwrap();
        let modes: Vec<_> = m.functions.iter().map(|f| f.config.invoke_auth).collect();
        assert_eq!(
            modes,
            [
                wisp_core::InvokeAuth::Private,
                wisp_core::InvokeAuth::Public,
                wisp_core::InvokeAuth::Private
            ]
        );
        let e = parse("[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\ninvoke_auth = \"open\"\n")
            .unwrap_err();
        assert!(e.contains("invoke_auth"), "{e}");
        assert!(e.contains("`open`"), "{e}");
        assert!(e.contains("`public`") && e.contains("`private`"), "{e}");
    }

    #[test]
    fn wasm_paths_resolve_against_the_manifest_directory() {
        let m = parse("[[function]]\nname = \"a\"\nwasm = \"out/a.wasm\"\n").unwrap();
        assert_eq!(m.functions[0].wasm, Path::new("/srv/app/out/a.wasm"));
        let m = parse("[[function]]\nname = \"a\"\nwasm = \"/abs/a.wasm\"\n").unwrap();
        assert_eq!(m.functions[0].wasm, Path::new("/abs/a.wasm"));
        let m = Manifest::parse(
            "[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\n",
            Path::new("wisp.toml"),
        )
        .unwrap();
        assert_eq!(m.dir, Path::new("."));
        assert_eq!(m.functions[0].wasm, Path::new("./a.wasm"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        for (text, key) in [
            (
                "[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\nmemroy_mib = 3\n",
                "memroy_mib",
            ),
            (
                "[[functions]]\nname = \"a\"\nwasm = \"a.wasm\"\n",
                "functions",
            ),
            (
                "[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\n[function.lables]\nx = \"y\"\n",
                "lables",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(key) && e.contains("/srv/app/wisp.toml"), "{e}");
        }
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = parse(
            "[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\n[[function]]\nname = \"a\"\nwasm = \"b.wasm\"\n",
        )
        .unwrap_err();
        assert!(e.contains("`a` is defined twice"), "{e}");
    }

    #[test]
    fn missing_wasm_empty_files_and_bad_values() {
        let e = parse("[[function]]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("wasm"), "{e}");
        for empty in ["", "# nothing\n", "function = []\n"] {
            let e = parse(empty).unwrap_err();
            assert!(e.contains("no functions"), "{e}");
        }
        let e = parse("[[function]]\nname = \"Bad\"\nwasm = \"a.wasm\"\n").unwrap_err();
        assert!(e.contains("lowercase"), "{e}");
        let e =
            parse("[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\nmemory_mib = 0\n").unwrap_err();
        assert!(e.contains("function `a`: memory_mib"), "{e}");
        let e = parse("[[function]]\nname = \"a\"\nwasm = \"a.wasm\"\nmemory_mib = \"64\"\n")
            .unwrap_err();
        assert!(e.contains("memory_mib"), "{e}");
    }

    #[test]
    fn triggers_are_parsed_and_checked() {
        let m = parse(
            r#"
            [[function]]
            name = "hello"
            wasm = "hello.wasm"

            [[trigger]]
            name = "nightly"
            target = "hello:live"
            source = { kind = "cron", schedule = "0 3 * * *", timezone = "Europe/Berlin" }
            filters = [{ exact = { type = "wisp.cron.tick" } }]
            description = "Nightly report"

            [[trigger]]
            name = "hook"
            target = "hello"
            enabled = false
            source = { kind = "webhook", secret = "s3cret" }
            "#,
        )
        .unwrap();
        let names: Vec<&str> = m.triggers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["nightly", "hook"]);
        let nightly = &m.triggers[0].spec;
        assert_eq!(nightly.target, "hello:live");
        assert!(nightly.enabled);
        assert_eq!(nightly.description, "Nightly report");
        assert_eq!(nightly.filters.len(), 1);
        match &nightly.source {
            wisp_triggers::SourceConfig::Cron(c) => {
                assert_eq!(c.schedule, "0 3 * * *");
                assert_eq!(c.timezone.as_deref(), Some("Europe/Berlin"));
            }
            other => panic!("a cron source, not {other:?}"),
        }
        let hook = &m.triggers[1].spec;
        assert!(!hook.enabled);
        assert_eq!(hook.source.kind(), "webhook");

        // A manifest of triggers alone is not empty.
        let m =
            parse("[[trigger]]\nname = \"t\"\ntarget = \"f\"\nsource = { kind = \"webhook\" }\n")
                .unwrap();
        assert!(m.functions.is_empty());
        assert_eq!(m.triggers.len(), 1);
    }

    #[test]
    fn trigger_errors_name_the_trigger_or_the_key() {
        const F: &str = "[[function]]\nname = \"f\"\nwasm = \"f.wasm\"\n";
        let trigger = |body: &str| format!("{F}[[trigger]]\n{body}");

        // Unknown keys, on the trigger and in its source, are named.
        for (body, key) in [
            (
                "name = \"t\"\ntarget = \"f\"\ntargte = \"g\"\nsource = { kind = \"webhook\" }\n",
                "targte",
            ),
            (
                "name = \"t\"\ntarget = \"f\"\nsource = { kind = \"cron\", schedule = \"* * * * *\", tz = \"UTC\" }\n",
                "tz",
            ),
            (
                "name = \"t\"\ntarget = \"f\"\nsource = { kind = \"kafka\", topic = \"x\" }\n",
                "kafka",
            ),
            ("name = \"t\"\ntarget = \"f\"\n", "source"),
        ] {
            let e = parse(&trigger(body)).unwrap_err();
            assert!(
                e.contains(key) && e.contains("/srv/app/wisp.toml"),
                "{key}: {e}"
            );
        }

        // Two triggers of one name.
        let e = parse(&format!(
            "{F}[[trigger]]\nname = \"dup\"\ntarget = \"f\"\nsource = {{ kind = \"webhook\" }}\n\
             [[trigger]]\nname = \"dup\"\ntarget = \"f\"\nsource = {{ kind = \"cron\", schedule = \"* * * * *\" }}\n"
        ))
        .unwrap_err();
        assert!(e.contains("trigger `dup` is defined twice"), "{e}");

        // Invalid values name the trigger and the field.
        for (body, wanted) in [
            (
                "name = \"nightly\"\ntarget = \"f\"\nsource = { kind = \"cron\", schedule = \"99 * * * *\" }\n",
                "trigger `nightly`: source.schedule",
            ),
            (
                "name = \"zoned\"\ntarget = \"f\"\nsource = { kind = \"cron\", schedule = \"* * * * *\", timezone = \"Mars/Base\" }\n",
                "trigger `zoned`: source.timezone",
            ),
            (
                "name = \"aimless\"\ntarget = \"F\"\nsource = { kind = \"webhook\" }\n",
                "trigger `aimless`: target",
            ),
            (
                "name = \"wide\"\ntarget = \"f\"\nsource = { kind = \"nats\", subject = \"a b\" }\n",
                "trigger `wide`: source.subject",
            ),
        ] {
            let e = parse(&trigger(body)).unwrap_err();
            assert!(
                e.contains(wanted) && e.contains("/srv/app/wisp.toml"),
                "{e}"
            );
        }
        let e = parse(&trigger(
            "name = \"Bad\"\ntarget = \"f\"\nsource = { kind = \"webhook\" }\n",
        ))
        .unwrap_err();
        assert!(e.contains("lowercase"), "{e}");
    }
}
