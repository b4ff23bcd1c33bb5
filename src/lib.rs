//! The `sluice` application: composes the service crates into one process (`sluice up`) or runs
//! one of them alone (`sluice serve <service>`), behind one HTTP listener with the ops endpoints.

pub mod bench;
pub mod bench_pipeline;
pub mod bench_predict;
pub mod client;
pub mod doctor;
pub mod generate;
pub mod models_cli;
pub mod predict_cli;
pub mod push;
pub mod tail;
pub mod train_cli;

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use axum::Router;
use sluice_core::{Config, Context, Shutdown, api_doc, auth, http};
use tokio::{net::TcpListener, task::JoinHandle};
use utoipa_axum::router::OpenApiRouter;

/// How long a stopping process waits for all of its workers together to finish what they hold.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// One of Sluice's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Ingest,
    Preprocess,
    Trainer,
    Registry,
    Inference,
    Webhooks,
}

impl Service {
    pub const ALL: [Service; 6] = [
        Service::Ingest,
        Service::Preprocess,
        Service::Trainer,
        Service::Registry,
        Service::Inference,
        Service::Webhooks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Service::Ingest => sluice_ingest::NAME,
            Service::Preprocess => sluice_preprocess::NAME,
            Service::Trainer => sluice_trainer::NAME,
            Service::Registry => sluice_registry::NAME,
            Service::Inference => sluice_inference::NAME,
            Service::Webhooks => sluice_webhooks::NAME,
        }
    }

    /// The service's routes and the workers to start beside them (relays, consumers, sweepers).
    fn build(self, ctx: &Context) -> Parts {
        let workers = |spawn: fn(&Context, &Shutdown) -> Vec<JoinHandle<()>>| -> Workers {
            let ctx = ctx.clone();
            Box::new(move |shutdown: &Shutdown| spawn(&ctx, shutdown))
        };
        match self {
            Service::Ingest => {
                Parts { router: sluice_ingest::router(ctx.clone()), workers: workers(sluice_ingest::spawn_workers) }
            }
            Service::Preprocess => Parts {
                router: sluice_preprocess::router(ctx.clone()),
                workers: workers(sluice_preprocess::spawn_workers),
            },
            Service::Trainer => {
                Parts { router: sluice_trainer::router(ctx.clone()), workers: workers(sluice_trainer::spawn_workers) }
            }
            Service::Registry => {
                Parts { router: sluice_registry::router(ctx.clone()), workers: workers(sluice_registry::spawn_workers) }
            }
            Service::Inference => {
                // Its routes and workers share one state (loaded models, the prediction recorder).
                let inference = sluice_inference::Inference::new(ctx.clone());
                Parts {
                    router: inference.router(),
                    workers: Box::new(move |shutdown| inference.spawn_workers(shutdown)),
                }
            }
            Service::Webhooks => {
                Parts { router: sluice_webhooks::router(ctx.clone()), workers: workers(sluice_webhooks::spawn_workers) }
            }
        }
    }
}

type Workers = Box<dyn FnOnce(&Shutdown) -> Vec<JoinHandle<()>> + Send>;

/// What a service contributes to a process.
struct Parts {
    /// Its routes, each with its OpenAPI description.
    router: OpenApiRouter,
    workers: Workers,
}

/// A built, bound process, ready to run. Bind port 0 in tests and read [`Application::local_addr`].
pub struct Application {
    listener: TcpListener,
    router: Router,
    ctx: Context,
    services: Vec<Service>,
    workers: Vec<Workers>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("services", &self.services).finish_non_exhaustive()
    }
}

