//! `wisp deploy`: makes the server match a `wisp.toml`.
//!
//! In order: run each distinct `build` command once; read and upload every
//! component; then for each function, create it, replace it, or leave it
//! alone when its `latest` already has the same code and configuration
//! (so a second run writes nothing); with `--publish`, publish a version.

use crate::manifest::{FunctionSpec, Manifest};
use crate::output::{self, line};
use crate::{Ctx, Failure, commands};
use serde::Serialize;
use std::path::Path;
use std::process::{Command, Stdio};
use wisp_core::{ErrorCode, FunctionInput};

/// What happened to one function, as printed with `--json`.
#[derive(Debug, Serialize)]
struct Outcome {
    name: String,
    /// `created`, `updated` or `unchanged`.
    action: &'static str,
    code_digest: String,
    /// The published version, with `--publish`.
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    /// Whether `--publish` made a new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    published: Option<bool>,
}

/// Runs `command` with `sh -c` in `dir`, its output on stderr.
fn build(command: &str, dir: &Path) -> Result<(), Failure> {
    eprintln!("wisp: building: {command}  (in {})", dir.display());
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .status()
        .map_err(|e| Failure::usage(format!("cannot run build `{command}`: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .filter(|c| *c != 0)
        .unwrap_or(1);
    Err(Failure {
        code,
        message: format!("build `{command}` failed ({status}); nothing was deployed"),
    })
}

/// The `PUT` body that makes `latest` equal `spec` running `digest`.
fn put_input(spec: &FunctionSpec, digest: &str) -> FunctionInput {
    let c = spec.config.clone();
    FunctionInput {
        name: None,
        code_digest: Some(digest.to_string()),
        description: Some(c.description),
        labels: Some(c.labels),
        env: Some(c.env),
        memory_mib: Some(c.memory_mib),
        timeout_ms: Some(c.timeout_ms),
        max_concurrency: Some(c.max_concurrency),
        min_instances: Some(c.min_instances),
        max_requests_per_instance: Some(c.max_requests_per_instance),
        async_policy: Some(c.async_policy),
        invoke_auth: Some(c.invoke_auth),
    }
}

/// `wisp deploy`.
pub async fn run(ctx: &Ctx, file: &Path, publish: bool) -> Result<(), Failure> {
    let file = if file.is_dir() {
        file.join("wisp.toml")
    } else {
        file.to_path_buf()
    };
    let manifest = Manifest::load(&file).map_err(|e| Failure::usage(e.to_string()))?;
    for command in manifest.build_commands() {
        build(command, &manifest.dir)?;
    }
    let mut blobs = Vec::with_capacity(manifest.functions.len());
    for f in &manifest.functions {
        let bytes = commands::read_wasm(&f.wasm).map_err(|e| {
            e.context(format!(
                "{}: function `{}`",
                manifest.path.display(),
                f.name
            ))
        })?;
        blobs.push(bytes);
    }
    let mut digests = Vec::with_capacity(blobs.len());
    for (f, bytes) in manifest.functions.iter().zip(blobs) {
        let info = ctx.client.upload_artifact(bytes).await.map_err(|e| {
            Failure::from(e).context(format!("{}: uploading {}", f.name, f.wasm.display()))
        })?;
        digests.push(info.digest);
    }

    for (spec, digest) in manifest.functions.iter().zip(&digests) {
        let name = spec.name.as_str();
        let err = |e: wisp_client::ClientError| Failure::from(e).context(name);
        let existing = match ctx.client.get_function(name).await {
            Ok(f) => Some(f),
            Err(e) if e.code() == Some(ErrorCode::FunctionNotFound) => None,
            Err(e) => return Err(err(e)),
        };
        let action = match existing {
            Some(f) if &f.latest.code_digest == digest && f.latest.config == spec.config => {
                "unchanged"
            }
            _ => {
                let input = put_input(spec, &digest.to_string());
                let (_, created) = ctx.client.put_function(name, &input).await.map_err(err)?;
                if created { "created" } else { "updated" }
            }
        };
        let mut outcome = Outcome {
            name: name.to_string(),
            action,
            code_digest: digest.to_string(),
            version: None,
            published: None,
        };
        let mut text = format!("{name}: {action}");
        if publish {
            let (v, created) = ctx.client.publish(name).await.map_err(err)?;
            if created {
                text.push_str(&format!(" published version {}", v.version));
            } else {
                text.push_str(&format!(" version {} unchanged", v.version));
            }
            outcome.version = Some(v.version.to_string());
            outcome.published = Some(created);
        }
        if ctx.json {
            output::json_line(&outcome);
        } else {
            line(text);
        }
    }
    for t in &manifest.triggers {
        let action = apply_trigger(ctx, t).await?;
        if ctx.json {
            output::json_line(&serde_json::json!({"trigger": t.name, "action": action}));
        } else {
            line(format!("trigger {}: {action}", t.name));
        }
    }
    Ok(())
}

/// Creates or replaces a trigger unless the server already has exactly
/// this definition (compared with secrets hidden, as the server shows them).
async fn apply_trigger(
    ctx: &Ctx,
    t: &crate::manifest::TriggerEntry,
) -> Result<&'static str, Failure> {
    let err = |e: wisp_client::ClientError| Failure::from(e).context(format!("trigger {}", t.name));
    let mut wanted = t.spec.clone();
    wanted.source = wanted.source.redacted();
    let existing = match ctx.client.get_trigger(&t.name).await {
        Ok(mut view) => {
            if let Some(o) = view.as_object_mut() {
                for k in ["name", "status", "created_at", "updated_at", "webhook_path"] {
                    o.remove(k);
                }
            }
            serde_json::from_value::<wisp_triggers::TriggerSpec>(view).ok()
        }
        Err(e) if e.code() == Some(ErrorCode::TriggerNotFound) => None,
        Err(e) => return Err(err(e)),
    };
    // The server never shows secrets, so a definition that has one cannot
    // be compared: send it again, so a changed secret takes effect.
    let has_secret = wanted.source != t.spec.source;
    if !has_secret && existing.as_ref() == Some(&wanted) {
        return Ok("unchanged");
    }
    let body = serde_json::to_value(&t.spec)
        .map_err(|e| Failure::usage(format!("trigger {}: {e}", t.name)))?;
    ctx.client.put_trigger(&t.name, &body).await.map_err(err)?;
    Ok(if existing.is_some() {
        "updated"
    } else {
        "created"
    })
}
