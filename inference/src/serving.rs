//! What this process serves: model versions loaded on first use (artifact verified against its
//! sha256) and kept, the alias → version map (resolved from PostgreSQL on first use, then moved
//! by `models.events`), each version's micro-batcher, and per-model routing
//! (canary, shadow).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sluice_core::{
    Context,
    capture::{self, CapturePolicy, MediaCaptured, capture_key},
    db::DbError,
    events::Envelope,
    models::{self, AliasName, ModelName, ModelVersion, RegistryError},
    outbox,
    reference::Reference,
    s3,
    topics::Topic,
    training::RetrainRequested,
};
use sluice_nn::Network;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::{microbatch::Batcher, store};

/// Which version a request wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Alias(AliasName),
    Version(i32),
}

/// Why a model could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("model {0} does not exist")]
    UnknownModel(String),
    #[error("model {model} has no alias {alias}")]
    UnknownAlias { model: String, alias: String },
    #[error("model {model} has no version {version}")]
    UnknownVersion { model: String, version: i32 },
    /// The artifact is missing, tampered with or unreadable: the version cannot be loaded.
    #[error("model {model} version {version} cannot be loaded: {reason}")]
    Unloadable { model: String, version: i32, reason: String },
    #[error("{0}")]
    Unavailable(String),
}

impl From<RegistryError> for ServeError {
    fn from(err: RegistryError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

impl From<deadpool_postgres::PoolError> for ServeError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(sluice_core::error_chain(&err))
    }
}

impl From<DbError> for ServeError {
    fn from(err: DbError) -> Self {
        Self::Unavailable(sluice_core::error_chain(&err))
    }
}

/// One loaded version: its registry record, network and batcher.
#[derive(Debug)]
pub struct LoadedVersion {
    pub version: ModelVersion,
    pub batcher: Batcher,
    /// Softmax temperature fitted at training time (calibrated scores).
    pub temperature: f64,
}

/// Traffic routing of one model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Routing {
    pub canary_alias: Option<String>,
    pub canary_percent: f64,
    pub shadow_alias: Option<String>,
}

type VersionKey = (String, i32);
type AliasKey = (String, String);

/// Where a served alias points, and the revision of the model's alias state that said so: a
/// state older than the one an alias follows never moves it, however late it arrives or
/// however long its version took to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pointer {
    version: i32,
    revision: i64,
}

impl Pointer {
    /// Whether the state at `revision` may move an alias that follows this pointer (the same
    /// revision `again`: a resync).
    fn yields_to(self, revision: i64, again: bool) -> bool {
        self.revision < revision || (self.revision == revision && again)
    }
}

/// A version this process has loaded or is loading, and when a request last used it.
#[derive(Debug)]
struct Slot {
    cell: Arc<OnceCell<Arc<LoadedVersion>>>,
    last_used: Instant,
}

/// Everything this process serves.
#[derive(Debug)]
pub struct Served {
    pub ctx: Context,
    /// Loaded versions, bounded by `inference.max_loaded_versions` and `max_loaded_bytes`
    /// (least recently used first out); only versions that exist ever get a slot kept.
    versions: Mutex<HashMap<VersionKey, Slot>>,
    /// Served aliases, each with the model revision whose state it follows.
    aliases: RwLock<HashMap<AliasKey, Pointer>>,
    routing: Brief<Routing>,
    captures: Brief<Option<CapturePolicy>>,
    /// Whether a version's last cluster-wide drift verdict is drift, by `model/version`.
    drifting: Brief<bool>,
    /// Captured inputs written to S3 but not yet enqueued (bounded: beyond it they are dropped).
    captures_in_flight: AtomicUsize,
    last_retrain: Mutex<HashMap<String, Instant>>,
    /// Versions whose artifact was read and refused, not read again until their back-off ends.
    refused: Mutex<HashMap<VersionKey, Refusal>>,
}

