//! The registry's PostgreSQL writes and point reads (tables in `migrations/0005_registry.sql`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;
use tokio_postgres::Row;

use super::{
    AliasMove, AliasMoved, AliasName, AliasRemoved, Lineage, ModelName, ModelVersion, ModelVersionRegistered,
    NewVersion, RegistryError,
};
use crate::{
    events::{Envelope, Event},
    outbox,
    topics::Topic,
};

/// Most aliases one model may have. Every `models.events` event carries the model's whole alias
/// map (so the last event kept by compaction rebuilds it), so the map must stay bounded: 100
/// aliases of at most 63 characters are about 7 KB, far below Kafka's message limit.
pub const MAX_ALIASES: usize = 100;

/// The columns [`version_from_row`] reads, in a `model_versions` query.
const VERSION_COLUMNS: &str = "model, version, artifact_key, sha256, size_bytes, architecture, \
     input_spec, labels, hyperparameters, metrics, reference, job_id, trial_id, snapshot_id, dataset, spec_hash, \
     sluice_version, created_at";

/// Inserts `v` with the model's next version number and enqueues `model.version_registered`.
///
/// Runs inside `tx` under the model's row lock, so numbers are dense and race-free; if `tx` rolls
/// back, so does the number. Idempotent per training trial: registering a trial that already has a
/// version of this model returns that version and publishes nothing (a coordinator that crashed
/// after registering can safely register again).
#[tracing::instrument(level = "debug", skip_all, fields(model = %v.model, trial = %v.lineage.trial_id))]
pub async fn register(
    tx: &Transaction<'_>,
    topics_prefix: &str,
    v: &NewVersion,
) -> Result<ModelVersion, RegistryError> {
    v.validate()?;
    let model = v.model.as_str();
    tx.execute("INSERT INTO models (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", &[&model]).await?;
    lock_model(tx, &v.model).await?;
    let existing = format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 AND trial_id = $2");
    if let Some(row) = tx.query_opt(existing.as_str(), &[&model, &v.lineage.trial_id]).await? {
        return version_from_row(&row);
    }
    let row = tx
        .query_one(
            "UPDATE models SET latest_version = latest_version + 1, revision = revision + 1, updated_at = now()
             WHERE name = $1 RETURNING latest_version, revision",
            &[&model],
        )
        .await?;
    let (version, revision): (i32, i64) = (row.get("latest_version"), row.get("revision"));
    let input_spec = serde_json::to_value(&v.input_spec).expect("pipeline specs serialise");
    let l = &v.lineage;
    let insert = format!(
        "INSERT INTO model_versions (model, version, artifact_key, sha256, size_bytes, architecture, input_spec,
             labels, hyperparameters, metrics, reference, job_id, trial_id, snapshot_id, dataset, spec_hash,
             sluice_version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         RETURNING {VERSION_COLUMNS}"
    );
    let row = tx
        .query_one(
            insert.as_str(),
            &[
                &model,
                &version,
                &v.artifact_key,
                &v.sha256,
                &v.size_bytes,
                &v.architecture,
                &input_spec,
                &v.labels,
                &v.hyperparameters,
                &v.metrics,
                &v.reference,
                &l.job_id,
                &l.trial_id,
                &l.snapshot_id,
                &l.dataset,
                &l.spec_hash,
                &l.sluice_version,
            ],
        )
        .await?;
    let registered = version_from_row(&row)?;
    let event = ModelVersionRegistered {
        model: model.to_owned(),
        version,
        artifact_key: v.artifact_key.clone(),
        sha256: v.sha256.clone(),
        revision,
        aliases: aliases(tx, &v.model).await?,
    };
    publish(tx, topics_prefix, model, event).await?;
    Ok(registered)
}

