//! The `sluice` command line: parses arguments, loads configuration, calls the libraries.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice::{
    Application, Service, bench, bench_pipeline, bench_predict, client, doctor, ensure_admin_token, generate,
    models_cli, predict_cli, push, tail, train_cli,
};
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
    /// Upload files or folders to a dataset (a folder of sub-folders: each sub-folder is a label).
    Push {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, default_value = "default")]
        dataset: String,
        /// Label for files not under a label sub-folder.
        #[arg(long)]
        label: Option<String>,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Attempts per file when the server answers 502-504 or the connection fails.
        #[arg(long, default_value_t = 6)]
        attempts: u32,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Models in the registry: list, show, promote, rollback, history.
    Models {
        #[command(subcommand)]
        what: models_cli::Command,
        /// Print the API's JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Start a training job and follow its trials live (or --watch / --cancel one).
    Train {
        #[command(flatten)]
        args: train_cli::TrainArgs,
        /// Print the final job as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Score images with a served model (production unless --alias or --version).
    Predict {
        model: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, conflicts_with = "version")]
        alias: Option<String>,
        #[arg(long)]
        version: Option<i32>,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Write a labelled synthetic dataset: `generate shapes DIR` (DIR/<label>/<n>.png).
    Generate {
        #[command(subcommand)]
        what: GenerateCommand,
    },
    /// Load generators; they print what they measured.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// API tokens: `token create --name N --scope predict,train` prints a new token once.
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Show configuration.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
}

/// Where a client command finds the API.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Base URL of the API; defaults to http://<http.addr>.
    #[arg(long, global = true)]
    url: Option<String>,
    /// Bearer token (or `SLUICE_TOKEN`); defaults to the local admin token file (`sluice up`
    /// writes it).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl ServerArgs {
    fn resolve(&self, config: &Config) -> anyhow::Result<(String, String)> {
        let url = self.url.clone().unwrap_or_else(|| format!("http://{}", config.http.addr));
        let token = match &self.token {
            Some(token) => token.clone(),
            None => std::fs::read_to_string(config.token_path())
                .with_context(|| {
                    format!("reading {} (start `sluice up` once, or pass --token)", config.token_path().display())
                })?
                .trim()
                .to_owned(),
        };
        Ok((url, token))
    }
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Predictions/s and latency with and without micro-batching, and model-only time per image.
    Predict {
        /// An existing model to serve; by default a `bench-cnn64` version is registered.
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
        concurrency: Vec<usize>,
        /// Requests per phase.
        #[arg(long, default_value_t = 3000)]
        requests: usize,
        /// Largest micro-batch in the batching phases.
        #[arg(long, default_value_t = 32)]
        max_batch: usize,
    },
    /// Accepted-to-processed rate of ingest + preprocess next to decode+resize alone, one run.
    Pipeline {
        #[arg(long, default_value_t = 150)]
        images: usize,
        #[arg(long, default_value_t = 1920)]
        width: u32,
        #[arg(long, default_value_t = 1080)]
        height: u32,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// Upload rate and latency of POST /v1/media next to raw S3 PUTs of the same bodies.
    Ingest {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 3000)]
        requests: usize,
        /// Body size in bytes (unique, incompressible JPEGs).
        #[arg(long, default_value_t = 64 * 1024)]
        size: usize,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