impl Application {
    /// Connects to and prepares every dependency (migrations, topics, bucket), then binds.
    pub async fn build(config: Config, services: &[Service]) -> anyhow::Result<Self> {
        let ctx = Context::new(config).await.context("building clients")?;
        ctx.bootstrap().await.context("preparing dependencies (run `sluice doctor` to see what is missing)")?;
        let published = api_doc::Published::default();
        let mut api = OpenApiRouter::with_openapi(api_doc::base())
            .merge(http::ops_router(ctx.clone()))
            .merge(sluice_console::router(ctx.clone()))
            .merge(api_doc::router(published.clone()));
        if !services.is_empty() {
            api = api.merge(sluice_core::tokens_api::router(ctx.clone()));
        }
        let mut workers = Vec::new();
        for service in services {
            let parts = service.build(&ctx);
            api = api.merge(parts.router);
            workers.push(parts.workers);
        }
        // Every route was registered with its description: the spec is complete by construction.
        let (router, spec) = api.split_for_parts();
        published.publish(&api_doc::finish(spec));
        // A handler bug answers 500 in the API's error shape instead of dropping the connection.
        let router = router.layer(tower_http::catch_panic::CatchPanicLayer::custom(handler_panicked));
        let router = http::with_limits(http::with_request_metrics(router), &ctx.config.http)
            .layer(tower_http::trace::TraceLayer::new_for_http());
        let listener = TcpListener::bind(ctx.config.http.addr)
            .await
            .with_context(|| format!("binding {}", ctx.config.http.addr))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            services = ?services.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "listening"
        );
        Ok(Self { listener, router, ctx, services: services.to_vec(), workers })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Serves and runs the services' workers until `shutdown` fires; then lets in-flight requests
    /// finish, stops the workers (all draining at once, within [`DRAIN_DEADLINE`]), and flushes
    /// the producer. Nothing runs before this is called.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let workers_stop = Shutdown::new();
        let mut workers: Vec<_> = self.workers.into_iter().flat_map(|spawn| spawn(&workers_stop)).collect();
        workers.push(tokio::spawn(watch_dependencies(self.ctx.clone(), workers_stop.clone())));
        // One outbox relay per process, whatever services it runs: every service writes outbox
        // rows, and several relays in one process would only hold more connections (a relay
        // keeps one while Kafka is slow to acknowledge).
        if !self.services.is_empty() {
            workers.push(tokio::spawn(sluice_core::outbox::run(self.ctx.clone(), workers_stop.clone())));
            let (db, config) = (self.ctx.db.clone(), self.ctx.config.database.clone());
            workers.push(tokio::spawn(sluice_core::idle::share_doorbells(db, config, workers_stop.clone())));
        }
        http::serve(self.listener, self.router, &self.ctx.config.http, shutdown.cancelled_owned()).await;
        workers_stop.cancel();
        // Every worker drains at once, against one deadline for them all.
        let total = workers.len();
        let mut draining: futures::stream::FuturesUnordered<_> = workers.into_iter().collect();
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            while let Some(ended) = futures::StreamExt::next(&mut draining).await {
                if let Err(err) = ended
                    && err.is_panic()
                {
                    tracing::error!(error = %err, "a worker panicked");
                }
            }
        });
        if drained.await.is_err() {
            tracing::warn!(left = draining.len(), total, deadline = ?DRAIN_DEADLINE, "workers still draining at the deadline; stopping them");
            draining.iter().for_each(JoinHandle::abort);
        }
        let producer = self.ctx.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10)))
            .await?
            .context("flushing Kafka producer on shutdown")?;
        tracing::info!("stopped");
        Ok(())
    }
}

fn handler_panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let panicked: Box<dyn std::error::Error> = format!("a request handler panicked: {message}").into();
    http::ApiError::internal(panicked.as_ref()).into_response()
}

/// Probes Kafka, S3 and PostgreSQL every 10 s so `sluice_dependency_up` stays current between
/// `/readyz` calls (dashboards and alerts read it).
async fn watch_dependencies(ctx: Context, shutdown: Shutdown) {
    loop {
        let _ = http::probe(&ctx).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

/// Makes sure the local admin token file holds a valid token, creating one on first start.
/// Returns the file's path. The file is written with mode 0600.
pub async fn ensure_admin_token(ctx: &Context) -> anyhow::Result<std::path::PathBuf> {
    let path = ctx.config.token_path();
    if let Ok(existing) = std::fs::read_to_string(&path)
        && auth::verify(&ctx.db, existing.trim()).await?.is_some()
    {
        return Ok(path);
    }
    let token = auth::create_token(&ctx.db, "local-admin", &[auth::Scope::Admin]).await?;
    write_private(&path, &token).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "created local admin token");
    Ok(path)
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
