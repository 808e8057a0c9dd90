//! Batch orchestration: what runs at 03:30 and publishes the model.
//!
//! - [`runner`]: `bookrec check` and `bookrec batch` — the feature queries of
//!   `queries/batch/` as a DAG on a [`crate::sql`] session, their outputs (lake and store),
//!   the run record, and the ALS step;
//! - [`publish`]: trains the implicit ALS model on the `interactions` output and publishes a
//!   versioned model (recommendations, similar and popular books) to the [`crate::store`];
//! - [`schedule`]: `bookrec schedule` — cron-driven runs, one at a time across processes
//!   (a lease in the store), with run history.
//!
//! The SQL engine itself (the session over the lake, the lake scan, the query catalogue)
//! lives in [`crate::sql`]; this module only sequences it.

pub mod datatest;
pub mod docs;
pub mod experiment;
pub mod publish;
pub mod runner;
pub mod schedule;
