//! Implicit ALS: the interaction matrix ([`matrix`]), training ([`train`]), ranking
//! ([`recommend`]), offline evaluation ([`eval`]) and the file formats a fit reads and writes
//! ([`files`]). Training, ranking and evaluation are synchronous and IO-free; `files` is the
//! only part that touches the file system, through arrow and parquet.

pub mod eval;
pub mod files;
pub mod foldin;
pub mod kernel;
pub mod matrix;
pub mod recommend;
pub mod train;

pub use foldin::FoldIn;
pub use matrix::{Csr, IdMap, Interactions, Triple};
pub use train::{Model, Params, Progress, RegularizationScaling, Solver, fit};

#[derive(Debug, thiserror::Error)]
pub enum AlsError {
    #[error("als parameter {name}: {reason}")]
    Param { name: &'static str, reason: String },
    #[error("the interaction matrix is empty: nothing to train on")]
    Empty,
    #[error("interaction weight {0} is not a finite number >= 0")]
    Weight(f32),
    #[error("this split needs interaction times, and the input has no time column")]
    NoTimes,
    #[error("thread pool: {0}")]
    Threads(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}: column {column}: {reason}")]
    Column {
        path: String,
        column: String,
        reason: String,
    },
    #[error("{path} row {row}: {reason}")]
    Row {
        path: String,
        row: usize,
        reason: String,
    },
}
