//! `sluice train`: start a training job (from flags or a JSON file), then follow it live: trials
//! queued, running and done, each trial's epoch and validation accuracy, and the best so far.

use std::{collections::BTreeMap, io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::client::{Api, table};

/// What `sluice train` was asked to do.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// Model name the best trial is registered under.
    #[arg(long, required_unless_present_any = ["file", "watch", "cancel"])]
    pub model: Option<String>,
    /// Dataset to train on (its processed, labelled items).
    #[arg(long, required_unless_present_any = ["file", "watch", "cancel"])]
    pub dataset: Option<String>,
    /// mlp or cnn.
    #[arg(long, default_value = "cnn")]
    pub architecture: String,
    /// grid, random, halving, asha or tpe.
    #[arg(long, default_value = "grid")]
    pub strategy: String,
    /// A search dimension: `name=v1,v2` (a list), `name=v` (fixed), or
    /// `name=uniform:low:high` / `log_uniform:low:high` / `int_uniform:low:high`. Repeatable.
    #[arg(long = "param", value_name = "NAME=VALUES")]
    pub params: Vec<String>,
    #[arg(long)]
    pub max_trials: Option<u32>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of items for early stopping and ranking.
    #[arg(long, default_value_t = 0.15)]
    pub validation_split: f64,
    /// Fraction of items that calibrate confidences (0: the validation split does).
    #[arg(long, default_value_t = 0.1)]
    pub calibration_split: f64,
    /// Fraction of items held out for test metrics and the promotion gate.
    #[arg(long, default_value_t = 0.15)]
    pub test_split: f64,
    /// Seeds the item-to-split hash; keep it fixed across a model's jobs.
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
    /// never, if_better or always.
    #[arg(long, default_value = "if_better")]
    pub promote: String,
    /// The whole job request as JSON (the API's body) instead of the flags above.
    #[arg(long, conflicts_with_all = ["model", "dataset"])]
    pub file: Option<PathBuf>,
    /// Follow an existing job instead of starting one.
    #[arg(long, value_name = "JOB_ID", conflicts_with = "cancel")]
    pub watch: Option<String>,
    /// Cancel a job.
    #[arg(long, value_name = "JOB_ID")]
    pub cancel: Option<String>,
    /// Start the job and return its id without following it.
    #[arg(long)]
    pub detach: bool,
}

/// Parses one `--param` into a search-space entry.
pub fn parse_param(raw: &str) -> anyhow::Result<(String, Value)> {
    let (name, values) = raw.split_once('=').with_context(|| format!("--param {raw}: expected NAME=VALUES"))?;
    let scalar = |s: &str| serde_json::from_str::<Value>(s).unwrap_or_else(|_| Value::from(s));
    for kind in ["uniform", "log_uniform", "int_uniform"] {
        if let Some(bounds) = values.strip_prefix(kind).and_then(|r| r.strip_prefix(':')) {
            let (low, high) =
                bounds.split_once(':').with_context(|| format!("--param {raw}: expected {kind}:LOW:HIGH"))?;
            return Ok((name.to_owned(), json!({kind: [scalar(low), scalar(high)]})));
        }
    }
    let list: Vec<Value> = values.split(',').map(scalar).collect();
    Ok((name.to_owned(), if list.len() == 1 { list[0].clone() } else { Value::from(list) }))
}

fn request(args: &TrainArgs) -> anyhow::Result<Value> {
    if let Some(path) = &args.file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()));
    }
    let space: BTreeMap<String, Value> = args.params.iter().map(|p| parse_param(p)).collect::<anyhow::Result<_>>()?;
    let mut search = json!({"strategy": args.strategy, "space": space});
    if let Some(max) = args.max_trials {
        search["max_trials"] = json!(max);
    }
    Ok(json!({
        "model": args.model, "dataset": args.dataset, "architecture": args.architecture, "search": search,
        "seed": args.seed, "validation_split": args.validation_split, "calibration_split": args.calibration_split,
        "test_split": args.test_split, "split_seed": args.split_seed, "promote": args.promote,
    }))
}

/// Runs the command; returns the final job view (or the cancel answer).
pub async fn run(args: &TrainArgs, api: &Api) -> anyhow::Result<Value> {
    if let Some(id) = &args.cancel {
        return api.post(&["v1", "training-jobs", id, "cancel"], &json!({})).await;
    }
    let id = match &args.watch {
        Some(id) => id.clone(),
        None => {
            let created = api.post(&["v1", "training-jobs"], &request(args)?).await?;
            let id = created["id"].as_str().context("the API answered without a job id")?.to_owned();
            eprintln!("training job {id} queued");
            if args.detach {
                return Ok(created);
            }
            id
        }
    };
    follow(api, &id).await
}

