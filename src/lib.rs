//! bookrec: a recommendation analytics engine for a book platform, on Apache Arrow and
//! DataFusion. Modules follow the pipeline stages (see DESIGN.md):
//!
//! - [`event`]: the behaviour-event contract, validation, clock-skew correction, Arrow schema;
//! - [`collect`]: the HTTP collector with its durable spool;
//! - [`bus`]: the event bus (Kafka);
//! - [`lake`]: Parquet on object storage (local, S3, memory), its layout;
//! - [`land`]: Kafka → lake, exactly once;
//! - [`sql`]: DataFusion sessions over the lake, the feature DAG;
//! - [`als`]: implicit ALS training, ranking and offline evaluation;
//! - [`features`]: the realtime feature store (Redis, and an in-memory twin);
//! - [`store`]: the recommendation / feature database (sqlx);
//! - [`config`]: the one typed configuration tree;
//! - [`realtime`]: `bookrec stream`, realtime SQL on micro-batches into the feature store;
//! - [`replay`]: datasets replayed as events (load generation, filling the pipeline);
//! - [`cli`]: the command line, which only composes the modules above.

pub mod als;
pub mod bus;
pub mod cli;
pub mod collect;
pub mod config;
pub mod demo;
pub mod event;
pub mod features;
pub mod lake;
pub mod land;
pub mod realtime;
pub mod replay;
pub mod serve;
pub mod sql;
pub mod store;
