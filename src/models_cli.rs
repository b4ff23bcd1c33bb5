//! `sluice models`: list, inspect, promote, roll back and audit models through the registry's
//! HTTP API. Each command returns the text to print: tables for people, the API's JSON with
//! `--json`.

use anyhow::bail;
use serde_json::{Value, json};

use crate::client::{Api, table};

/// What `sluice models` can do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Every model with its latest version and aliases.
    List,
    /// A model's aliases and versions, or one version in full.
    Show {
        name: String,
        #[arg(long)]
        version: Option<i32>,
    },
    /// Point an alias at a version (promote, or roll back to a chosen version).
    Promote {
        name: String,
        version: i32,
        #[arg(long, default_value = "production")]
        alias: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Move an alias back to the version it pointed at before its last move.
    Rollback {
        name: String,
        #[arg(long, default_value = "production")]
        alias: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// An alias's moves, newest first.
    History {
        name: String,
        #[arg(long, default_value = "production")]
        alias: String,
    },
    /// Show the model's promotion policy, or set it (admin): how far jobs and retrains that no
    /// admin started may move `production`, and which other aliases only an admin may move.
    Policy {
        name: String,
        /// never, if_better or always.
        #[arg(long)]
        auto_promote: Option<String>,
        /// Aliases besides production that only an admin may move (replaces the list).
        #[arg(long, value_delimiter = ',')]
        protect: Option<Vec<String>>,
    },
}

/// Runs `command` against the API and returns what to print.
pub async fn run(command: Command, api: &Api, json_output: bool) -> anyhow::Result<String> {
    let render = |body: &Value, human: fn(&Value) -> String| {
        if json_output {
            format!("{}\n", serde_json::to_string_pretty(body).expect("JSON prints"))
        } else {
            human(body)
        }
    };
    Ok(match command {
        Command::List => render(&api.get(&["v1", "models"]).await?, list_text),
        Command::Show { name, version: None } => render(&api.get(&["v1", "models", &name]).await?, model_text),
        Command::Show { name, version: Some(v) } => {
            render(&api.get(&["v1", "models", &name, "versions", &v.to_string()]).await?, version_text)
        }
        Command::Promote { name, version, alias, reason } => {
            let body = json!({"version": version, "reason": reason});
            render(&api.put(&["v1", "models", &name, "aliases", &alias], &body).await?, move_text)
        }
        Command::Rollback { name, alias, reason } => {
            let history = api.get(&["v1", "models", &name, "aliases", &alias, "history"]).await?;
            let target = rollback_target(&name, &alias, &history)?;
            let reason = reason.unwrap_or_else(|| format!("rollback to v{target}"));
            let body = json!({"version": target, "reason": reason});
            render(&api.put(&["v1", "models", &name, "aliases", &alias], &body).await?, move_text)
        }
        Command::History { name, alias } => {
            render(&api.get(&["v1", "models", &name, "aliases", &alias, "history"]).await?, history_text)
        }
        Command::Policy { name, auto_promote: None, protect: None } => {
            render(&api.get(&["v1", "models", &name, "policy"]).await?, policy_text)
        }
        Command::Policy { name, auto_promote, protect } => {
            let current = api.get(&["v1", "models", &name, "policy"]).await?;
            let body = json!({
                "auto_promote": auto_promote.map_or_else(|| current["policy"]["auto_promote"].clone(), Value::from),
                "protected_aliases": protect.map_or_else(|| current["policy"]["protected_aliases"].clone(), |p| json!(p)),
            });
            render(&api.put(&["v1", "models", &name, "policy"], &body).await?, policy_text)
        }
    })
}

/// The version an alias pointed at before its last move (the newest history entry's `from`).
pub fn rollback_target(name: &str, alias: &str, history: &Value) -> anyhow::Result<i64> {
    let Some(last) = history["history"].as_array().and_then(|h| h.first()) else {
        bail!("{name} has no moves of {alias} on record; nothing to roll back");
    };
    match last["from"].as_i64() {
        Some(from) => Ok(from),
        None => bail!(
            "{alias} of {name} was created by its last move (to v{}); there is no earlier version to go back to",
            last["to"]
        ),
    }
}

fn list_text(body: &Value) -> String {
    let rows = items(&body["models"])
        .iter()
        .map(|m| {
            vec![text(&m["name"]), text(&m["latest_version"]), aliases_text(&m["aliases"]), text(&m["updated_at"])]
        })
        .collect();
    table(&["NAME", "LATEST", "ALIASES", "UPDATED"], rows)
}

fn model_text(body: &Value) -> String {
    let mut out = format!("model {} (latest version {})\n", text(&body["name"]), text(&body["latest_version"]));
    out.push_str(&format!("aliases: {}\n\n", aliases_text(&body["aliases"])));
    let rows = items(&body["versions"])
        .iter()
        .map(|v| {
            vec![
                text(&v["version"]),
                text(&v["created_at"]),
                text(&v["architecture"]),
                pairs(&v["metrics"]),
                names(&v["aliases"]),
                text(&v["lineage"]["job_id"]),
            ]
        })
        .collect();
    out + &table(&["VERSION", "CREATED", "ARCH", "METRICS", "ALIASES", "JOB"], rows)
}

fn version_text(v: &Value) -> String {
    let spec = &v["input_spec"];
    let lineage = &v["lineage"];
    let fields = [
        ("created", text(&v["created_at"])),
        ("aliases", names(&v["aliases"])),
        ("architecture", text(&v["architecture"])),
        ("artifact", format!("{} ({} bytes)", text(&v["artifact_key"]), text(&v["size_bytes"]))),
        ("sha256", text(&v["sha256"])),
        ("classes", names(&v["labels"])),
        ("input", format!("{}x{} {} {}", spec["width"], spec["height"], text(&spec["color"]), text(&spec["fit"]))),
        ("metrics", pairs(&v["metrics"])),
        ("hyperparams", pairs(&v["hyperparameters"])),
        ("job", text(&lineage["job_id"])),
        ("trial", text(&lineage["trial_id"])),
        ("dataset", format!("{} (snapshot {})", text(&lineage["dataset"]), text(&lineage["snapshot_id"]))),
        ("spec hash", text(&lineage["spec_hash"])),
        ("sluice", text(&lineage["sluice_version"])),
    ];
    let mut out = format!("{} v{}\n", text(&v["model"]), text(&v["version"]));
    for (key, value) in fields {
        out.push_str(&format!("  {key:<13}{value}\n"));
    }
    out + &held_out_text(&v["metrics"], &v["labels"])
}

/// The test split's metrics (held out from training, selection and calibration): accuracy,
/// macro-F1, calibration error, split sizes, per-class precision and recall, confusion matrix.
fn held_out_text(metrics: &Value, labels: &Value) -> String {
    let test = &metrics["test"];
    if !test.is_object() {
        return String::new();
    }
    let mut out = format!(
        "  {:<13}accuracy={} macro_f1={} ece={} on {} held-out items\n",
        "test",
        text(&test["accuracy"]),
        text(&test["macro_f1"]),
        text(&test["expected_calibration_error"]),
        text(&test["items"])
    );
    out.push_str(&format!("  {:<13}{}\n", "splits", pairs(&metrics["splits"])));
    let rows = items(&test["per_class"])
        .iter()
        .map(|c| {
            vec![text(&c["label"]), text(&c["precision"]), text(&c["recall"]), text(&c["f1"]), text(&c["support"])]
        })
        .collect();
    for line in table(&["CLASS", "PRECISION", "RECALL", "F1", "ITEMS"], rows).lines() {
        out.push_str(&format!("    {line}\n"));
    }
    let names: Vec<String> = items(labels).iter().map(text).collect();
    let mut rows = Vec::new();
    for (i, row) in items(&test["confusion_matrix"]).iter().enumerate() {
        let mut cells = vec![names.get(i).cloned().unwrap_or_default()];
        cells.extend(items(row).iter().map(text));
        rows.push(cells);
    }
    let mut headers = vec!["TRUE \\ PREDICTED"];
    headers.extend(names.iter().map(String::as_str));
    for line in table(&headers, rows).lines() {
        out.push_str(&format!("    {line}\n"));
    }
    out
}

fn policy_text(body: &Value) -> String {
    let policy = &body["policy"];
    format!(
        "model {}: auto-promote {}, protected aliases: production{}\n",
        text(&body["model"]),
        text(&policy["auto_promote"]),
        items(&policy["protected_aliases"]).iter().map(|a| format!(", {}", text(a))).collect::<String>()
    )
}

fn move_text(m: &Value) -> String {
    let (model, alias, to) = (text(&m["model"]), text(&m["alias"]), text(&m["to"]));
    if m["changed"] == false {
        return format!("{model} {alias} already points at v{to}; nothing changed\n");
    }
    let from = m["from"].as_i64().map_or_else(|| "(new)".to_owned(), |v| format!("v{v}"));
    format!("{model} {alias}: {from} -> v{to}\n")
}

fn history_text(body: &Value) -> String {
    let version = |v: &Value| v.as_i64().map_or_else(|| "-".to_owned(), |v| format!("v{v}"));
    let rows = items(&body["history"])
        .iter()
        .map(|h| vec![text(&h["at"]), version(&h["from"]), version(&h["to"]), text(&h["actor"]), text(&h["reason"])])
        .collect();
    table(&["AT", "FROM", "TO", "ACTOR", "REASON"], rows)
}

fn items(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// A scalar as a person reads it: strings without quotes, null as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}").trim_end_matches('0').trim_end_matches('.').to_owned(),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// `{"a": 1, "b": 2}` as `a=1 b=2` (nested objects, shown on their own, are left out).
fn pairs(value: &Value) -> String {
    match value.as_object() {
        Some(map) => {
            let flat: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(_, v)| !v.is_object() && !v.is_array())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            entries(&Value::Object(flat), " ", |key, value| format!("{key}={}", text(value)))
        }
        None => "-".into(),
    }
}

/// An alias map as `production=v2, staging=v3`.
fn aliases_text(value: &Value) -> String {
    entries(value, ", ", |alias, version| format!("{alias}=v{version}"))
}

/// An object's entries, each shown by `show`, joined by `separator`; `-` when there are none.
fn entries(value: &Value, separator: &str, show: impl Fn(&str, &Value) -> String) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map.iter().map(|(k, v)| show(k, v)).collect::<Vec<_>>().join(separator),
        _ => "-".into(),
    }
}

/// A list of strings as `a, b`.
fn names(value: &Value) -> String {
    let list: Vec<String> = items(value).iter().map(text).collect();
    if list.is_empty() { "-".into() } else { list.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_goes_to_the_version_before_the_last_move() {
        let history = json!({"history": [{"from": 2, "to": 3}, {"from": null, "to": 2}]});
        assert_eq!(rollback_target("m", "production", &history).expect("target"), 2);
        let created = json!({"history": [{"from": null, "to": 2}]});
        assert!(rollback_target("m", "production", &created).is_err());
        assert!(rollback_target("m", "production", &json!({"history": []})).is_err());
    }

    #[test]
    fn cells_are_short_and_readable() {
        assert_eq!(text(&json!(0.912345)), "0.9123");
        assert_eq!(pairs(&json!({"epochs": 10, "val_accuracy": 0.5})), "epochs=10 val_accuracy=0.5");
    }
}