/// Polls the job until it ends, redrawing a table on a terminal and printing changes otherwise.
async fn follow(api: &Api, id: &str) -> anyhow::Result<Value> {
    let tty = std::io::stderr().is_terminal();
    let mut last_lines: Vec<String> = Vec::new();
    let mut drawn = 0usize;
    loop {
        let job = api.get(&["v1", "training-jobs", id]).await?;
        let status = job["status"].as_str().unwrap_or("unknown").to_owned();
        let rendered = render(&job);
        if tty {
            // Move up over the previous drawing and redraw in place.
            if drawn > 0 {
                eprint!("\x1b[{drawn}A\x1b[J");
            }
            eprint!("{rendered}");
            drawn = rendered.lines().count();
        } else {
            let lines: Vec<String> = progress_lines(&job);
            for line in lines.iter().filter(|l| !last_lines.contains(l)) {
                eprintln!("{line}");
            }
            last_lines = lines;
        }
        if !matches!(status.as_str(), "queued" | "running") {
            if !tty {
                eprint!("{rendered}");
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn metric(trial: &Value, name: &str) -> String {
    trial["metrics"][name].as_f64().map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into())
}

fn progress_lines(job: &Value) -> Vec<String> {
    let mut lines =
        vec![format!("job {}: {}", job["id"].as_str().unwrap_or("?"), job["status"].as_str().unwrap_or("?"))];
    for trial in job["trials"].as_array().into_iter().flatten() {
        lines.push(format!(
            "trial {} {} epoch {}/{} val_accuracy {} worker {}",
            trial["ordinal"],
            trial["status"].as_str().unwrap_or("?"),
            trial["epoch"],
            trial["epochs"],
            metric(trial, "val_accuracy"),
            trial["worker"].as_str().unwrap_or("-"),
        ));
    }
    lines
}

/// The job as a status line and a trial table.
pub fn render(job: &Value) -> String {
    let summary = &job["trials_summary"];
    let trials = job["trials"].as_array().cloned().unwrap_or_default();
    let best = trials
        .iter()
        .filter(|t| t["metrics"]["val_accuracy"].is_number())
        .max_by(|a, b| {
            let score = |t: &Value| t["metrics"]["val_accuracy"].as_f64().unwrap_or(0.0);
            score(a).total_cmp(&score(b))
        })
        .map(|t| format!("trial {} at {}", t["ordinal"], metric(t, "val_accuracy")))
        .unwrap_or_else(|| "-".into());
    let mut out = format!(
        "job {} [{}]  trials: {} queued, {} running, {} done ({} failed, {} cancelled)  best: {}\n",
        job["id"].as_str().unwrap_or("?"),
        job["status"].as_str().unwrap_or("?"),
        summary["queued"],
        summary["running"],
        summary["succeeded"].as_u64().unwrap_or(0) + summary["failed"].as_u64().unwrap_or(0),
        summary["failed"],
        summary["cancelled"],
        best,
    );
    let rows = trials
        .iter()
        .map(|t| {
            let params = t["params"].as_object().map(|p| {
                ["learning_rate", "batch_size", "hidden", "dropout"]
                    .iter()
                    .filter_map(|k| p.get(*k).map(|v| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            vec![
                t["ordinal"].to_string(),
                t["rung"].to_string(),
                t["status"].as_str().unwrap_or("?").to_owned(),
                format!("{}/{}", t["epoch"], t["epochs"]),
                metric(t, "val_accuracy"),
                metric(t, "val_loss"),
                t["worker"].as_str().unwrap_or("-").to_owned(),
                params.unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(&["trial", "rung", "status", "epoch", "val_acc", "val_loss", "worker", "params"], rows));
    if let Some(version) = job["registered_version"].as_i64() {
        out.push_str(&format!("registered {} version {version}", job["model"].as_str().unwrap_or("?")));
        if let Some(reason) = job["promotion"]["reason"].as_str() {
            let promoted = if job["promotion"]["promoted"] == true { "promoted to production" } else { "not promoted" };
            out.push_str(&format!(" ({promoted}: {reason})"));
        }
        out.push('\n');
    }
    if let Some(error) = job["error"].as_str() {
        out.push_str(&format!("error: {error}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_lists_fixed_values_and_distributions() {
        assert_eq!(
            parse_param("learning_rate=0.001,0.01").expect("valid"),
            ("learning_rate".into(), json!([0.001, 0.01]))
        );
        assert_eq!(parse_param("epochs=5").expect("valid"), ("epochs".into(), json!(5)));
        assert_eq!(parse_param("optimizer=adamw,sgd").expect("valid"), ("optimizer".into(), json!(["adamw", "sgd"])));
        assert_eq!(
            parse_param("learning_rate=log_uniform:0.0001:0.1").expect("valid"),
            ("learning_rate".into(), json!({"log_uniform": [0.0001, 0.1]}))
        );
        assert!(parse_param("no_equals").is_err());
    }
}