/// A version whose artifact was read whole and refused (its bytes differ from the registered
/// sha256, or its weights or reference statistics are unreadable). Reading it again reads the
/// same bytes, so neither the reconciler nor requests naming the version read it again before
/// `until`: the back-off doubles from [`REFUSAL_BACKOFF_FIRST`] to [`REFUSAL_BACKOFF_MAX`] with
/// each refusal. A missing artifact costs one request and is not backed off.
#[derive(Debug)]
struct Refusal {
    reason: String,
    until: Instant,
    refusals: u32,
}

const REFUSAL_BACKOFF_FIRST: Duration = Duration::from_secs(30);
const REFUSAL_BACKOFF_MAX: Duration = Duration::from_secs(600);
/// Most refused versions remembered; past it, those whose back-off ended are forgotten, then all.
const MAX_REFUSALS: usize = 1024;

impl Refusal {
    fn backoff(refusals: u32) -> Duration {
        REFUSAL_BACKOFF_FIRST.saturating_mul(1 << refusals.saturating_sub(1).min(16)).min(REFUSAL_BACKOFF_MAX)
    }
}

/// One served input a capture policy keeps.
#[derive(Debug)]
pub struct Captured {
    pub prediction_id: Uuid,
    pub version: i32,
    pub bytes: axum::body::Bytes,
    pub predicted: String,
    pub confidence: f64,
    pub why: &'static str,
}

/// Most captured inputs waiting for S3 and the outbox at once, per process.
const MAX_CAPTURES_IN_FLIGHT: usize = 64;

/// How long routing settings (and capture policies, and drift states) are cached.
const ROUTING_TTL: Duration = Duration::from_secs(2);
/// Most models whose routing is cached; past it, expired entries are dropped, then all.
const MAX_ROUTING_ENTRIES: usize = 1024;

/// Per-model settings read from PostgreSQL and kept [`ROUTING_TTL`], at most
/// [`MAX_ROUTING_ENTRIES`] of them.
#[derive(Debug)]
struct Brief<V>(Mutex<HashMap<String, (Instant, V)>>);

/// Keeps a bounded map under `max` entries before one more is added: at `max`, the entries
/// `live` no longer holds for are dropped, then, if that is not enough, all.
fn make_room<K, V>(map: &mut HashMap<K, V>, max: usize, mut live: impl FnMut(&V) -> bool) {
    if map.len() >= max {
        map.retain(|_, value| live(value));
        if map.len() >= max {
            map.clear();
        }
    }
}

impl<V> Default for Brief<V> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<V: Clone> Brief<V> {
    fn get(&self, key: &str) -> Option<V> {
        let cached = self.0.lock().expect("cache lock");
        cached.get(key).filter(|(at, _)| at.elapsed() < ROUTING_TTL).map(|(_, value)| value.clone())
    }

    fn put(&self, key: &str, value: V) {
        let mut cached = self.0.lock().expect("cache lock");
        make_room(&mut cached, MAX_ROUTING_ENTRIES, |(at, _)| at.elapsed() < ROUTING_TTL);
        cached.insert(key.to_owned(), (Instant::now(), value));
    }

    fn forget(&self, key: &str) {
        self.0.lock().expect("cache lock").remove(key);
    }
}

