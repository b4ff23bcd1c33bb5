//! `sluice doctor`: checks every dependency and says what is wrong and how to fix it.

use std::time::Duration;

use secrecy::ExposeSecret;
use sluice_core::{Config, Context, config::redact_url, http, migrate, tools, topics::Topic};

/// One finding.
#[derive(Debug)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    /// What to do about it; empty when fine.
    pub fix: String,
}

const START_STACK: &str = "start the local stack with `deploy/local/stack.sh up` (it installs what is missing)";

/// Runs every check. Never fails itself: each problem becomes a finding.
pub async fn diagnose(config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut push = |ok: bool, what: String, fix: String| findings.push(Finding { ok, what, fix });
    let ctx = match Context::new(config.clone()).await {
        Ok(ctx) => ctx,
        Err(err) => {
            push(false, format!("cannot build clients: {err}"), "check the configuration".into());
            return findings;
        }
    };
    let readiness = http::probe(&ctx).await;
    for (name, result) in &readiness.checks {
        match (*name, result) {
            (_, Ok(detail)) => push(true, format!("{name}: {detail}"), String::new()),
            ("kafka", Err(e)) => push(
                false,
                format!("kafka: {e}"),
                local_hint(
                    &config.kafka.brokers == "127.0.0.1:9092",
                    "nisshi",
                    "set SLUICE_KAFKA_BROKERS to your cluster",
                ),
            ),
            ("s3", Err(e)) => push(
                false,
                format!("s3 ({}): {e}", config.s3.endpoint),
                local_hint(
                    config.s3.endpoint == "http://127.0.0.1:3900",
                    "garage",
                    "check SLUICE_S3_ENDPOINT, SLUICE_S3_BUCKET and the credentials",
                ),
            ),
            (_, Err(e)) => push(
                false,
                format!("postgres ({}): {e}", redact_url(config.database.url.expose_secret())),
                format!("{START_STACK}, or set SLUICE_DATABASE_URL to a reachable server"),
            ),
        }
    }
    let postgres_up = readiness.checks.iter().any(|(n, r)| *n == "postgres" && r.is_ok());
    if postgres_up {
        match migrate::pending(&ctx.db).await {
            Ok(pending) if pending.is_empty() => push(true, "schema: all migrations applied".into(), String::new()),
            Ok(pending) => {
                push(false, format!("schema: migrations {pending:?} not applied"), "run `sluice migrate`".into())
            }
            Err(e) => push(false, format!("schema: {e}"), "run `sluice migrate`".into()),
        }
    }
    let kafka_up = readiness.checks.iter().any(|(n, r)| *n == "kafka" && r.is_ok());
    if kafka_up {
        let producer = ctx.producer.clone();
        let wanted: Vec<String> = Topic::ALL.iter().map(|t| ctx.topic(*t).to_string()).collect();
        let metadata = tokio::task::spawn_blocking(move || producer.fetch_metadata(None, Duration::from_secs(5))).await;
        if let Ok(Ok(metadata)) = metadata {
            let missing: Vec<&String> =
                wanted.iter().filter(|w| !metadata.topics().iter().any(|t| t.name() == w.as_str())).collect();
            if missing.is_empty() {
                push(true, format!("topics: all {} present", wanted.len()), String::new());
            } else {
                push(
                    false,
                    format!("topics missing: {missing:?}"),
                    "`sluice up` or `sluice migrate` creates them".into(),
                );
            }
        }
    }
    let ffmpeg = tools::find("ffmpeg").is_some();
    push(
        ffmpeg,
        if ffmpeg { "ffmpeg: on PATH".into() } else { "ffmpeg: not found (video frame extraction needs it)".into() },
        if ffmpeg { String::new() } else { "apt-get install ffmpeg (or `deploy/local/stack.sh up`)".into() },
    );
    let token = config.token_path();
    let has_token = token.exists();
    push(
        has_token,
        if has_token {
            format!("token: {}", token.display())
        } else {
            format!("token: {} does not exist", token.display())
        },
        if has_token { String::new() } else { "`sluice up` creates the local admin token on first start".into() },
    );
    findings
}

fn local_hint(is_local: bool, tool: &str, remote: &str) -> String {
    if !is_local {
        return remote.into();
    }
    if tools::find(tool).is_some() {
        format!("{tool} is installed but not answering: {START_STACK}")
    } else {
        format!("{tool} is not installed; {START_STACK}")
    }
}
