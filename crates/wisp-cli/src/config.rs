//! The CLI's config file: `$WISP_CONFIG`, else
//! `$XDG_CONFIG_HOME/wisp/config.toml`, else `~/.config/wisp/config.toml`.
//! It may set `server` and `token`; flags and environment variables win.
//! A missing file is the same as an empty one.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Server used when neither a flag, the environment nor the config file names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Contents of the config file.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Base URL of the Wisp server.
    pub server: Option<String>,
    /// Bearer token for the control API.
    pub token: Option<String>,
}

/// Where the config file is looked for.
pub fn path() -> Option<PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(p) = var("WISP_CONFIG") {
        return Some(PathBuf::from(p));
    }
    if let Some(d) = var("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(d).join("wisp/config.toml"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".config/wisp/config.toml"))
}

/// Reads the config file at `path`; a missing file gives the defaults.
pub fn load(path: &Path) -> Result<Config, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| {
            format!(
                "config file {}: {}",
                path.display(),
                e.to_string().trim_end()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(format!("cannot read config file {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_known_keys_and_rejects_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(load(&path).unwrap(), Config::default());
        std::fs::write(&path, "server = \"http://h:1\"\ntoken = \"t\"\n").unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.server.as_deref(), Some("http://h:1"));
        assert_eq!(c.token.as_deref(), Some("t"));
        std::fs::write(&path, "servr = \"x\"\n").unwrap();
        let e = load(&path).unwrap_err();
        assert!(e.contains("servr") && e.contains("config.toml"), "{e}");
    }
}