impl Served {
    pub fn new(ctx: Context) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            versions: Mutex::default(),
            aliases: RwLock::default(),
            routing: Brief::default(),
            captures: Brief::default(),
            drifting: Brief::default(),
            captures_in_flight: AtomicUsize::new(0),
            last_retrain: Mutex::default(),
            refused: Mutex::default(),
        })
    }

    /// The loaded version a request resolves to.
    pub async fn resolve(&self, model: &ModelName, target: &Target) -> Result<Arc<LoadedVersion>, ServeError> {
        let version = match target {
            Target::Version(version) => *version,
            Target::Alias(alias) => self.alias_version(model, alias).await?,
        };
        self.load(model, version).await
    }

    /// The version `target` names, without loading it (the same 404s as [`Self::resolve`]).
    pub async fn version_of(&self, model: &ModelName, target: &Target) -> Result<i32, ServeError> {
        match target {
            Target::Alias(alias) => self.alias_version(model, alias).await,
            Target::Version(version) => match self.labels(model, *version).await? {
                Some(_) => Ok(*version),
                None => Err(if models::exists(&self.ctx.db.get().await?, model).await? {
                    ServeError::UnknownVersion { model: model.to_string(), version: *version }
                } else {
                    ServeError::UnknownModel(model.to_string())
                }),
            },
        }
    }

    async fn alias_version(&self, model: &ModelName, alias: &AliasName) -> Result<i32, ServeError> {
        let key = (model.as_str().to_owned(), alias.as_str().to_owned());
        if let Some(pointer) = self.aliases.read().expect("alias lock").get(&key) {
            return Ok(pointer.version);
        }
        let pointer = self.stored_alias(model, alias).await?;
        if self.point(&key, pointer, true) {
            metrics::gauge!("sluice_inference_served_version", "model" => model.to_string(), "alias" => alias.to_string())
                .set(f64::from(pointer.version));
        }
        Ok(pointer.version)
    }

    /// Points `key` at `next` unless it already follows a newer state (the same one only
    /// `again`); whether it did.
    fn point(&self, key: &AliasKey, next: Pointer, again: bool) -> bool {
        let mut aliases = self.aliases.write().expect("alias lock");
        if aliases.get(key).is_some_and(|current| !current.yields_to(next.revision, again)) {
            return false;
        }
        aliases.insert(key.clone(), next);
        true
    }

    /// Where `alias` points in PostgreSQL now, bypassing this process's alias map.
    async fn stored_alias(&self, model: &ModelName, alias: &AliasName) -> Result<Pointer, ServeError> {
        let client = self.ctx.db.get().await?;
        let Some(state) = models::alias_state(&client, model).await? else {
            return Err(ServeError::UnknownModel(model.to_string()));
        };
        match state.aliases.get(alias.as_str()) {
            Some(&version) => Ok(Pointer { version, revision: state.revision }),
            None => Err(ServeError::UnknownAlias { model: model.to_string(), alias: alias.to_string() }),
        }
    }

    /// A version's class labels: the loaded version's when this process has it, else the
    /// registry's; `None` when the version does not exist.
    pub async fn labels(&self, model: &ModelName, version: i32) -> Result<Option<Vec<String>>, ServeError> {
        let loaded = {
            let versions = self.versions.lock().expect("versions lock");
            versions.get(&(model.as_str().to_owned(), version)).and_then(|slot| slot.cell.get().cloned())
        };
        if let Some(loaded) = loaded {
            return Ok(Some(loaded.version.labels.clone()));
        }
        let client = self.ctx.db.get().await?;
        Ok(models::get_version(&client, model, version).await?.map(|record| record.labels))
    }

    /// Loads a version once (concurrent first requests share one load); failures are not kept,
    /// so a later request tries again and a version that does not exist holds no memory.
    pub async fn load(&self, model: &ModelName, version: i32) -> Result<Arc<LoadedVersion>, ServeError> {
        let key = (model.as_str().to_owned(), version);
        if let Some(reason) = self.backing_off(&key) {
            return Err(ServeError::Unloadable { model: model.to_string(), version, reason });
        }
        let cell = {
            let mut versions = self.versions.lock().expect("versions lock");
            let slot =
                versions.entry(key.clone()).or_insert_with(|| Slot { cell: Arc::default(), last_used: Instant::now() });
            slot.last_used = Instant::now();
            slot.cell.clone()
        };
        let fresh = !cell.initialized();
        let loaded = cell.get_or_try_init(|| self.load_uncached(model, version)).await.cloned();
        match &loaded {
            Err(_) => {
                let mut versions = self.versions.lock().expect("versions lock");
                if versions.get(&key).is_some_and(|slot| Arc::ptr_eq(&slot.cell, &cell) && !cell.initialized()) {
                    versions.remove(&key);
                }
            }
            Ok(_) if fresh => {
                self.refused.lock().expect("refusal lock").remove(&key);
                self.evict(&key);
            }
            Ok(_) => {}
        }
        loaded
    }

    /// Why `key` was refused, while its back-off lasts.
    fn backing_off(&self, key: &VersionKey) -> Option<String> {
        let refused = self.refused.lock().expect("refusal lock");
        let refusal = refused.get(key).filter(|refusal| refusal.until > Instant::now())?;
        let left = refusal.until.saturating_duration_since(Instant::now()).as_secs() + 1;
        Some(format!("{} (refused {} times; not read again for {left} s)", refusal.reason, refusal.refusals))
    }

    /// Records that `key`'s artifact was read and refused, and starts or doubles its back-off.
    fn note_refusal(&self, key: &VersionKey, reason: &str) {
        let mut refused = self.refused.lock().expect("refusal lock");
        if !refused.contains_key(key) {
            let now = Instant::now();
            make_room(&mut refused, MAX_REFUSALS, |refusal| refusal.until > now);
        }
        let refusals = refused.get(key).map_or(1, |refusal| refusal.refusals.saturating_add(1));
        let backoff = Refusal::backoff(refusals);
        tracing::warn!(model = %key.0, version = key.1, refusals, backoff_secs = backoff.as_secs(),
            "not reading this version's artifact again until its back-off ends");
        refused.insert(key.clone(), Refusal { reason: reason.to_owned(), until: Instant::now() + backoff, refusals });
    }

    /// Drops the least recently used loaded versions until the bounds hold, versions no alias
    /// of this process serves first; `keep` (just loaded) stays.
    fn evict(&self, keep: &VersionKey) {
        let config = &self.ctx.config.inference;
        let aliased: std::collections::HashSet<VersionKey> =
            self.aliases.read().expect("alias lock").iter().map(|((m, _), p)| (m.clone(), p.version)).collect();
        let mut versions = self.versions.lock().expect("versions lock");
        let mut loaded: Vec<(bool, Instant, VersionKey, u64)> = versions
            .iter()
            .filter_map(|(key, slot)| {
                let size = u64::try_from(slot.cell.get()?.version.size_bytes).unwrap_or(0);
                Some((aliased.contains(key), slot.last_used, key.clone(), size))
            })
            .collect();
        loaded.sort_by_key(|entry| (entry.0, entry.1));
        let mut count = loaded.len();
        let mut bytes: u64 = loaded.iter().map(|entry| entry.3).sum();
        for (_, _, key, size) in loaded {
            if count <= config.max_loaded_versions && bytes <= config.max_loaded_bytes {
                break;
            }
            if &key == keep {
                continue;
            }
            versions.remove(&key);
            count -= 1;
            bytes = bytes.saturating_sub(size);
            metrics::counter!("sluice_inference_model_evictions_total").increment(1);
            tracing::info!(model = %key.0, version = key.1, "unloaded the least recently used model version");
        }
    }

    /// Versions loaded in this process now.
    pub fn loaded_versions(&self) -> usize {
        self.versions.lock().expect("versions lock").values().filter(|slot| slot.cell.initialized()).count()
    }

    /// The version a target names now (aliases read from PostgreSQL), checked to exist but not
    /// loaded: batch jobs pin it at submission and load it on a worker.
    pub async fn pin(&self, model: &ModelName, target: &Target) -> Result<i32, ServeError> {
        match target {
            Target::Alias(alias) => self.stored_alias(model, alias).await.map(|pointer| pointer.version),
            Target::Version(version) => self.record(model, *version).await.map(|record| record.version),
        }
    }

    /// A version's registry record, or which of model and version is unknown.
    async fn record(&self, model: &ModelName, version: i32) -> Result<ModelVersion, ServeError> {
        let client = self.ctx.db.get().await?;
        match models::get_version(&client, model, version).await? {
            Some(record) => Ok(record),
            None if !models::exists(&client, model).await? => Err(ServeError::UnknownModel(model.to_string())),
            None => Err(ServeError::UnknownVersion { model: model.to_string(), version }),
        }
    }

    async fn load_uncached(&self, model: &ModelName, version: i32) -> Result<Arc<LoadedVersion>, ServeError> {
        let started = Instant::now();
        let record = self.record(model, version).await?;
        let outcome = |outcome: &'static str| {
            metrics::counter!("sluice_inference_model_loads_total", "model" => model.to_string(),
                "version" => version.to_string(), "outcome" => outcome)
            .increment(1);
        };
        let key = (model.as_str().to_owned(), version);
        // Refused for what the version holds: counted, alerted on (SluiceModelLoadRefused) and,
        // when its artifact was read, backed off.
        let refuse = |reason: String, read: bool| {
            outcome("refused");
            tracing::error!(model = %model, version, reason, "refusing to serve a model version");
            if read {
                self.note_refusal(&key, &reason);
            }
            ServeError::Unloadable { model: model.to_string(), version, reason }
        };
        let reference: Reference = serde_json::from_value(record.reference.clone())
            .map_err(|e| refuse(format!("its reference statistics are unreadable: {e}"), true))?;
        let bytes = match models::load_artifact(&self.ctx.s3, &self.ctx.config.s3.bucket, &record).await {
            Ok(bytes) => bytes,
            Err(err @ RegistryError::MissingArtifact { .. }) => return Err(refuse(err.to_string(), false)),
            Err(err @ RegistryError::Tampered { .. }) => return Err(refuse(err.to_string(), true)),
            Err(err) => return Err(err.into()),
        };
        let network = tokio::task::spawn_blocking(move || Network::load(&bytes))
            .await
            .map_err(|e| refuse(format!("loading its weights failed: {e}"), true))?
            .map_err(|e| refuse(e.to_string(), true))?;
        let temperature = reference.temperature;
        let config = &self.ctx.config.inference;
        let batcher = Batcher::spawn(
            Arc::new(network),
            model.to_string(),
            version,
            config.max_batch,
            Duration::from_micros(config.max_wait_us),
        );
        outcome("loaded");
        // The refusal series exists from the first load, so alerts on it see a refusal at once.
        metrics::counter!("sluice_inference_model_loads_total", "model" => model.to_string(),
            "version" => version.to_string(), "outcome" => "refused")
        .increment(0);
        tracing::info!(model = %model, version, seconds = started.elapsed().as_secs_f64(), "model version loaded");
        Ok(Arc::new(LoadedVersion { version: record, batcher, temperature }))
    }

    /// Applies a `models.events` state (every alias of `model` at `revision`): aliases this
    /// process serves move once their new version is loaded and verified, so requests never see
    /// a half-loaded model and in-flight requests finish on the old one.
    ///
    /// A state applies only to aliases following an older revision, so one arriving late, or
    /// whose version loaded after a newer state was applied, changes nothing. A `resync` (the
    /// reconciler's read of PostgreSQL) applies the same revision again too: a load that failed
    /// (S3 or PostgreSQL away for a moment) is put right on the next pass instead of serving
    /// the old version until the model's next change.
    pub async fn apply_aliases(
        self: &Arc<Self>,
        model: &str,
        revision: i64,
        aliases: &std::collections::BTreeMap<String, i32>,
        resync: bool,
    ) {
        let Ok(name) = ModelName::parse(model) else { return };
        let served: Vec<(String, Pointer)> = self
            .aliases
            .read()
            .expect("alias lock")
            .iter()
            .filter(|((m, _), pointer)| m == model && pointer.yields_to(revision, resync))
            .map(|((_, alias), pointer)| (alias.clone(), *pointer))
            .collect();
        for (alias, current) in served {
            let key = (model.to_owned(), alias.clone());
            match aliases.get(&alias) {
                None => {
                    let mut served = self.aliases.write().expect("alias lock");
                    if served.get(&key).is_some_and(|pointer| pointer.yields_to(revision, resync)) {
                        served.remove(&key);
                    }
                }
                Some(&next) if next != current.version => match self.load(&name, next).await {
                    Ok(_) if self.point(&key, Pointer { version: next, revision }, resync) => {
                        metrics::gauge!("sluice_inference_served_version", "model" => model.to_owned(), "alias" => alias.clone())
                            .set(f64::from(next));
                        tracing::info!(
                            model,
                            alias,
                            from = current.version,
                            to = next,
                            "alias moved; now serving the new version"
                        );
                    }
                    Ok(_) => {
                        tracing::info!(
                            model,
                            alias,
                            version = next,
                            revision,
                            "a newer alias state was applied while this one loaded"
                        );
                    }
                    Err(err) => {
                        tracing::error!(model, alias, version = next, error = %err, "cannot load the new version; still serving the old one");
                    }
                },
                // Unmoved: it now follows this revision, so an older state arriving late cannot move it.
                Some(&next) => {
                    self.point(&key, Pointer { version: next, revision }, resync);
                }
            }
        }
    }

    /// Models with at least one alias served by this process.
    pub fn served_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self.aliases.read().expect("alias lock").keys().map(|(m, _)| m.clone()).collect();
        models.sort();
        models.dedup();
        models
    }

    /// The model's routing, cached briefly.
    pub async fn routing(&self, model: &ModelName) -> Routing {
        if let Some(routing) = self.routing.get(model.as_str()) {
            return routing;
        }
        let routing = match self.ctx.db.get().await {
            Ok(client) => store::routing(&client, model.as_str()).await.ok().flatten().unwrap_or_default(),
            Err(_) => Routing::default(),
        };
        self.routing.put(model.as_str(), routing.clone());
        routing
    }

    /// The model's capture policy, cached like routing.
    pub async fn capture_policy(&self, model: &ModelName) -> Option<CapturePolicy> {
        if let Some(policy) = self.captures.get(model.as_str()) {
            return policy;
        }
        let policy = match self.ctx.db.get().await {
            Ok(client) => capture::policy(&client, model.as_str()).await.ok().flatten(),
            Err(_) => None,
        };
        self.captures.put(model.as_str(), policy.clone());
        policy
    }

    /// Forgets a cached capture policy (after this process changed it).
    pub fn forget_capture(&self, model: &ModelName) {
        self.captures.forget(model.as_str());
    }

    /// Whether the version's last cluster-wide drift verdict is drift, cached like routing (it is
    /// asked on the predict path when a capture policy keeps more during drift).
    pub async fn drifting(&self, model: &str, version: i32) -> bool {
        let key = format!("{model}/{version}");
        if let Some(drifting) = self.drifting.get(&key) {
            return drifting;
        }
        let drifting = match self.ctx.db.get().await {
            Ok(client) => store::drifting(&client, model, version).await.unwrap_or(false),
            Err(_) => false,
        };
        self.drifting.put(&key, drifting);
        drifting
    }

    /// Stores kept inputs for ingest, in the background: the bytes to `captures/`, then a
    /// `media.captured` event through the outbox. Predict never waits on it; past
    /// `MAX_CAPTURES_IN_FLIGHT` inputs are dropped (and counted), so capture cannot take the
    /// process's memory.
    pub fn capture(self: &Arc<Self>, model: &ModelName, dataset: &str, kept: Vec<Captured>) {
        for item in kept {
            let why = item.why;
            if self.captures_in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_CAPTURES_IN_FLIGHT {
                self.captures_in_flight.fetch_sub(1, Ordering::SeqCst);
                metrics::counter!("sluice_inference_captures_total", "why" => why, "outcome" => "dropped").increment(1);
                continue;
            }
            let (served, model, dataset) = (Arc::clone(self), model.to_string(), dataset.to_owned());
            tokio::spawn(async move {
                let outcome = match served.store_capture(&model, &dataset, item).await {
                    Ok(()) => "enqueued",
                    Err(err) => {
                        tracing::warn!(model, error = %err, "cannot store a captured input");
                        "failed"
                    }
                };
                served.captures_in_flight.fetch_sub(1, Ordering::SeqCst);
                metrics::counter!("sluice_inference_captures_total", "why" => why, "outcome" => outcome).increment(1);
            });
        }
    }

    async fn store_capture(&self, model: &str, dataset: &str, item: Captured) -> Result<(), String> {
        let key = capture_key(model, item.prediction_id);
        let bucket = &self.ctx.config.s3.bucket;
        s3::put_bytes(&self.ctx.s3, bucket, &key, item.bytes.to_vec(), "application/octet-stream")
            .await
            .map_err(|e| e.to_string())?;
        let event = Envelope::new(MediaCaptured {
            prediction_id: item.prediction_id,
            model: model.to_owned(),
            version: item.version,
            dataset: dataset.to_owned(),
            key,
            predicted: item.predicted,
            confidence: item.confidence,
            why: item.why.to_owned(),
        });
        let client = self.ctx.db.get().await.map_err(|e| sluice_core::error_chain(&e))?;
        outbox::enqueue(&client, &self.ctx.topic(Topic::MediaCaptures), model, &event).await.map_err(|e| e.to_string())
    }

    /// Forgets cached routing (after this process changed it).
    pub fn forget_routing(&self, model: &ModelName) {
        self.routing.forget(model.as_str());
    }

    /// Takes the model's retrain cooldown and returns the request to enqueue; `None` while a
    /// request was made within the cooldown. Whoever cannot enqueue it gives the cooldown back
    /// ([`Served::retrain_not_requested`]), so the next check asks again.
    pub fn claim_retrain(
        &self,
        model: &str,
        reason: &str,
        evidence: serde_json::Value,
    ) -> Option<Envelope<RetrainRequested>> {
        let cooldown = Duration::from_secs(self.ctx.config.inference.retrain_cooldown_secs);
        let mut last = self.last_retrain.lock().expect("retrain lock");
        if last.get(model).is_some_and(|at| at.elapsed() < cooldown) {
            return None;
        }
        last.insert(model.to_owned(), Instant::now());
        Some(Envelope::new(RetrainRequested {
            model: model.to_owned(),
            reason: reason.to_owned(),
            evidence,
            requested_by: format!("inference:{}", std::process::id()),
        }))
    }

    /// A claimed request was not enqueued: the cooldown is given back.
    pub fn retrain_not_requested(&self, model: &str, error: &str) {
        self.last_retrain.lock().expect("retrain lock").remove(model);
        tracing::warn!(model, error, "cannot enqueue a retrain request");
    }

    /// A claimed request was enqueued (committed with whatever asked for it).
    pub fn retrain_requested(model: &str, reason: &str) {
        metrics::counter!("sluice_inference_retrain_requests_total", "model" => model.to_owned(), "reason" => reason.to_owned())
            .increment(1);
        tracing::warn!(model, reason, "requested retraining");
    }

    /// Requests retraining on its own (after feedback), unless within the model's cooldown: in a
    /// task of its own, so a client that hangs up on its feedback request does not cancel it.
    pub fn request_retrain(self: &Arc<Self>, model: &str, reason: &str, evidence: serde_json::Value) {
        let Some(event) = self.claim_retrain(model, reason, evidence) else { return };
        let (served, model, reason) = (Arc::clone(self), model.to_owned(), reason.to_owned());
        tokio::spawn(async move {
            let topic = served.ctx.topic(Topic::RetrainRequests);
            let enqueued = match served.ctx.db.get().await {
                Ok(client) => outbox::enqueue(&client, &topic, &model, &event).await.map_err(|e| e.to_string()),
                Err(err) => Err(sluice_core::error_chain(&err)),
            };
            match enqueued {
                Ok(()) => Self::retrain_requested(&model, &reason),
                Err(err) => served.retrain_not_requested(&model, &err),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_versions_back_off_doubles_up_to_its_cap() {
        let secs = |refusals| Refusal::backoff(refusals).as_secs();
        assert_eq!([1, 2, 3, 4, 5, 6, 7].map(secs), [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(secs(u32::MAX), 600, "no overflow however often it is refused");
    }
}