/// Points `alias` at `version` (creating the alias, unless the model already has
/// [`MAX_ALIASES`]), records the move in `alias_history` and enqueues `model.alias_moved`. Moving an alias to the version it already points at changes
/// nothing: no history row, no event, `changed: false` (so a retried PUT is harmless).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias, version = version))]
pub async fn move_alias(
    tx: &Transaction<'_>,
    topics_prefix: &str,
    model: &ModelName,
    alias: &AliasName,
    version: i32,
    actor: &str,
    reason: &str,
) -> Result<AliasMove, RegistryError> {
    lock_model(tx, model).await?;
    let known = tx
        .query_opt("SELECT 1 FROM model_versions WHERE model = $1 AND version = $2", &[&model.as_str(), &version])
        .await?;
    if known.is_none() {
        return Err(RegistryError::UnknownVersion { model: model.to_string(), version });
    }
    let from: Option<i32> = tx
        .query_opt(
            "SELECT version FROM model_aliases WHERE model = $1 AND alias = $2",
            &[&model.as_str(), &alias.as_str()],
        )
        .await?
        .map(|row| row.get("version"));
    let mut moved = AliasMove {
        model: model.clone(),
        alias: alias.clone(),
        from,
        to: version,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        at: Utc::now(),
        changed: false,
    };
    if from == Some(version) {
        return Ok(moved);
    }
    if from.is_none() {
        let count: i64 = tx
            .query_one("SELECT count(*) AS aliases FROM model_aliases WHERE model = $1", &[&model.as_str()])
            .await?
            .get("aliases");
        if count as usize >= MAX_ALIASES {
            return Err(RegistryError::TooManyAliases { model: model.to_string(), limit: MAX_ALIASES });
        }
    }
    tx.execute(
        "INSERT INTO model_aliases (model, alias, version, updated_by) VALUES ($1, $2, $3, $4)
         ON CONFLICT (model, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now(),
             updated_by = EXCLUDED.updated_by",
        &[&model.as_str(), &alias.as_str(), &version, &actor],
    )
    .await?;
    let (at, revision, aliases) = record_change(tx, model, alias, from, Some(version), actor, reason).await?;
    (moved.at, moved.changed) = (at, true);
    if alias.as_str() == AliasName::PRODUCTION {
        crate::live::supersede(tx, model.as_str(), version).await?;
    }
    let event = AliasMoved {
        model: model.to_string(),
        alias: alias.to_string(),
        from,
        to: version,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        revision,
        aliases,
    };
    publish(tx, topics_prefix, model.as_str(), event).await?;
    Ok(moved)
}

/// Deletes `alias`, records it in `alias_history` (`to` empty) and enqueues `model.alias_removed`.
/// Returns the version it pointed at.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias))]
pub async fn remove_alias(
    tx: &Transaction<'_>,
    topics_prefix: &str,
    model: &ModelName,
    alias: &AliasName,
    actor: &str,
    reason: &str,
) -> Result<i32, RegistryError> {
    lock_model(tx, model).await?;
    let removed = tx
        .query_opt(
            "DELETE FROM model_aliases WHERE model = $1 AND alias = $2 RETURNING version",
            &[&model.as_str(), &alias.as_str()],
        )
        .await?;
    let Some(from) = removed.map(|row| row.get::<_, i32>("version")) else {
        return Err(RegistryError::UnknownAlias { model: model.to_string(), alias: alias.to_string() });
    };
    let (_, revision, aliases) = record_change(tx, model, alias, Some(from), None, actor, reason).await?;
    let event = AliasRemoved {
        model: model.to_string(),
        alias: alias.to_string(),
        from,
        actor: actor.to_owned(),
        reason: reason.to_owned(),
        revision,
        aliases,
    };
    publish(tx, topics_prefix, model.as_str(), event).await?;
    Ok(from)
}

/// One version, or `None` when the model or the version does not exist.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, version = version))]
pub async fn get_version(
    client: &impl GenericClient,
    model: &ModelName,
    version: i32,
) -> Result<Option<ModelVersion>, RegistryError> {
    let sql = format!("SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 AND version = $2");
    client.query_opt(sql.as_str(), &[&model.as_str(), &version]).await?.as_ref().map(version_from_row).transpose()
}

/// The columns of a listed version: [`VERSION_COLUMNS`] without the reference statistics (tens
/// of kilobytes each), which only serving and drift read, one version at a time.
const SUMMARY_COLUMNS: &str = "model, version, artifact_key, sha256, size_bytes, architecture, \
     input_spec, labels, hyperparameters, metrics, 'null'::jsonb AS reference, job_id, trial_id, snapshot_id, \
     dataset, spec_hash, sluice_version, created_at";

/// A page of `model`'s versions, oldest first: the `limit` newest below version `before`, without
/// their reference statistics (empty for an unknown model).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn version_summaries(
    client: &impl GenericClient,
    model: &ModelName,
    before: i32,
    limit: i64,
) -> Result<Vec<ModelVersion>, RegistryError> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM model_versions WHERE model = $1 AND version < $2 ORDER BY version DESC LIMIT $3"
    );
    let rows = client.query(sql.as_str(), &[&model.as_str(), &before, &limit]).await?;
    rows.iter().rev().map(version_from_row).collect()
}

/// The numbers of `model`'s versions, oldest first.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn version_numbers(client: &impl GenericClient, model: &ModelName) -> Result<Vec<i32>, RegistryError> {
    let rows = client
        .query("SELECT version FROM model_versions WHERE model = $1 ORDER BY version", &[&model.as_str()])
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// The version `alias` points at, or `None` when the model has no such alias.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias))]
pub async fn resolve_alias(
    client: &impl GenericClient,
    model: &ModelName,
    alias: &AliasName,
) -> Result<Option<ModelVersion>, RegistryError> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM model_versions
         WHERE (model, version) = (SELECT model, version FROM model_aliases WHERE model = $1 AND alias = $2)"
    );
    client
        .query_opt(sql.as_str(), &[&model.as_str(), &alias.as_str()])
        .await?
        .as_ref()
        .map(version_from_row)
        .transpose()
}

/// Every alias of `model` and the version it points at (empty for an unknown model).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn aliases(client: &impl GenericClient, model: &ModelName) -> Result<BTreeMap<String, i32>, RegistryError> {
    let rows = client.query("SELECT alias, version FROM model_aliases WHERE model = $1", &[&model.as_str()]).await?;
    Ok(rows.iter().map(|row| (row.get("alias"), row.get("version"))).collect())
}