enum GenerateCommand {
    /// Photo-like JPEGs (gradients and discs, as `sluice bench pipeline` uses), all labelled
    /// `photo`: DIR/photo/NNNNN.jpg.
    Photos {
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        count: usize,
        #[arg(long, default_value_t = 1920)]
        width: u32,
        #[arg(long, default_value_t = 1080)]
        height: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Coloured shapes on noisy backgrounds, one class per shape.
    Shapes {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        classes: usize,
        #[arg(long, default_value_t = 300)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Added to every pixel (a brighter or darker world).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        shift: i16,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Creates a token (stored hashed) and prints it; it cannot be shown again.
    Create {
        /// Who or what the token is for (recorded as the actor of what it does).
        #[arg(long)]
        name: String,
        /// Scopes: ingest, predict, train, admin (admin implies all).
        #[arg(long, value_delimiter = ',', required = true)]
        scope: Vec<sluice_core::auth::Scope>,
    },
    /// Lists every token (id, name, scopes, created, revoked); never the tokens themselves.
    List,
    /// Revokes a token by id; every process refuses it within a few seconds.
    Revoke {
        /// The token's id (`sluice token list`).
        id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// The effective configuration as TOML (files, then environment), secrets redacted.
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
        Command::Push { paths, dataset, label, concurrency, attempts, server } => {
            let (url, token) = server.resolve(&config)?;
            let jobs = push::collect(&paths, label.as_deref())?;
            let bytes: u64 = jobs.iter().map(|j| j.bytes).sum();
            println!("pushing {} file(s), {bytes} bytes, to dataset {dataset} at {url}", jobs.len());
            let bar = push::progress_bar(&jobs);
            let options = push::Push { url, token, dataset, concurrency, attempts };
            let results = push::run(&options, jobs, &bar).await;
            bar.finish();
            let summary = push::Summary::of(&results);
            let rejected_count = summary.rejected_count();
            println!("accepted {}, duplicate {}, rejected {rejected_count}", summary.accepted, summary.duplicates);
            for (code, files) in &summary.rejected {
                println!("  {code} ({}):", files.len());
                for (path, message) in files.iter().take(5) {
                    println!("    {}: {message}", path.display());
                }
                if files.len() > 5 {
                    println!("    ... and {} more", files.len() - 5);
                }
            }
            if rejected_count > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench { what: BenchCommand::Pipeline { images, width, height, concurrency } } => {
            let options = bench_pipeline::Options { images, width, height, concurrency };
            for line in bench_pipeline::pipeline(&config, &options).await? {
                println!("{line}");
            }
        }
        Command::Bench { what: BenchCommand::Ingest { concurrency, requests, size, server } } => {
            let (url, token) = server.resolve(&config)?;
            println!("bench ingest: {requests} unique {size}-byte JPEGs, concurrency {concurrency}, server {url}");
            let options = bench::Options { url, token, concurrency, requests, size };
            let (raw, ingest) = bench::ingest(&config, &options).await?;
            println!("{raw}");
            println!("{ingest}");
            println!("ingest / raw PUT rate: {:.2}", ingest.rate() / raw.rate());
        }
        Command::Bench { what: BenchCommand::Predict { model, concurrency, requests, max_batch } } => {
            println!(
                "bench predict: {requests} requests per phase, concurrencies {concurrency:?}, max batch {max_batch}"
            );
            let options = bench_predict::Options { model, concurrencies: concurrency, requests, max_batch };
            for line in bench_predict::predict(&config, &options).await? {
                println!("{line}");
            }
        }
        Command::Predict { model, files, alias, version, top_k, json, server } => {
            let (url, token) = server.resolve(&config)?;
            let api = client::Api::new(&url, &token);
            let answer = predict_cli::run(&api, &model, &files, alias.as_deref(), version, top_k).await?;
            print!("{}", if json { format!("{answer}\n") } else { predict_cli::render(&answer, &files) });
        }
        Command::Models { what, json, server } => {
            let (url, token) = server.resolve(&config)?;
            print!("{}", models_cli::run(what, &client::Api::new(&url, &token), json).await?);
        }
        Command::Train { args, json, server } => {
            let (url, token) = server.resolve(&config)?;
            let job = train_cli::run(&args, &client::Api::new(&url, &token)).await?;
            if json {
                println!("{job}");
            }
            if job["status"] == "failed" {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Generate { what: GenerateCommand::Photos { dir, count, width, height, seed } } => {
            let folder = dir.join("photo");
            std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
            for i in 0..count as u64 {
                let jpeg = bench_pipeline::photo(width, height, seed.wrapping_mul(1_000_003).wrapping_add(i))?;
                let path = folder.join(format!("{i:05}.jpg"));
                std::fs::write(&path, jpeg).with_context(|| format!("writing {}", path.display()))?;
            }
            println!("wrote {count} {width}x{height} JPEGs to {}", folder.display());
        }
        Command::Generate { what: GenerateCommand::Shapes { dir, classes, count, size, seed, shift } } => {
            let labels = generate::shapes(&dir, classes, count, size, seed, shift)?;
            println!("wrote {count} {size}x{size} images of {} to {}", labels.join(", "), dir.display());
        }
        Command::Token { what: TokenCommand::Create { name, scope } } => {
            let ctx = Context::new(config).await?;
            migrate::run(&ctx.db).await.context("applying migrations")?;
            println!("{}", sluice_core::auth::create_token(&ctx.db, &name, &scope).await?);
        }
        Command::Token { what: TokenCommand::List } => {
            let ctx = Context::new(config).await?;
            migrate::run(&ctx.db).await.context("applying migrations")?;
            println!("{:<36}  {:<24}  {:<22}  {:<20}  REVOKED", "ID", "NAME", "SCOPES", "CREATED");
            for token in sluice_core::auth::list_tokens(&ctx.db).await? {
                println!(
                    "{:<36}  {:<24}  {:<22}  {:<20}  {}",
                    token.id,
                    token.name,
                    token.scopes.join(","),
                    token.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    token.revoked_at.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                );
            }
        }
        Command::Token { what: TokenCommand::Revoke { id } } => {
            let ctx = Context::new(config).await?;
            migrate::run(&ctx.db).await.context("applying migrations")?;
            match sluice_core::auth::revoke_token(&ctx.db, id).await? {
                Some(token) => {
                    println!("revoked {} ({}); refused everywhere within a few seconds", token.id, token.name)
                }
                None => anyhow::bail!("no token has id {id} (see `sluice token list`)"),
            }
        }
        Command::Config { what: ConfigCommand::Show } => print!("{}", config.to_toml()),
        Command::Config { what: ConfigCommand::Defaults } => unreachable!("handled before loading"),
    }
    Ok(ExitCode::SUCCESS)
}
