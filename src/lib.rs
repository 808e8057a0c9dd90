//! bookrec: a recommendation analytics engine for a book platform, on Apache Arrow and
//! DataFusion. Modules follow the pipeline stages; ARCHITECTURE.md is the guide (what each
//! module owns and may import, the data's path, the invariants, where to add things):
//!
//! - [`event`]: the behaviour-event contract, validation, clock-skew correction, Arrow schema,
//!   dedup (a leaf: imports no other module);
//! - [`config`]: the one typed configuration tree (a leaf);
//! - [`http`]: the HTTP servers' accept loop with their bounds (timeouts, connection and
//!   request caps, graceful shutdown), under `collect`, `serve` and the stream's metrics;
//! - [`collect`]: `bookrec collect`, the HTTP collector with its durable spool;
//! - [`bus`]: the event bus (Kafka, and the in-process bus of the embedded default);
//! - [`lake`]: Parquet on object storage (local, S3, memory), its layout, compaction;
//! - [`land`]: `bookrec land`, Kafka → lake exactly once, and Debezium CDC;
//! - [`sql`]: the SQL engine: DataFusion sessions over the lake, the lake scan, the query
//!   catalogue of `queries/`, `bookrec sql`;
//! - [`batch`]: `bookrec check`, `bookrec batch` and `bookrec schedule`: the feature DAG,
//!   training and publishing a model version, the cron scheduler;
//! - [`als`]: implicit ALS training, ranking and offline evaluation;
//! - [`store`]: the recommendation database (sqlx: SQLite, MySQL/MariaDB, PostgreSQL);
//! - [`features`]: the realtime feature store (Redis, and an in-memory twin);
//! - [`realtime`]: `bookrec stream`, realtime SQL on micro-batches into the feature store;
//! - [`serve`]: `bookrec serve`, the recommendation API, the blend, the demo page;
//! - [`replay`]: datasets replayed as events (load generation, filling the pipeline);
//! - [`demo`]: `bookrec demo`, the whole pipeline in one process on the embedded backends;
//! - [`cli`]: the command line, which only composes the modules above;
//! - [`fuzzing`]: the fuzz harnesses (cargo fuzz targets in `fuzz/`, corpora replayed by the
//!   tests).

pub mod als;
pub mod batch;
pub mod bus;
pub mod cli;
pub mod collect;
pub mod config;
pub mod demo;
pub mod event;
pub mod features;
pub mod fuzzing;
pub mod http;
pub mod lake;
pub mod land;
pub mod lift;
pub mod realtime;
pub mod replay;
pub mod serve;
pub mod sql;
pub mod store;
