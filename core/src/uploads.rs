//! The upload contract shared by ingest and preprocess: S3 key layout and the
//! `media.ingested` event.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{domain::DatasetName, events::Event};

crate::text_enum! {
    /// Where an upload is in the pipeline (`media.status`): ingest writes `accepted`, preprocess
    /// moves it through `processing` to `processed` or `failed` (and back to `accepted` to redo it).
    pub enum MediaStatus {
        Accepted = "accepted",
        Processing = "processing",
        Processed = "processed",
        Failed = "failed",
    }
}

/// `raw/<dataset>/<id>.<ext>`: only a validated dataset name, a server-generated id and an
/// extension chosen from the sniffed format; nothing a client typed verbatim.
pub fn raw_key(dataset: &DatasetName, id: Uuid, extension: &str) -> String {
    format!("raw/{dataset}/{id}.{extension}")
}

/// Prefix under which every raw object lives (the orphan sweeper walks it).
pub const RAW_PREFIX: &str = "raw/";

/// A media item was accepted: its bytes are in S3 and its row is committed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaIngested {
    pub media_id: Uuid,
    pub dataset: String,
    pub label: Option<String>,
    /// `image` or `video`.
    pub kind: String,
    pub content_type: String,
    pub raw_key: String,
    pub bytes: i64,
    pub sha256: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
}

impl Event for MediaIngested {
    const TYPE: &'static str = "media.ingested";
    const SCHEMA_VERSION: u32 = 1;
}
