//! `wisp trigger ...`: create, replace, list, show, delete, enable and
//! disable triggers, the connections from event sources to functions.

use crate::output::{self, line};
use crate::{Ctx, Failure};
use serde_json::{Value, json};

/// `wisp trigger ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TriggerCommand {
    /// Create a trigger (fails if one by that name exists)
    Create(TriggerArgs),
    /// Create or replace a trigger's whole definition
    Update(TriggerArgs),
    /// List triggers with their state and counters
    List,
    /// Show a trigger: definition, state, last error and counters
    Get {
        /// Trigger name
        name: String,
    },
    /// Delete a trigger; its source stops
    Delete {
        /// Trigger name
        name: String,
    },
    /// Start a disabled trigger
    Enable {
        /// Trigger name
        name: String,
    },
    /// Stop a trigger, keeping its definition
    Disable {
        /// Trigger name
        name: String,
    },
}

/// A trigger's definition on the command line.
#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// Trigger name
    pub name: String,
    /// The function the events go to: NAME[:VERSION|:ALIAS]
    #[arg(long, short = 't', value_name = "NAME[:QUALIFIER]")]
    pub target: String,
    /// The source as JSON, for example '{"kind":"cron","schedule":"*/5 * * * *"}'
    /// (see docs/triggers.md for every kind)
    #[arg(long, short = 's', value_name = "JSON")]
    pub source: String,
    /// A filter as JSON, for example '{"exact":{"type":"order.created"}}' (repeatable; all must match)
    #[arg(long = "filter", value_name = "JSON")]
    pub filters: Vec<String>,
    /// Free-text description
    #[arg(long)]
    pub description: Option<String>,
    /// Create it disabled
    #[arg(long)]
    pub disabled: bool,
}

fn parse_json(what: &str, s: &str) -> Result<Value, Failure> {
    serde_json::from_str(s).map_err(|e| Failure::usage(format!("{what} is not valid JSON: {e}")))
}

fn spec(args: &TriggerArgs) -> Result<Value, Failure> {
    let filters = args
        .filters
        .iter()
        .map(|f| parse_json("--filter", f))
        .collect::<Result<Vec<_>, _>>()?;
    let mut spec = json!({
        "target": args.target,
        "source": parse_json("--source", &args.source)?,
        "enabled": !args.disabled,
    });
    if !filters.is_empty() {
        spec["filters"] = Value::Array(filters);
    }
    if let Some(d) = &args.description {
        spec["description"] = d.clone().into();
    }
    Ok(spec)
}

fn state(t: &Value) -> String {
    let s = &t["status"];
    let state = s["state"].as_str().unwrap_or("-");
    match s["last_error"].as_str() {
        Some(e) if state == "degraded" => format!("degraded: {e}"),
        _ => state.to_string(),
    }
}

fn show(ctx: &Ctx, t: &Value) {
    if ctx.json {
        output::json(t);
        return;
    }
    let s = &t["status"];
    let mut fields = vec![
        ("name", t["name"].as_str().unwrap_or("-").to_string()),
        ("target", t["target"].as_str().unwrap_or("-").to_string()),
        ("source", t["source"].to_string()),
        ("state", state(t)),
        ("delivered", s["delivered"].to_string()),
        ("failed", s["failed"].to_string()),
        ("filtered", s["filtered"].to_string()),
    ];
    if let Some(f) = t.get("filters") {
        fields.push(("filters", f.to_string()));
    }
    if let Some(e) = s["last_error"].as_str() {
        fields.push(("last_error", e.to_string()));
        fields.push((
            "last_error_at",
            s["last_error_at"].as_str().unwrap_or("-").to_string(),
        ));
    }
    if let Some(p) = t["webhook_path"].as_str() {
        fields.push((
            "webhook",
            format!("{}{p}", ctx.client.base_url().trim_end_matches('/')),
        ));
    }
    line(output::fields(&fields));
}

/// `wisp trigger`.
pub async fn run(ctx: &Ctx, cmd: TriggerCommand) -> Result<(), Failure> {
    match cmd {
        TriggerCommand::Create(args) => {
            let mut body = spec(&args)?;
            body["name"] = args.name.clone().into();
            let t = ctx.client.create_trigger(&body).await?;
            show(ctx, &t);
        }
        TriggerCommand::Update(args) => {
            let t = ctx.client.put_trigger(&args.name, &spec(&args)?).await?;
            show(ctx, &t);
        }
        TriggerCommand::List => {
            let list = ctx.client.list_triggers().await?;
            if ctx.json {
                output::json(&list);
                return Ok(());
            }
            let triggers = list["triggers"].as_array().cloned().unwrap_or_default();
            if triggers.is_empty() {
                line("no triggers");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = triggers
                .iter()
                .map(|t| {
                    vec![
                        t["name"].as_str().unwrap_or("-").to_string(),
                        t["source"]["kind"].as_str().unwrap_or("-").to_string(),
                        t["target"].as_str().unwrap_or("-").to_string(),
                        state(t),
                        t["status"]["delivered"].to_string(),
                        t["status"]["failed"].to_string(),
                        t["status"]["filtered"].to_string(),
                    ]
                })
                .collect();
            line(output::table(
                &[
                    "NAME",
                    "KIND",
                    "TARGET",
                    "STATE",
                    "DELIVERED",
                    "FAILED",
                    "FILTERED",
                ],
                &rows,
            ));
        }
        TriggerCommand::Get { name } => show(ctx, &ctx.client.get_trigger(&name).await?),
        TriggerCommand::Delete { name } => {
            ctx.client.delete_trigger(&name).await?;
            if !ctx.json {
                line(format!("deleted trigger {name}"));
            }
        }
        TriggerCommand::Enable { name } => {
            show(ctx, &ctx.client.set_trigger_enabled(&name, true).await?)
        }
        TriggerCommand::Disable { name } => {
            show(ctx, &ctx.client.set_trigger_enabled(&name, false).await?)
        }
    }
    Ok(())
}
