//! The registry's listing and audit reads; writes and point reads are `sluice_core::models`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use sluice_core::models::{AliasName, ModelName, RegistryError};
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
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub actor: String,
    pub reason: String,
    #[serde(with = "sluice_core::events::rfc3339")]
    pub at: DateTime<Utc>,
}

const MODEL_QUERY: &str = "SELECT m.name, m.latest_version, m.created_at, m.updated_at, m.template,
        COALESCE(jsonb_object_agg(a.alias, a.version) FILTER (WHERE a.alias IS NOT NULL), '{}'::jsonb)
     FROM models m LEFT JOIN model_aliases a ON a.model = m.name";

fn model_from_row(row: &Row, with_template: bool) -> Model {
    let latest: i32 = row.get(1);
    Model {
        name: row.get(0),
        latest_version: (latest > 0).then_some(latest),
        created_at: row.get(2),
        updated_at: row.get(3),
        template: if with_template { row.get(4) } else { None },
        aliases: serde_json::from_value(row.get(5)).unwrap_or_default(),
    }
}

/// Every model, by name.
pub async fn models(client: &impl GenericClient) -> Result<Vec<Model>, RegistryError> {
    let sql = format!("{MODEL_QUERY} GROUP BY m.name ORDER BY m.name");
    Ok(client.query(sql.as_str(), &[]).await?.iter().map(|row| model_from_row(row, false)).collect())
}

/// One model, with its template.
pub async fn model(client: &impl GenericClient, name: &ModelName) -> Result<Option<Model>, RegistryError> {
    let sql = format!("{MODEL_QUERY} WHERE m.name = $1 GROUP BY m.name");
    Ok(client.query_opt(sql.as_str(), &[&name.as_str()]).await?.map(|row| model_from_row(&row, true)))
}

pub async fn model_exists(client: &impl GenericClient, name: &ModelName) -> Result<bool, RegistryError> {
    Ok(client.query_opt("SELECT 1 FROM models WHERE name = $1", &[&name.as_str()]).await?.is_some())
}

pub async fn alias(
    client: &impl GenericClient,
    model: &ModelName,
    alias: &AliasName,
) -> Result<Option<Alias>, RegistryError> {
    let row = client
        .query_opt(
            "SELECT version, updated_at, updated_by FROM model_aliases WHERE model = $1 AND alias = $2",
            &[&model.as_str(), &alias.as_str()],
        )
        .await?;
    Ok(row.map(|row| Alias {
        model: model.to_string(),
        alias: alias.to_string(),
        version: row.get(0),
        updated_at: row.get(1),
        updated_by: row.get(2),
    }))
}

/// Every move of `alias`, newest first.
pub async fn history(
    client: &impl GenericClient,
    model: &ModelName,
    alias: &AliasName,
) -> Result<Vec<Move>, RegistryError> {
    let rows = client
        .query(
            "SELECT from_version, to_version, actor, reason, at FROM alias_history
             WHERE model = $1 AND alias = $2 ORDER BY id DESC",
            &[&model.as_str(), &alias.as_str()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Move { from: row.get(0), to: row.get(1), actor: row.get(2), reason: row.get(3), at: row.get(4) })
        .collect())
}
