//! Per-model promotion policy (`model_policies`), set by an admin with
//! `PUT /v1/models/{name}/policy`: how far a training job or a retrain that no admin started may
//! move `production` on its own, and which other aliases only an admin may move.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde::{Deserialize, Serialize};

use super::{AliasName, ModelName, RegistryError};

/// What a job may do to `production` without an admin: ordered, so a job asking for more than
/// the policy grants can be told apart (`Never < IfBetter < Always`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoPromote {
    #[default]
    Never,
    IfBetter,
    Always,
}

impl AutoPromote {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoPromote::Never => "never",
            AutoPromote::IfBetter => "if_better",
            AutoPromote::Always => "always",
        }
    }

    fn parse(raw: &str) -> Result<Self, RegistryError> {
        match raw {
            "never" => Ok(AutoPromote::Never),
            "if_better" => Ok(AutoPromote::IfBetter),
            "always" => Ok(AutoPromote::Always),
            other => Err(RegistryError::Corrupt(format!("auto_promote {other:?}"))),
        }
    }
}

/// Most protected aliases one model may list.
pub const MAX_PROTECTED_ALIASES: usize = 32;

/// A model's policy; a model without a row has the default (never, nothing protected).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Policy {
    pub auto_promote: AutoPromote,
    /// Aliases besides `production` that only an admin may move or delete.
    pub protected_aliases: Vec<String>,
    pub updated_by: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The alias a canary share of the model's default traffic goes to (`model_routing`, set by
    /// an admin): it answers requests as `production` does, so it is protected too.
    #[serde(skip)]
    pub canary_alias: Option<String>,
}

impl Policy {
    /// Whether moving `alias` needs the `admin` scope: `production`, the aliases the policy
    /// lists, and the model's canary alias while it takes a share of the traffic.
    pub fn protects(&self, alias: &AliasName) -> bool {
        alias.is_production()
            || self.protected_aliases.iter().any(|a| a == alias.as_str())
            || self.canary_alias.as_deref() == Some(alias.as_str())
    }
}

/// The model's policy (the default when none was set).
#[tracing::instrument(level = "debug", skip_all, fields(model = %model))]
pub async fn policy(client: &impl GenericClient, model: &ModelName) -> Result<Policy, RegistryError> {
    let row = client
        .query_one(
            "SELECT p.auto_promote, p.protected_aliases, p.updated_by, p.updated_at,
                    (SELECT r.canary_alias FROM model_routing r WHERE r.model = $1 AND r.canary_percent > 0)
                        AS canary_alias
             FROM (VALUES (1)) AS one LEFT JOIN model_policies p ON p.model = $1",
            &[&model.as_str()],
        )
        .await?;
    let canary_alias = row.get("canary_alias");
    let Some(auto_promote) = row.get::<_, Option<&str>>("auto_promote") else {
        return Ok(Policy { canary_alias, ..Policy::default() });
    };
    Ok(Policy {
        auto_promote: AutoPromote::parse(auto_promote)?,
        protected_aliases: row.get("protected_aliases"),
        updated_by: row.get("updated_by"),
        updated_at: row.get("updated_at"),
        canary_alias,
    })
}

/// Sets the model's policy (whether or not the model has versions yet) and returns it.
#[tracing::instrument(level = "debug", skip_all, fields(model = %model, auto_promote = auto_promote.as_str()))]
pub async fn set_policy(
    client: &impl GenericClient,
    model: &ModelName,
    auto_promote: AutoPromote,
    protected_aliases: &[AliasName],
    actor: &str,
) -> Result<Policy, RegistryError> {
    let mut protected: Vec<String> = protected_aliases.iter().map(|a| a.as_str().to_owned()).collect();
    protected.sort();
    protected.dedup();
    if protected.len() > MAX_PROTECTED_ALIASES {
        return Err(RegistryError::Invalid(format!("at most {MAX_PROTECTED_ALIASES} protected aliases")));
    }
    client
        .execute(
            "INSERT INTO model_policies (model, auto_promote, protected_aliases, updated_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (model) DO UPDATE SET auto_promote = $2, protected_aliases = $3, updated_by = $4,
                 updated_at = now()",
            &[&model.as_str(), &auto_promote.as_str(), &protected, &actor],
        )
        .await?;
    policy(client, model).await
}
