//! Integration tests against the real local stack (`deploy/local/stack.sh up`): one binary for
//! the whole workspace so the dependency tree links once.

mod batch;
mod cli;
mod closed_loop;
mod console;
mod crafted;
mod digits;
mod hosts;
mod imports;
mod inference;
mod ingest;
mod kafka;
mod migrations;
mod observability;
mod openapi;
mod outbox;
mod preprocess;
mod push;
mod readyz;
mod registry;
mod s3;
mod schemathesis;
mod security;
mod support;
mod training;
mod v2;
mod webhooks;
