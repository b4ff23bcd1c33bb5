//! Every PostgreSQL call the registry's routes make, each on its own pooled connection: the
//! listing and audit reads are here; writes and point reads go through `sluice_core::models`
//! (an alias move or deletion in one transaction of its own).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sluice_core::{
    Context,
    db::DbError,
    models::{self, AliasMove, AliasName, AutoPromote, ModelName, ModelVersion, Policy, RegistryError},
};
use tokio_postgres::Row;

/// A model with its aliases.
#[derive(Debug, Serialize)]
pub struct Model {
    pub name: String,
    /// `None` while the model has no version yet (only a training template).
    pub latest_version: Option<i32>,
    pub aliases: BTreeMap<String, i32>,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// The training-job request the model was last trained with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Value>,
}

/// Where an alias points, and who moved it last.
#[derive(Debug, Serialize)]
pub struct Alias {
    pub model: String,
    pub alias: String,
    pub version: i32,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

/// One audited move; `to` is `None` when the alias was deleted.
#[derive(Debug, Serialize)]
pub struct Move {
    /// The move's place in the trail: pass the last one's as `before` for the next page.
    pub id: i64,
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub actor: String,
    pub reason: String,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub at: DateTime<Utc>,
}

const MODEL_QUERY: &str = "SELECT m.name, m.latest_version, m.created_at, m.updated_at, m.template,
        COALESCE(jsonb_object_agg(a.alias, a.version) FILTER (WHERE a.alias IS NOT NULL), '{}'::jsonb) AS aliases
     FROM models m LEFT JOIN model_aliases a ON a.model = m.name";

/// Reads a row selected with [`MODEL_QUERY`].
fn model_from_row(row: &Row, with_template: bool) -> Model {
    let latest: i32 = row.get("latest_version");
    Model {
        name: row.get("name"),
        latest_version: (latest > 0).then_some(latest),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        template: if with_template { row.get("template") } else { None },
        aliases: serde_json::from_value(row.get("aliases")).unwrap_or_default(),
    }
}

/// Every model, by name.
#[tracing::instrument(level = "debug", skip_all)]
pub async fn models(ctx: &Context) -> Result<Vec<Model>, DbError> {
    let sql = format!("{MODEL_QUERY} GROUP BY m.name ORDER BY m.name");
    let rows = ctx.db.get().await?.query(sql.as_str(), &[]).await?;
    Ok(rows.iter().map(|row| model_from_row(row, false)).collect())
}

/// One model, with its template.
#[tracing::instrument(level = "debug", skip_all, fields(model = %name))]
pub async fn model(ctx: &Context, name: &ModelName) -> Result<Option<Model>, DbError> {
    let sql = format!("{MODEL_QUERY} WHERE m.name = $1 GROUP BY m.name");
    let row = ctx.db.get().await?.query_opt(sql.as_str(), &[&name.as_str()]).await?;
    Ok(row.map(|row| model_from_row(&row, true)))
}

#[tracing::instrument(level = "debug", skip_all, fields(model = %name))]
pub async fn model_exists(ctx: &Context, name: &ModelName) -> Result<bool, DbError> {
    Ok(ctx.db.get().await?.query_opt("SELECT 1 FROM models WHERE name = $1", &[&name.as_str()]).await?.is_some())
}

#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias))]
pub async fn alias(ctx: &Context, model: &ModelName, alias: &AliasName) -> Result<Option<Alias>, DbError> {
    let row = ctx
        .db
        .get()
        .await?
        .query_opt(
            "SELECT version, updated_at, updated_by FROM model_aliases WHERE model = $1 AND alias = $2",
            &[&model.as_str(), &alias.as_str()],
        )
        .await?;
    Ok(row.map(|row| Alias {
        model: model.to_string(),
        alias: alias.to_string(),
        version: row.get("version"),
        updated_at: row.get("updated_at"),
        updated_by: row.get("updated_by"),
    }))
}

/// Up to `limit` moves of `alias` older than the move `before` (all when `None`), newest first.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias))]
pub async fn history(
    ctx: &Context,
    model: &ModelName,
    alias: &AliasName,
    limit: i64,
    before: Option<i64>,
) -> Result<Vec<Move>, DbError> {
    let rows = ctx
        .db
        .get()
        .await?
        .query(
            "SELECT id, from_version, to_version, actor, reason, at FROM alias_history
             WHERE model = $1 AND alias = $2 AND id < $3 ORDER BY id DESC LIMIT $4",
            &[&model.as_str(), &alias.as_str(), &before.unwrap_or(i64::MAX), &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Move {
            id: row.get("id"),
            from: row.get("from_version"),
            to: row.get("to_version"),
            actor: row.get("actor"),
            reason: row.get("reason"),
            at: row.get("at"),
        })
        .collect())
}

/// A pooled connection for a call into `sluice_core::models`, whose error wraps [`DbError`].
async fn connection(ctx: &Context) -> Result<deadpool_postgres::Object, DbError> {
    Ok(ctx.db.get().await?)
}

/// A page of `model`'s versions, oldest first: the `limit` newest below `before` (empty for an
/// unknown model).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn versions(
    ctx: &Context,
    model: &ModelName,
    before: i32,
    limit: i64,
) -> Result<Vec<ModelVersion>, RegistryError> {
    models::version_summaries(&connection(ctx).await?, model, before, limit).await
}

/// One version, or `None` when the model or the version does not exist.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, version = version))]
pub async fn version(ctx: &Context, model: &ModelName, version: i32) -> Result<Option<ModelVersion>, RegistryError> {
    models::get_version(&connection(ctx).await?, model, version).await
}

/// Every alias of `model` and the version it points at.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn aliases(ctx: &Context, model: &ModelName) -> Result<BTreeMap<String, i32>, RegistryError> {
    models::aliases(&connection(ctx).await?, model).await
}

#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn policy(ctx: &Context, model: &ModelName) -> Result<Policy, RegistryError> {
    models::policy(&connection(ctx).await?, model).await
}

#[tracing::instrument(level = "debug", skip_all, fields(model = %model, auto_promote = auto_promote.as_str()))]
pub async fn set_policy(
    ctx: &Context,
    model: &ModelName,
    auto_promote: AutoPromote,
    protected_aliases: &[AliasName],
    actor: &str,
) -> Result<Policy, RegistryError> {
    let client = connection(ctx).await?;
    models::set_policy(&client, model, auto_promote, protected_aliases, actor).await
}

/// Points `alias` at `version` in a transaction of its own ([`models::move_alias`]).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias, version = version))]
pub async fn move_alias(
    ctx: &Context,
    model: &ModelName,
    alias: &AliasName,
    version: i32,
    actor: &str,
    reason: &str,
) -> Result<AliasMove, RegistryError> {
    let mut client = connection(ctx).await?;
    let tx = client.transaction().await?;
    let moved = models::move_alias(&tx, &ctx.config.kafka.topic_prefix, model, alias, version, actor, reason).await?;
    tx.commit().await?;
    Ok(moved)
}

/// Deletes `alias` in a transaction of its own ([`models::remove_alias`]); returns the version
/// it pointed at.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, alias = %alias))]
pub async fn remove_alias(
    ctx: &Context,
    model: &ModelName,
    alias: &AliasName,
    actor: &str,
    reason: &str,
) -> Result<i32, RegistryError> {
    let mut client = connection(ctx).await?;
    let tx = client.transaction().await?;
    let from = models::remove_alias(&tx, &ctx.config.kafka.topic_prefix, model, alias, actor, reason).await?;
    tx.commit().await?;
    Ok(from)
}
