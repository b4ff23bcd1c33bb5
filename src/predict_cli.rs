//! `sluice predict MODEL FILES…`: scores images with a served model and prints the top classes.

use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

use crate::client::{Api, table};

pub async fn run(
    api: &Api,
    model: &str,
    files: &[PathBuf],
    alias: Option<&str>,
    version: Option<i32>,
    top_k: usize,
) -> anyhow::Result<Value> {
    let mut form = reqwest::multipart::Form::new();
    for path in files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        form = form.part("file", reqwest::multipart::Part::bytes(bytes).file_name(name));
    }
    let mut query = vec![("top_k", top_k.to_string())];
    if let Some(alias) = alias {
        query.push(("alias", alias.to_owned()));
    }
    if let Some(version) = version {
        query.push(("version", version.to_string()));
    }
    api.post_form(&["v1", "models", model, "predict"], &query, form).await
}

/// One row per file: its top classes with scores, and the prediction id (for feedback).
pub fn render(answer: &Value, files: &[PathBuf]) -> String {
    let rows = answer["predictions"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(files)
        .map(|(prediction, file)| {
            let top = prediction["top"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| format!("{} {:.3}", t["label"].as_str().unwrap_or("?"), t["score"].as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>()
                .join(", ");
            vec![file.display().to_string(), top, prediction["id"].as_str().unwrap_or("").to_owned()]
        })
        .collect();
    format!(
        "{} version {}\n{}",
        answer["model"].as_str().unwrap_or("?"),
        answer["version"],
        table(&["file", "top classes", "prediction id"], rows)
    )
}