/// Stores the training-job template `model` was last trained with (for retraining), creating the
/// model (with no versions yet) if needed.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn set_template(
    client: &impl GenericClient,
    model: &ModelName,
    template: &Value,
) -> Result<(), RegistryError> {
    client
        .execute(
            "INSERT INTO models (name, template) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET template = EXCLUDED.template, updated_at = now()",
            &[&model.as_str(), template],
        )
        .await?;
    Ok(())
}

/// The template stored by [`set_template`], if any.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn get_template(client: &impl GenericClient, model: &ModelName) -> Result<Option<Value>, RegistryError> {
    let row = client.query_opt("SELECT template FROM models WHERE name = $1", &[&model.as_str()]).await?;
    Ok(row.and_then(|row| row.get("template")))
}

/// Takes the model's row lock for the rest of `tx`: every change to a model goes through it.
async fn lock_model(tx: &Transaction<'_>, model: &ModelName) -> Result<(), RegistryError> {
    match tx.query_opt("SELECT 1 FROM models WHERE name = $1 FOR UPDATE", &[&model.as_str()]).await? {
        Some(_) => Ok(()),
        None => Err(RegistryError::UnknownModel(model.to_string())),
    }
}

/// Writes the audit row and bumps the model's revision; returns the time, the revision and the
/// aliases after the change.
async fn record_change(
    tx: &Transaction<'_>,
    model: &ModelName,
    alias: &AliasName,
    from: Option<i32>,
    to: Option<i32>,
    actor: &str,
    reason: &str,
) -> Result<(DateTime<Utc>, i64, BTreeMap<String, i32>), RegistryError> {
    let at: DateTime<Utc> = tx
        .query_one(
            "INSERT INTO alias_history (model, alias, from_version, to_version, actor, reason)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING at",
            &[&model.as_str(), &alias.as_str(), &from, &to, &actor, &reason],
        )
        .await?
        .get("at");
    let revision: i64 = tx
        .query_one(
            "UPDATE models SET revision = revision + 1, updated_at = now() WHERE name = $1 RETURNING revision",
            &[&model.as_str()],
        )
        .await?
        .get("revision");
    Ok((at, revision, aliases(tx, model).await?))
}

async fn publish<T: Event>(
    tx: &Transaction<'_>,
    topics_prefix: &str,
    model: &str,
    event: T,
) -> Result<(), RegistryError> {
    outbox::enqueue(tx, &Topic::ModelsEvents.qualified(topics_prefix), model, &Envelope::new(event)).await?;
    Ok(())
}

/// Reads a row selected with [`VERSION_COLUMNS`].
fn version_from_row(row: &Row) -> Result<ModelVersion, RegistryError> {
    let corrupt = |what: &str, err: &dyn std::fmt::Display| RegistryError::Corrupt(format!("{what}: {err}"));
    Ok(ModelVersion {
        model: ModelName::parse(row.get("model")).map_err(|e| corrupt("model", &e))?,
        version: row.get("version"),
        artifact_key: row.get("artifact_key"),
        sha256: row.get("sha256"),
        size_bytes: row.get("size_bytes"),
        architecture: row.get("architecture"),
        input_spec: serde_json::from_value(row.get("input_spec")).map_err(|e| corrupt("input_spec", &e))?,
        labels: row.get("labels"),
        hyperparameters: row.get("hyperparameters"),
        metrics: row.get("metrics"),
        reference: row.get("reference"),
        lineage: Lineage {
            job_id: row.get("job_id"),
            trial_id: row.get("trial_id"),
            snapshot_id: row.get("snapshot_id"),
            dataset: row.get("dataset"),
            spec_hash: row.get("spec_hash"),
            sluice_version: row.get("sluice_version"),
        },
        created_at: row.get("created_at"),
    })
}

/// Whether the model exists (it does once a version was registered).
#[tracing::instrument(level = "debug", skip(client))]
pub async fn exists(client: &impl GenericClient, model: &ModelName) -> Result<bool, crate::db::DbError> {
    let row = client.query_opt("SELECT 1 AS found FROM models WHERE name = $1", &[&model.as_str()]).await?;
    Ok(row.is_some())
}

/// Every alias of a model and the revision they are at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasState {
    pub revision: i64,
    pub aliases: BTreeMap<String, i32>,
}

/// The model's revision and every alias, read in one statement (so from one snapshot: the
/// aliases are those of that revision), or `None` for an unknown model.
#[tracing::instrument(level = "debug", skip(client))]
pub async fn alias_state(client: &impl GenericClient, model: &ModelName) -> Result<Option<AliasState>, RegistryError> {
    let rows = client
        .query(
            "SELECT m.revision, a.alias, a.version FROM models m
             LEFT JOIN model_aliases a ON a.model = m.name WHERE m.name = $1",
            &[&model.as_str()],
        )
        .await?;
    let Some(first) = rows.first() else { return Ok(None) };
    let aliases = rows
        .iter()
        .filter_map(|row| Some((row.get::<_, Option<String>>("alias")?, row.get::<_, Option<i32>>("version")?)))
        .collect();
    Ok(Some(AliasState { revision: first.get("revision"), aliases }))
}
