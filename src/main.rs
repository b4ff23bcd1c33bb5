//! The `sluice` command line: parses arguments, loads configuration, calls the libraries.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::{Application, Service, doctor, ensure_admin_token, tail};
use sluice_core::{Config, Context, config::DEFAULTS_TOML, migrate, shutdown, telemetry};

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "Kafka-native MLOps: ingest, preprocess, train, register, serve.")]
struct Cli {
    /// A TOML configuration file; `SLUICE_*` environment variables override it.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every service in one process on one listener (default 127.0.0.1:8080).
    Up,
    /// Run one service alone, to scale it out.
    Serve {
        #[arg(value_enum)]
        service: Service,
    },
    /// Prepare the dependencies: apply database migrations, create topics and the bucket.
    Migrate,
    /// Check every dependency and say what is wrong and how to fix it.
    Doctor,
    /// Print a topic's events as JSON lines (`<topic>` is joined to the configured prefix).
    Tail {
        topic: String,
        /// Join this consumer group and commit what was printed.
        #[arg(long)]
        group: Option<String>,
        /// Stop after this many messages.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Show configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// The effective configuration, secrets redacted.
    Show,
    /// The annotated built-in defaults (a starting point for a config file).
    Defaults,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)]
async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Config { what: ConfigCommand::Defaults } = cli.command {
        print!("{DEFAULTS_TOML}");
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up => {
            telemetry::init_logging(&config.telemetry);
            let app = Application::build(config, &Service::ALL).await?;
            let token = ensure_admin_token(app.context()).await?;
            tracing::info!(url = %format!("http://{}", app.local_addr()), token_file = %token.display(), "sluice is up");
            app.run_until_stopped(shutdown::on_signal()).await?;
        }
        Command::Serve { service } => {
            telemetry::init_logging(&config.telemetry);
            let app = Application::build(config, &[service]).await?;
            app.run_until_stopped(shutdown::on_signal()).await?;
        }
        Command::Migrate => {
            telemetry::init_logging(&config.telemetry);
            let ctx = Context::new(config).await?;
            ctx.bootstrap().await.context("preparing dependencies")?;
            let pending = migrate::pending(&ctx.db).await?;
            println!("schema current ({} pending), topics and bucket present", pending.len());
        }
        Command::Doctor => {
            println!("sluice doctor: checking the dependencies of this configuration");
            let findings = doctor::diagnose(&config).await;
            let mut failed = 0;
            for finding in &findings {
                if finding.ok {
                    println!("  ok    {}", finding.what);
                } else {
                    failed += 1;
                    println!("  FAIL  {}", finding.what);
                    println!("        fix: {}", finding.fix);
                }
            }
            if failed > 0 {
                println!("{failed} problem(s) found");
                return Ok(ExitCode::FAILURE);
            }
            println!("everything Sluice needs is reachable");
        }
        Command::Tail { topic, group, limit } => {
            tail::run(&config, &topic, group, limit, shutdown::on_signal()).await?;
        }
        Command::Config { what: ConfigCommand::Show } => println!("{config:#?}"),
        Command::Config { what: ConfigCommand::Defaults } => unreachable!("handled before loading"),
    }
    Ok(ExitCode::SUCCESS)
}
