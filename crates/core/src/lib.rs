//! The narrow waist of chatlake: the stage traits, the canonical message schema, pipeline files,
//! the graph checks and the runtime that moves Arrow batches between stages.
//!
//! Components live in their own crates and depend only on this one; the CLI fills a [`Registry`]
//! with them, and nothing else knows every component.

pub mod config;
pub mod dead_letter;
pub mod durable;
mod error;
pub mod event;
pub mod graph;
pub mod metrics;
pub mod registry;
pub mod removal;
pub mod runtime;
pub mod schema;
pub mod secret;
pub mod shard;
pub mod stage;
pub mod state;

pub use error::{BoxError, Error, Result};
pub use event::{Batch, Event, Window, WindowRef};
pub use registry::Registry;
pub use secret::Secret;
pub use stage::{
    BuildContext, DataKind, Emitter, PlannedWindow, Sink, SinkConfig, SinkContext, Source,
    SourceConfig, SourceContext, Transform, TransformConfig, TransformContext,
};
