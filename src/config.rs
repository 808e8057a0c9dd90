//! One typed configuration tree.
//!
//! Layers, later ones win: the compiled-in `config/default.toml`, then the file given with
//! `--config`, then `BOOKREC__SECTION__KEY` environment variables (nested keys are joined
//! with `__`, e.g. `BOOKREC__COLLECT__SPOOL__FSYNC=never`). Every struct denies unknown keys,
//! so a typo is an error that names the key and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Serialize};

/// The defaults, compiled in.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "BOOKREC__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot be read: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Figment's message names the key (e.g. `collect.spool.fsync`) and the layer it came from.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("invalid configuration: {key}: {reason}")]
    Value { key: &'static str, reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub log: LogConfig,
    pub kafka: KafkaConfig,
    pub collect: CollectConfig,
    pub lake: LakeConfig,
    pub land: LandConfig,
    pub batch: BatchConfig,
    pub store: StoreConfig,
    pub schedule: ScheduleConfig,
    /// ALS training parameters (`bookrec batch`, and the defaults of `bookrec als fit`)
    pub als: AlsParams,
    pub publish: PublishConfig,
    pub redis: RedisConfig,
    pub stream: StreamConfig,
    pub serve: ServeConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// the recommendation API
    pub listen: SocketAddr,
    /// every database call of a request gives up after this long (Redis: `redis.timeout_ms`)
    pub db_timeout_ms: u64,
    /// the collector the demo page's /tracker.js posts events to
    pub collect_url: String,
    /// how many of the user's latest views seed "similar to" candidates
    pub recent_views: usize,
    /// short-term category interest: the window, in minutes (1-minute buckets, ≤ 60)
    pub category_window_minutes: u32,
    /// "trending": book heat summed over this many minutes (1-minute buckets, ≤ 60)
    pub trending_window_minutes: u32,
    /// how often the shared signals (trending, model version, features' age) are re-read
    pub refresh_ms: u64,
    /// how often the book catalogue is re-read from the lake
    pub catalogue_refresh_secs: u64,
    /// bearer tokens that open the per-user reads (`/api/users/{id}/profile`): a request
    /// must send `Authorization: Bearer <key>`; empty: those reads are refused (401)
    pub api_keys: Vec<String>,
    /// whether recommendations (what the front end needs) also need a key
    pub recommendations_need_key: bool,
    /// the per-model-version list cache is kept under this many bytes (estimated)
    pub cache_max_bytes: usize,
    /// fold-in for users the model does not know: the weight of a recently viewed book and
    /// of an owned (bought) one in the user's least-squares step (as `w_view` and
    /// `w_purchase` of queries/batch/interactions.sql); 0 turns the source off
    #[serde(default = "default_fold_in_view")]
    pub fold_in_view_weight: f64,
    #[serde(default = "default_fold_in_owned")]
    pub fold_in_owned_weight: f64,
    /// read the current model version's similar and popular lists whole from the lake when
    /// it is promoted (no DB read for them afterwards); off: read per key and cache
    #[serde(default = "default_true")]
    pub preload_lists: bool,
    pub weights: BlendWeights,
    /// the API's connection limits and timeouts (also used by `stream.metrics_listen`)
    pub http: HttpConfig,
    /// impression-aware ranking: a book shown to the user at least this many times
    /// (impressions, each counting 2^(−its age / `ignored_half_life_days`), over the last 7
    /// days) without a view or click of it in their recent views is left out; 0 = off
    #[serde(default)]
    pub exclude_ignored_after: f64,
    #[serde(default = "default_ignored_half_life")]
    pub ignored_half_life_days: f64,
    /// what each response showed, logged as `impression` events through the collector
    #[serde(default)]
    pub impressions: ImpressionsConfig,
    /// A/B experiments: each user lands in one variant of each experiment by a hash of
    /// (salt, user id); a variant changes the blend for its users
    #[serde(default)]
    pub experiments: Vec<ExperimentConfig>,
}

/// `[serve.impressions]`: the fire-and-forget log of what each recommendation response
/// showed (one `impression` event per shown book, posted in batches to `serve.collect_url`'s
/// `/api/logs`; a full queue or a collector that stays down drops them, counted).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImpressionsConfig {
    pub enabled: bool,
    /// the collector serve posts to, as serve reaches it (default: `serve.collect_url`,
    /// which is the collector as browsers reach it; in a compose stack the two differ)
    pub collect_url: Option<String>,
    /// responses waiting to be posted, at most (beyond: dropped, counted)
    pub queue: usize,
    /// events per POST, at most (≤ collect.max_batch_events)
    pub batch_events: usize,
    /// a batch goes out at least this often
    pub flush_ms: u64,
    /// one POST gives up after this long
    pub timeout_ms: u64,
    /// attempts per batch (backoff doubling from 100 ms); then the batch is dropped, counted
    pub attempts: u32,
}

impl Default for ImpressionsConfig {
    fn default() -> Self {
        ImpressionsConfig {
            enabled: true,
            collect_url: None,
            queue: 10_000,
            batch_events: 500,
            flush_ms: 200,
            timeout_ms: 2_000,
            attempts: 4,
        }
    }
}

/// `[[serve.experiments]]`: one A/B experiment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// a stable name (an id: letters, digits, `_`, `-`, `.`), in responses and impressions
    pub name: String,
    /// the bucketing hash's salt; default the name. A new salt reshuffles the users
    #[serde(default)]
    pub salt: Option<String>,
    /// share of all users in the experiment (0..=1); the others get the configured blend and
    /// no variant of it
    #[serde(default = "default_traffic")]
    pub traffic: f64,
    /// at least one; users split by the variants' relative `share`
    pub variants: Vec<VariantConfig>,
}

fn default_traffic() -> f64 {
    1.0
}

/// One variant of an experiment: its relative share and what it changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VariantConfig {
    pub name: String,
    #[serde(default = "default_traffic")]
    pub share: f64,
    /// blend weights this variant overrides (the others as `serve.weights`); a source at 0 is
    /// off for the variant (`fold_in = 0`: no fold-in)
    #[serde(default)]
    pub weights: WeightOverrides,
    /// `serve.exclude_ignored_after` for this variant's users (0: off)
    #[serde(default)]
    pub exclude_ignored_after: Option<f64>,
    /// the model version this variant's users are served from: `current` (the default) or
    /// a version id (`bookrec model list`) whose rows are kept (current or retired, within
    /// `publish.keep_versions`). Such a variant reads that version's lists and does no
    /// fold-in (the loaded factors are the current version's); while the version has no
    /// rows (rejected, pruned, unknown) its users get the current version, and the
    /// response's `model_version` says which one served them
    #[serde(default)]
    pub model_version: Option<String>,
}

/// Some of [`BlendWeights`], each optional.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WeightOverrides {
    pub als: Option<f64>,
    pub fold_in: Option<f64>,
    pub similar: Option<f64>,
    pub realtime: Option<f64>,
    pub trending: Option<f64>,
    pub category: Option<f64>,
    pub popular: Option<f64>,
}

impl WeightOverrides {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &BlendWeights) -> BlendWeights {
        BlendWeights {
            als: self.als.unwrap_or(base.als),
            fold_in: self.fold_in.unwrap_or(base.fold_in),
            similar: self.similar.unwrap_or(base.similar),
            realtime: self.realtime.unwrap_or(base.realtime),
            trending: self.trending.unwrap_or(base.trending),
            category: self.category.unwrap_or(base.category),
            popular: self.popular.unwrap_or(base.popular),
        }
    }

    fn values(&self) -> [(&'static str, Option<f64>); 7] {
        [
            ("als", self.als),
            ("fold_in", self.fold_in),
            ("similar", self.similar),
            ("realtime", self.realtime),
            ("trending", self.trending),
            ("category", self.category),
            ("popular", self.popular),
        ]
    }
}

fn default_ignored_half_life() -> f64 {
    1.0
}

fn default_fold_in_view() -> f64 {
    1.0
}

fn default_fold_in_owned() -> f64 {
    10.0
}

fn default_true() -> bool {
    true
}

/// as config/default.toml ships it (a config file written before the key existed)
fn default_realtime_weight() -> f64 {
    3.0
}

fn default_fold_in_weight() -> f64 {
    1.0
}

/// Limits and timeouts of one HTTP server (`collect.http`, `serve.http`); see [`crate::http`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// a connection must deliver a request's headers within this long (from its opening, or
    /// from the end of the previous response on a kept-alive HTTP/1.1 connection)
    pub header_read_timeout_ms: u64,
    /// a request body must arrive whole within this long after its headers (408 otherwise)
    pub body_read_timeout_ms: u64,
    /// a connection with no request in progress is closed after this long
    pub idle_timeout_ms: u64,
    /// open connections at most (further capped below the process's open-file limit); at
    /// the cap the oldest connection that has not yet sent a request is closed for a new one
    pub max_connections: usize,
    /// requests being handled at once; beyond it requests get 503 `overloaded`
    pub max_in_flight: usize,
    /// request line and headers together, at most (431 beyond)
    pub max_header_bytes: usize,
    /// on shutdown, requests in progress get this long to finish before connections close
    pub shutdown_timeout_ms: u64,
}

/// How much each source adds to a book's score (each source's scores are scaled to 0..1).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlendWeights {
    pub als: f64,
    /// the fold-in list of a user the model does not know (reason `fold_in`)
    #[serde(default = "default_fold_in_weight")]
    pub fold_in: f64,
    pub similar: f64,
    /// the user's realtime list `rec:rt:<user>` (the stream's ranked queries)
    #[serde(default = "default_realtime_weight")]
    pub realtime: f64,
    pub trending: f64,
    pub category: f64,
    pub popular: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// the stream's own consumer group (its offsets live in the feature store)
    pub group_id: String,
    /// the analysts' realtime queries
    pub queries_dir: PathBuf,
    /// a micro-batch closes at this many records …
    pub max_batch_events: usize,
    /// … or this long after it opened
    pub max_batch_ms: u64,
    /// events older than the newest event time seen minus this are late: counted, skipped
    pub allowed_lateness_secs: u64,
    /// `/metrics` (Prometheus) of `bookrec stream`; empty: not served
    pub metrics_listen: String,
    /// the longest the broker may hold a fetch for the stream's consumer (librdkafka
    /// fetch.wait.max.ms; kafka.extra overrides it): low for freshness
    pub fetch_wait_max_ms: u64,
    /// what the stream does when the feature store lost its state (offsets gone or lower
    /// than this process applied): `rebuild` (from the lake when the store is empty, then
    /// re-read Kafka from the store's offsets) or `exit` (non-zero, with the reason)
    pub on_state_lost: OnStateLost,
    /// a Redis error or timeout retries the same batch with backoff; failing for longer
    /// than this ends the process
    pub redis_retry_max_secs: u64,
    /// the CDC tables the realtime queries read (e.g. `books`) are re-read from the lake
    /// this often, so catalogue changes arrive without a restart
    pub catalogue_refresh_secs: u64,
}

/// `stream.on_state_lost`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnStateLost {
    Rebuild,
    Exit,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:PASSWORD@]HOST:PORT[/DB]` (the password is redacted when printed)
    pub url: String,
    /// every Redis read gives up after this long
    pub timeout_ms: u64,
    /// a stream batch's apply (one script) gives up after this long
    pub apply_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// recommendations kept per user
    pub k: usize,
    /// similar books kept per book
    pub similar_k: usize,
    /// popular books kept (overall and per category)
    pub popular_k: usize,
    /// model versions kept in the recommendation DB (the current one included)
    pub keep_versions: usize,
    /// a new model whose validation NDCG@k is more than this below the current model's is
    /// not promoted (absolute, e.g. 0.02)
    pub ndcg_tolerance: f64,
    /// share of each user's interactions held out (newest first) to validate a new model
    pub validation_fraction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// `/metrics`, `/healthz`, `/readyz` of `bookrec schedule` ("" = not served)
    #[serde(default)]
    pub metrics_listen: String,
    pub missed_run_policy: MissedRunPolicy,
    pub lease_ttl_secs: u64,
    pub tick_ms: u64,
    pub jobs: Vec<JobConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    pub name: String,
    /// cron with seconds: `sec min hour day-of-month month day-of-week`
    pub cron: String,
    /// the queries to run (empty: all, and the `als` step); `als` selects the ALS step
    /// and what it reads
    #[serde(default)]
    pub select: Vec<String>,
    /// leave the ALS step out (e.g. hourly features, with ALS in a nightly job)
    #[serde(default)]
    pub skip_als: bool,
    /// selectors left out (as `bookrec batch --exclude`)
    #[serde(default)]
    pub exclude: Vec<String>,
    /// parameter overrides (as `bookrec batch --param`): `NAME = "VALUE"` for every query
    /// declaring NAME, `"QUERY.NAME" = "VALUE"` for one query
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MissedRunPolicy {
    /// one catch-up run as soon as possible
    RunOnce,
    /// wait for the next scheduled time
    Skip,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub queries_dir: PathBuf,
    /// `datafusion` (in process) or `ballista://host:port` (parsed by [`Engine::parse`])
    pub engine: String,
}

/// How λ scales per row of the ALS least-squares steps (`als.regularization_scaling`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RegularizationScaling {
    /// λ for every row
    #[default]
    None,
    /// λ × the row's number of observed interactions (ALS-WR) to the power ν
    Frequency,
    /// λ × the row's total confidence to the power ν: `(m + α·Σw)ᵛ` for a row with
    /// weights `w` against the `m` rows of the other side (every cell weighs 1, an observed
    /// one `1 + α·w`; Rendle et al. 2022's `(|Iᵤ| + α₀|I|)ᵛ` in this model's confidences).
    /// The other side's size makes λ follow the data set's size.
    Confidence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    /// Conjugate gradient, `cg_steps` steps per row, warm-started (fast; the default).
    Cg,
    /// Exact solve by Cholesky factorisation (slower; a reference).
    Cholesky,
}

/// ALS training parameters (`[als]`; defaults tuned on ML-100k and kept after the searches
/// on ML-1M and Book-Crossing, see BENCHMARKS.md), trained
/// by [`crate::als`], which calls them `als::Params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlsParams {
    pub factors: usize,
    pub regularization: f32,
    /// `none`: every row's least-squares step has λ; `frequency`: λ times the row's number
    /// of observed interactions to the power `regularization_exponent` (ν = 1 is ALS-WR,
    /// Zhou et al. 2008, as Spark MLlib does; 0 < ν < 1 the frequency-scaled regularisation
    /// of Rendle et al. 2022, "Revisiting the Performance of iALS")
    #[serde(default)]
    pub regularization_scaling: RegularizationScaling,
    /// ν of `frequency` scaling: a row with n interactions gets λ·nᵛ (0..=1; ignored by `none`)
    pub regularization_exponent: f32,
    pub alpha: f32,
    pub iterations: usize,
    pub cg_steps: usize,
    pub solver: Solver,
    pub seed: u64,
    /// Worker threads; 0 = one per core.
    pub threads: usize,
    /// `[als.tune]`: choose λ and its scaling per training run on the run's own validation
    /// window (the fields above are then the first candidate and the fallback)
    pub tune: AlsTune,
}

/// `[als.tune]`: the regularisation a fit trains with, chosen per run by NDCG@10 on a
/// validation window of its own data (`crate::als::eval::tuned`).
///
/// The right λ depends on the data: plain λ wants ~50 on ML-100k and ~400 on ML-1M, and the
/// row-scaled variants that win MovieLens over-regularise Book-Crossing's sparse catalogue
/// (BENCHMARKS.md, "The defaults by validation on two data sets"); no one point is right for
/// every deployment, so by default each fit picks among a few.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlsTune {
    /// off: every fit trains with `[als]`'s own point
    pub enabled: bool,
    /// the newest share of the interactions (by time; a random share when the data has no
    /// times) that validates the candidates, which train on the rest (0 < x <= 0.5)
    pub validation_fraction: f64,
    /// the points tried besides `[als]`'s own (at most [`AlsTune::MAX_CANDIDATES`])
    pub candidates: Vec<TunePoint>,
    /// validation users scored per point, at most (a seeded sample beyond it: each scored
    /// user costs a ranking of the whole catalogue per point)
    pub max_users: usize,
}

/// One regularisation tried by `[als.tune]`; the other parameters are `[als]`'s.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunePoint {
    pub regularization: f32,
    #[serde(default)]
    pub regularization_scaling: RegularizationScaling,
    #[serde(default = "TunePoint::default_exponent")]
    pub regularization_exponent: f32,
}

impl TunePoint {
    fn default_exponent() -> f32 {
        1.0
    }

    /// `base` with this point's regularisation.
    pub fn apply(&self, base: &AlsParams) -> AlsParams {
        AlsParams {
            regularization: self.regularization,
            regularization_scaling: self.regularization_scaling,
            regularization_exponent: self.regularization_exponent,
            ..base.clone()
        }
    }
}

impl AlsTune {
    /// More candidates than this is a grid search: `bookrec eval --search`.
    pub const MAX_CANDIDATES: usize = 16;
}

impl Default for AlsTune {
    fn default() -> AlsTune {
        let point = |regularization_scaling, regularization| TunePoint {
            regularization,
            regularization_scaling,
            regularization_exponent: 1.0,
        };
        AlsTune {
            enabled: true,
            validation_fraction: 0.2,
            max_users: 5_000,
            candidates: vec![
                point(RegularizationScaling::None, 400.0),
                point(RegularizationScaling::Frequency, 1.0),
                point(RegularizationScaling::Confidence, 0.03),
            ],
        }
    }
}

impl Default for AlsParams {
    fn default() -> AlsParams {
        AlsParams {
            factors: 64,
            // plain λ: the scaled variants won ML-1M but lost Book-Crossing (BENCHMARKS.md,
            // "The defaults by validation on two data sets")
            regularization: 50.0,
            regularization_scaling: RegularizationScaling::None,
            regularization_exponent: 1.0,
            alpha: 5.0,
            iterations: 15,
            cg_steps: 3,
            solver: Solver::Cg,
            seed: 42,
            threads: 0,
            tune: AlsTune::default(),
        }
    }
}

impl AlsParams {
    /// λ on every row's diagonal, added once to the shared Gram matrix: λ without
    /// scaling, 0 otherwise (each row then has its own, [`AlsParams::row_lambda`]).
    pub fn shared_lambda(&self) -> f32 {
        match self.regularization_scaling {
            RegularizationScaling::None => self.regularization,
            _ => 0.0,
        }
    }

    /// The factor on λ of a row with `n` observed interactions of total weight `weight_sum`
    /// against `other` rows of the other side: 1 without scaling, nᵛ under `frequency`,
    /// `(other + α·weight_sum)ᵛ` under `confidence` (ν = `regularization_exponent`).
    pub fn row_scale(&self, n: usize, weight_sum: f64, other: usize) -> f64 {
        let nu = self.regularization_exponent as f64;
        match self.regularization_scaling {
            RegularizationScaling::None => 1.0,
            RegularizationScaling::Frequency => (n as f64).powf(nu),
            RegularizationScaling::Confidence => {
                (other as f64 + self.alpha as f64 * weight_sum).powf(nu)
            }
        }
    }

    /// λ on the diagonal of a row with these observed weights beyond the shared part
    /// (λ × [`AlsParams::row_scale`]; 0 without scaling, where λ is shared).
    pub fn row_lambda(&self, vals: &[f32], other: usize) -> f32 {
        match self.regularization_scaling {
            RegularizationScaling::None => 0.0,
            _ => {
                let sum: f64 = vals.iter().map(|&w| w as f64).sum();
                (self.regularization as f64 * self.row_scale(vals.len(), sum, other)) as f32
            }
        }
    }

    /// The first parameter out of its range and why, or `None` when all are in range.
    pub fn out_of_range(&self) -> Option<(&'static str, &'static str)> {
        if self.factors == 0 || self.factors > 4096 {
            return Some(("factors", "must be 1..=4096"));
        }
        if !(self.regularization >= 0.0 && self.regularization.is_finite()) {
            return Some(("regularization", "must be a finite number >= 0"));
        }
        if !(0.0..=1.0).contains(&self.regularization_exponent) {
            return Some(("regularization_exponent", "must be a number in 0..=1"));
        }
        if !(self.alpha >= 0.0 && self.alpha.is_finite()) {
            return Some(("alpha", "must be a finite number >= 0"));
        }
        if self.iterations == 0 {
            return Some(("iterations", "must be at least 1"));
        }
        if self.solver == Solver::Cg && self.cg_steps == 0 {
            return Some(("cg_steps", "must be at least 1 with the cg solver"));
        }
        let t = &self.tune;
        if !(t.validation_fraction > 0.0 && t.validation_fraction <= 0.5) {
            return Some(("tune.validation_fraction", "must be a number in (0, 0.5]"));
        }
        if !(1..=10_000_000).contains(&t.max_users) {
            return Some(("tune.max_users", "must be 1..=10000000"));
        }
        if t.candidates.len() > AlsTune::MAX_CANDIDATES {
            return Some((
                "tune.candidates",
                "at most 16 points (a larger grid is `bookrec eval --search`)",
            ));
        }
        for c in &t.candidates {
            if !(c.regularization >= 0.0 && c.regularization.is_finite()) {
                return Some((
                    "tune.candidates",
                    "each regularization must be a finite number >= 0",
                ));
            }
            if !(0.0..=1.0).contains(&c.regularization_exponent) {
                return Some((
                    "tune.candidates",
                    "each regularization_exponent must be a number in 0..=1",
                ));
            }
        }
        None
    }
}

/// Where batch SQL runs (`batch.engine`): a config type, parsed here; [`crate::sql`]
/// interprets it (opens the session on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// `datafusion`: DataFusion in this process
    InProcess,
    /// `ballista://host:port`: a Ballista cluster, through its scheduler
    Ballista { host: String, port: u16 },
}

impl Engine {
    /// Parses `datafusion` or `ballista://host:port`; the error names the key, the value
    /// and what is accepted.
    pub fn parse(text: &str) -> Result<Engine, ConfigError> {
        let bad = |reason: &str| ConfigError::Value {
            key: "batch.engine",
            reason: format!("{text:?}: {reason}"),
        };
        let trimmed = text.trim();
        if trimmed == "datafusion" {
            return Ok(Engine::InProcess);
        }
        let Some(rest) = trimmed.strip_prefix("ballista://") else {
            return Err(bad(
                "use \"datafusion\" (in process) or \"ballista://HOST:PORT\" (a Ballista scheduler)",
            ));
        };
        let (host, port) = rest
            .trim_end_matches('/')
            .rsplit_once(':')
            .ok_or_else(|| bad("ballista://HOST:PORT needs the scheduler's port (e.g. 50050)"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(&format!("{port:?} is not a port number")))?;
        if host.is_empty() || host.contains('/') {
            return Err(bad("ballista://HOST:PORT needs a host name or address"));
        }
        Ok(Engine::Ballista {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::InProcess => f.write_str("datafusion"),
            Engine::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LakeConfig {
    pub url: String,
    pub s3_endpoint: String,
    pub s3_region: String,
    pub s3_access_key_id: String,
    pub s3_secret_access_key: String,
    pub s3_allow_http: bool,
    pub s3_path_style: bool,
    /// The source views (`queries/sources/`): SQL that turns the lake's raw CDC tables into
    /// the canonical `books`, `users`, `engagement`; empty = none
    #[serde(default)]
    pub sources_dir: String,
    /// HDFS client settings (`dfs.*`, `fs.*`) for `hdfs://` lakes, over the Hadoop
    /// configuration files of `$HADOOP_CONF_DIR`
    #[serde(default)]
    pub hdfs_config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LandConfig {
    pub group_id: String,
    pub max_file_rows: usize,
    pub max_file_bytes: usize,
    pub max_file_age_ms: u64,
    pub max_buffer_bytes: usize,
    pub dedup_window_secs: u64,
    pub dedup_max_entries: usize,
    pub poll_timeout_ms: u64,
    /// `/metrics`, `/healthz`, `/readyz` of `bookrec land` ("" = not served)
    #[serde(default)]
    pub metrics_listen: String,
    /// Debezium topic → lake table (`cdc/<table>/`, queryable as `<table>`)
    pub cdc: BTreeMap<String, String>,
    /// The topics of `cdc` whose records were flattened by Debezium's
    /// `ExtractNewRecordState` / `ExtractNewDocumentState` transformation
    #[serde(default)]
    pub cdc_unwrapped: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub filter: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub dlq_topic: String,
    pub client_id: String,
    pub create_topics: bool,
    pub partitions: i32,
    /// partitions of the Debezium topics `bookrec init` / `land` create (1 keeps each
    /// table's changes in one order)
    pub cdc_partitions: i32,
    pub replication_factor: i32,
    pub compression: Compression,
    pub linger_ms: u64,
    pub batch_size_bytes: u64,
    /// `land`/`stream --until-caught-up` give up (an error naming the group and topics) when
    /// no partition has been assigned for this long; while waiting, they log what they wait
    /// for every few seconds
    pub assignment_timeout_secs: u64,
    /// librdkafka properties passed through verbatim.
    pub extra: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    pub listen: SocketAddr,
    pub max_event_bytes: usize,
    /// events whose clock-corrected time is older than this at receipt are rejected
    /// (`invalid_timestamp`)
    pub max_event_age_secs: u64,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub dedup_window_secs: u64,
    pub dedup_max_entries: usize,
    /// ids of one client key (user or anonymous id) remembered per dedup generation
    pub dedup_max_per_client: usize,
    pub cors_allowed_origins: Vec<String>,
    /// write keys per source (`name = "key"`): when any is set, a request without an
    /// `Origin` (a server-side sender) must send one as `X-Write-Key`
    pub write_keys: BTreeMap<String, String>,
    pub shutdown_timeout_ms: u64,
    pub spool: SpoolConfig,
    pub http: HttpConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    pub fsync_interval_ms: u64,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync before the 202 is sent (group commit across concurrent requests).
    Always,
    /// fsync every `fsync_interval_ms`; a 202 survives a process crash, not a power cut.
    Interval,
    /// never fsync explicitly.
    Never,
}

impl HttpConfig {
    fn validate(&self, section: &'static str) -> Result<(), ConfigError> {
        let checks: [(&'static str, u64, u64); 7] = [
            ("header_read_timeout_ms", self.header_read_timeout_ms, 1),
            ("body_read_timeout_ms", self.body_read_timeout_ms, 1),
            ("idle_timeout_ms", self.idle_timeout_ms, 1),
            ("max_connections", self.max_connections as u64, 1),
            ("max_in_flight", self.max_in_flight as u64, 1),
            // hyper's smallest read buffer
            ("max_header_bytes", self.max_header_bytes as u64, 8192),
            ("shutdown_timeout_ms", self.shutdown_timeout_ms, 1),
        ];
        for (key, value, min) in checks {
            if value < min {
                return Err(ConfigError::Invalid(format!(
                    "{section}.{key}: {value} is below the minimum {min}"
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            // Read it ourselves so that a missing file is an error, not an empty layer.
            std::fs::metadata(path).map_err(|source| ConfigError::ReadFile {
                path: path.to_path_buf(),
                source,
            })?;
            figment = figment.merge(Toml::file(path));
        }
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        figment = figment.merge(EnvLayer(env.clone()));
        let mut config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Invalid(describe_figment_error(e)))?;
        // `land.cdc` is a mapping an operator states whole: a file's or the environment's
        // replaces the default one instead of being merged into it (so `{}` means none)
        let own = |layer: Figment| {
            layer
                .extract_inner::<Option<BTreeMap<String, String>>>("land.cdc")
                .ok()
                .flatten()
        };
        let from_file = file.and_then(|p| own(Figment::from(Toml::file(p))));
        if let Some(cdc) = own(Figment::from(EnvLayer(env))).or(from_file) {
            config.land.cdc = cdc;
        }
        config.validate()?;
        Ok(config)
    }

    /// `serve.experiments`: names unique ids, shares in range, weights as `serve.weights`'.
    fn validate_experiments(&self) -> Result<(), ConfigError> {
        let is_id = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        let bad =
            |reason: String| Err(ConfigError::Invalid(format!("serve.experiments: {reason}")));
        let mut names = std::collections::BTreeSet::new();
        for (n, e) in self.serve.experiments.iter().enumerate() {
            let at = format!("experiment {} ({:?})", n + 1, e.name);
            if !is_id(&e.name) {
                return bad(format!(
                    "{at}: name must be 1 to 64 letters, digits, '_', '-' or '.'"
                ));
            }
            if !names.insert(e.name.as_str()) {
                return bad(format!("{at}: the name is used twice"));
            }
            if !(0.0..=1.0).contains(&e.traffic) {
                return bad(format!(
                    "{at}: traffic {} is not between 0 and 1",
                    e.traffic
                ));
            }
            if e.variants.is_empty() {
                return bad(format!("{at}: needs at least one variant"));
            }
            let mut variants = std::collections::BTreeSet::new();
            for v in &e.variants {
                let vat = format!("{at}, variant {:?}", v.name);
                if !is_id(&v.name) {
                    return bad(format!(
                        "{vat}: name must be 1 to 64 letters, digits, '_', '-' or '.'"
                    ));
                }
                if !variants.insert(v.name.as_str()) {
                    return bad(format!("{vat}: the name is used twice"));
                }
                if !(v.share > 0.0 && v.share <= 1000.0) {
                    return bad(format!(
                        "{vat}: share {} is not a number above 0 (at most 1000)",
                        v.share
                    ));
                }
                if let Some(m) = &v.model_version
                    && !is_id(m)
                {
                    return bad(format!(
                        "{vat}: model_version {m:?}: \"current\" or a version id (1 to 64 \
                         letters, digits, '_', '-' or '.')"
                    ));
                }
                if let Some(n) = v.exclude_ignored_after
                    && !(0.0..=1000.0).contains(&n)
                {
                    return bad(format!(
                        "{vat}: exclude_ignored_after {n}: a number from 0 (off) to 1000"
                    ));
                }
                for (key, value) in v.weights.values() {
                    if let Some(w) = value
                        && !(0.0..=1000.0).contains(&w)
                    {
                        return bad(format!("{vat}: weights.{key} {w}: a number from 0 to 1000"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks that serde cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.collect;
        let l = &self.land;
        let positive: [(&'static str, u64); 24] = [
            ("land.max_file_rows", l.max_file_rows as u64),
            ("land.max_file_bytes", l.max_file_bytes as u64),
            ("land.max_buffer_bytes", l.max_buffer_bytes as u64),
            ("land.max_file_age_ms", l.max_file_age_ms),
            ("collect.max_event_bytes", c.max_event_bytes as u64),
            ("collect.max_event_age_secs", c.max_event_age_secs),
            ("collect.max_batch_bytes", c.max_batch_bytes as u64),
            ("collect.max_batch_events", c.max_batch_events as u64),
            ("collect.dedup_max_entries", c.dedup_max_entries as u64),
            (
                "collect.dedup_max_per_client",
                c.dedup_max_per_client as u64,
            ),
            ("collect.spool.max_bytes", c.spool.max_bytes),
            ("collect.spool.segment_bytes", c.spool.segment_bytes),
            ("collect.spool.max_in_flight", c.spool.max_in_flight as u64),
            ("kafka.partitions", self.kafka.partitions.max(0) as u64),
            (
                "kafka.cdc_partitions",
                self.kafka.cdc_partitions.max(0) as u64,
            ),
            ("redis.timeout_ms", self.redis.timeout_ms),
            ("redis.apply_timeout_ms", self.redis.apply_timeout_ms),
            (
                "stream.redis_retry_max_secs",
                self.stream.redis_retry_max_secs,
            ),
            (
                "kafka.assignment_timeout_secs",
                self.kafka.assignment_timeout_secs,
            ),
            (
                "stream.max_batch_events",
                self.stream.max_batch_events as u64,
            ),
            ("stream.max_batch_ms", self.stream.max_batch_ms),
            ("serve.db_timeout_ms", self.serve.db_timeout_ms),
            ("serve.refresh_ms", self.serve.refresh_ms),
            ("serve.cache_max_bytes", self.serve.cache_max_bytes as u64),
        ];
        for (section, h) in [("collect.http", &c.http), ("serve.http", &self.serve.http)] {
            h.validate(section)?;
        }
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError::Value {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if c.max_event_bytes > c.max_batch_bytes {
            return Err(ConfigError::Value {
                key: "collect.max_event_bytes",
                reason: format!(
                    "{} is larger than collect.max_batch_bytes ({})",
                    c.max_event_bytes, c.max_batch_bytes
                ),
            });
        }
        for (key, minutes) in [
            (
                "serve.category_window_minutes",
                self.serve.category_window_minutes,
            ),
            (
                "serve.trending_window_minutes",
                self.serve.trending_window_minutes,
            ),
        ] {
            if !(1..=60).contains(&minutes) {
                return Err(ConfigError::Value {
                    key,
                    reason: format!(
                        "{minutes}: between 1 and 60 (the realtime buckets live an hour)"
                    ),
                });
            }
        }
        let w = &self.serve.weights;
        for (key, value) in [
            ("serve.weights.als", w.als),
            ("serve.weights.fold_in", w.fold_in),
            ("serve.weights.similar", w.similar),
            ("serve.weights.realtime", w.realtime),
            ("serve.weights.trending", w.trending),
            ("serve.weights.category", w.category),
            ("serve.weights.popular", w.popular),
            ("serve.fold_in_view_weight", self.serve.fold_in_view_weight),
            (
                "serve.fold_in_owned_weight",
                self.serve.fold_in_owned_weight,
            ),
        ] {
            // a weight is a share of a score: a negative, huge or NaN one ranks nonsense
            if !(0.0..=1000.0).contains(&value) {
                return Err(ConfigError::Value {
                    key,
                    reason: format!("{value}: a number from 0 to 1000 (0 turns the source off)"),
                });
            }
        }
        self.validate_experiments()?;
        if !(0.0..=1000.0).contains(&self.serve.exclude_ignored_after) {
            return Err(ConfigError::Value {
                key: "serve.exclude_ignored_after",
                reason: format!(
                    "{}: a number from 0 (off) to 1000",
                    self.serve.exclude_ignored_after
                ),
            });
        }
        if !(self.serve.ignored_half_life_days > 0.0 && self.serve.ignored_half_life_days <= 365.0)
        {
            return Err(ConfigError::Value {
                key: "serve.ignored_half_life_days",
                reason: format!(
                    "{}: a number of days above 0 (at most 365)",
                    self.serve.ignored_half_life_days
                ),
            });
        }
        let im = &self.serve.impressions;
        for (key, value) in [
            ("serve.impressions.queue", im.queue as u64),
            ("serve.impressions.batch_events", im.batch_events as u64),
            ("serve.impressions.flush_ms", im.flush_ms),
            ("serve.impressions.timeout_ms", im.timeout_ms),
            ("serve.impressions.attempts", u64::from(im.attempts)),
        ] {
            if value == 0 {
                return Err(ConfigError::Value {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        if let Some((name, why)) = self.als.out_of_range() {
            return Err(ConfigError::Invalid(format!(
                "als: als parameter {name}: {why}"
            )));
        }
        let p = &self.publish;
        if p.k == 0 || p.similar_k == 0 || p.popular_k == 0 || p.keep_versions == 0 {
            return Err(ConfigError::Value {
                key: "publish",
                reason: "k, similar_k, popular_k and keep_versions must be greater than 0".into(),
            });
        }
        if !(p.validation_fraction > 0.0 && p.validation_fraction < 1.0) {
            return Err(ConfigError::Value {
                key: "publish.validation_fraction",
                reason: format!("{} is not between 0 and 1", p.validation_fraction),
            });
        }
        if p.ndcg_tolerance.is_nan() || p.ndcg_tolerance < 0.0 {
            return Err(ConfigError::Value {
                key: "publish.ndcg_tolerance",
                reason: format!("{} is not a number >= 0", p.ndcg_tolerance),
            });
        }
        let mut fed: BTreeMap<&str, &str> = BTreeMap::new();
        for (topic, table) in &self.land.cdc {
            // a table's changes are ordered by partition and offset: one topic per table
            if let Some(other) = fed.insert(table.as_str(), topic.as_str()) {
                return Err(ConfigError::Value {
                    key: "land.cdc",
                    reason: format!(
                        "{other:?} and {topic:?} both feed table {table:?}; a table takes one topic"
                    ),
                });
            }
            let ok = !table.is_empty()
                && table
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !["events", "dead_letters"].contains(&table.as_str());
            if !ok || topic == &self.kafka.topic {
                return Err(ConfigError::Value {
                    key: "land.cdc",
                    reason: format!(
                        "{topic:?} = {table:?}: table names are [a-z0-9_]+, not events or \
                         dead_letters, and the events topic is not a CDC topic"
                    ),
                });
            }
        }
        if let Some(t) = self
            .land
            .cdc_unwrapped
            .iter()
            .find(|t| !self.land.cdc.contains_key(*t))
        {
            return Err(ConfigError::Value {
                key: "land.cdc_unwrapped",
                reason: format!("{t:?} is not a topic of land.cdc"),
            });
        }
        Engine::parse(&self.batch.engine)?;
        // hdfs:// is accepted here whether or not the binary has the `hdfs` feature: opening
        // the lake says how to build one that has it
        let scheme_ok = ["file://", "s3://", "hdfs://", "viewfs://", "memory://"]
            .iter()
            .any(|s| self.lake.url.starts_with(s));
        if !scheme_ok {
            return Err(ConfigError::Value {
                key: "lake.url",
                reason: format!(
                    "{:?}: use file://PATH, s3://BUCKET[/PREFIX], hdfs://NAMENODE[:PORT]/PATH \
                     or memory://",
                    redact_url(&self.lake.url)
                ),
            });
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(ConfigError::Value {
                key: "kafka.brokers",
                reason: "must name at least one host:port".into(),
            });
        }
        if self.kafka.topic.trim().is_empty() || self.kafka.topic == self.kafka.dlq_topic {
            return Err(ConfigError::Value {
                key: "kafka.topic",
                reason: "must be non-empty and differ from kafka.dlq_topic".into(),
            });
        }
        if self.kafka.replication_factor < 1 {
            return Err(ConfigError::Value {
                key: "kafka.replication_factor",
                reason: "must be at least 1".into(),
            });
        }
        for origin in &c.cors_allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(ConfigError::Value {
                    key: "collect.cors_allowed_origins",
                    reason: format!("{origin:?} is neither \"*\" nor an http(s) origin"),
                });
            }
        }
        Ok(())
    }

    /// The effective config as TOML, with secrets redacted.
    pub fn to_redacted_toml(&self) -> Result<String, ConfigError> {
        let mut redacted = self.clone();
        if !redacted.lake.s3_secret_access_key.is_empty() {
            redacted.lake.s3_secret_access_key = REDACTED.to_string();
        }
        redacted.lake.url = redact_url(&redacted.lake.url);
        redacted.store.url = redact_url(&redacted.store.url);
        redacted.redis.url = redact_url(&redacted.redis.url);
        for key in redacted.serve.api_keys.iter_mut() {
            *key = REDACTED.to_string();
        }
        for key in redacted.collect.write_keys.values_mut() {
            *key = REDACTED.to_string();
        }
        for (key, value) in redacted.kafka.extra.iter_mut() {
            if is_secret_key(key) {
                *value = REDACTED.to_string();
            }
        }
        toml::to_string_pretty(&redacted).map_err(|e| ConfigError::Invalid(e.to_string()))
    }
}

pub const REDACTED: &str = "<redacted>";

/// Keys whose values never appear in logs or `bookrec config`.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "key",
        "pem",
        "sasl",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// Whether `given` equals one of `keys` (API keys, write keys): every key is compared, each
/// in constant time, so the answer's timing does not tell which bytes matched.
pub fn is_one_of<'a>(given: &[u8], keys: impl IntoIterator<Item = &'a String>) -> bool {
    use subtle::ConstantTimeEq;
    keys.into_iter()
        .fold(subtle::Choice::from(0), |acc, k| {
            acc | given.ct_eq(k.as_bytes())
        })
        .into()
}

/// Replaces the password of a URL's user-info (`scheme://user:pass@host`) and the values of
/// query parameters with secret names (`?password=…`, `?sslkey=…`, see [`is_secret_key`])
/// with `<redacted>`.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = redact_userinfo(base);
    if let Some(q) = query {
        let pairs: Vec<String> = q
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if is_secret_key(k) => format!("{k}={REDACTED}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:{}{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            REDACTED,
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

/// `BOOKREC__SECTION__KEY=value` pairs as a figment layer. Values are parsed like figment's
/// own `Env` provider does (numbers, booleans, `[a, b]` arrays, strings).
struct EnvLayer(Vec<(String, String)>);

impl figment::Provider for EnvLayer {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (name, raw) in &self.0 {
            let Some(key) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let dotted = key
                .split("__")
                .map(|part| part.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(".");
            let value: figment::value::Value = match raw.parse() {
                Ok(v) => v,
                Err(never) => match never {},
            };
            if let figment::value::Value::Dict(_, nested) = figment::util::nest(&dotted, value) {
                merge_dict(&mut dict, nested);
            }
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_dict(into: &mut figment::value::Dict, from: figment::value::Dict) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (
                Some(figment::value::Value::Dict(_, existing)),
                figment::value::Value::Dict(_, new),
            ) => merge_dict(existing, new),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn describe_figment_error(error: figment::Error) -> String {
    let mut out = Vec::new();
    for e in error {
        let key = if e.path.is_empty() {
            String::new()
        } else {
            format!("key `{}`: ", e.path.join("."))
        };
        let source = e
            .metadata
            .as_ref()
            .map(|m| {
                let src = e
                    .metadata
                    .as_ref()
                    .and_then(|md| md.source.as_ref())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                format!(" [from {}{}]", m.name, src)
            })
            .unwrap_or_default();
        out.push(format!("{key}{}{source}", e.kind));
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_interface_table() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults load");
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.kafka.topic, "user_behavior_logs");
        assert_eq!(c.kafka.dlq_topic, "user_behavior_logs.dlq");
        assert_eq!(c.collect.listen.to_string(), "127.0.0.1:5006");
        assert_eq!(c.collect.max_event_bytes, 32 * 1024);
        assert_eq!(c.collect.max_batch_bytes, 1024 * 1024);
        assert_eq!(c.collect.max_batch_events, 500);
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = \"k1:9092\"\n[collect.spool]\nfsync = \"never\"\n",
        )
        .expect("write");
        let c = Config::load_with_env(
            Some(&file),
            env(&[
                ("BOOKREC__KAFKA__BROKERS", "k2:9092,k3:9092"),
                ("BOOKREC__COLLECT__MAX_BATCH_EVENTS", "100"),
                ("OTHER__KAFKA__BROKERS", "ignored"),
            ]),
        )
        .expect("loads");
        assert_eq!(c.kafka.brokers, "k2:9092,k3:9092");
        assert_eq!(c.collect.max_batch_events, 100);
        assert_eq!(c.collect.spool.fsync, FsyncPolicy::Never);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = Config::load_with_env(None, env(&[("BOOKREC__KAFKA__BROKER", "x:1")]))
            .expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("broker"), "{msg}");
        assert!(msg.contains("kafka"), "{msg}");
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[colect]\nlisten = \"1.2.3.4:5\"\n").expect("write");
        let msg = Config::load_with_env(Some(&file), env(&[]))
            .expect_err("unknown section")
            .to_string();
        assert!(msg.contains("colect"), "{msg}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (key, value, needle) in [
            ("BOOKREC__COLLECT__LISTEN", "not-an-addr", "collect.listen"),
            (
                "BOOKREC__COLLECT__SPOOL__FSYNC",
                "sometimes",
                "collect.spool.fsync",
            ),
            (
                "BOOKREC__COLLECT__MAX_BATCH_EVENTS",
                "0",
                "collect.max_batch_events",
            ),
            (
                "BOOKREC__COLLECT__MAX_EVENT_BYTES",
                "-3",
                "collect.max_event_bytes",
            ),
            (
                "BOOKREC__COLLECT__CORS_ALLOWED_ORIGINS",
                "[\"ftp://x\"]",
                "cors_allowed_origins",
            ),
        ] {
            let msg = Config::load_with_env(None, env(&[(key, value)]))
                .expect_err(key)
                .to_string();
            assert!(msg.contains(needle), "{key}={value}: {msg}");
        }
        let msg = Config::load_with_env(Some(Path::new("/nonexistent/b.toml")), env(&[]))
            .expect_err("missing file")
            .to_string();
        assert!(msg.contains("/nonexistent/b.toml"), "{msg}");
    }

    #[test]
    fn a_cdc_mapping_of_the_environment_or_a_file_replaces_the_default() {
        let defaults = Config::load_with_env(None, Vec::new()).expect("defaults");
        assert_eq!(defaults.land.cdc.len(), 5, "the seed's five topics");
        let none = Config::load_with_env(None, vec![("BOOKREC__LAND__CDC".into(), "{}".into())])
            .expect("empty mapping");
        assert!(none.land.cdc.is_empty(), "{:?}", none.land.cdc);
        let one = Config::load_with_env(
            None,
            vec![("BOOKREC__LAND__CDC".into(), "{\"a.b.c\"=\"t\"}".into())],
        )
        .expect("one topic");
        assert_eq!(one.land.cdc.len(), 1);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bookrec.toml");
        std::fs::write(&file, "[land]\ncdc = { \"x.y.z\" = \"u\" }\n").expect("write");
        let from_file = Config::load_with_env(Some(&file), Vec::new()).expect("file");
        assert_eq!(
            from_file.land.cdc.keys().collect::<Vec<_>>(),
            vec!["x.y.z"],
            "the file's mapping, not merged with the default"
        );
        // the environment wins over the file
        let both = Config::load_with_env(
            Some(&file),
            vec![("BOOKREC__LAND__CDC".into(), "{}".into())],
        )
        .expect("both");
        assert!(both.land.cdc.is_empty());
    }

    #[test]
    fn cdc_topics_feed_one_table_each_and_unwrapped_topics_are_cdc_topics() {
        for (cdc, unwrapped, needle) in [
            (
                "{\"a.t\"=\"books\",\"b.t\"=\"books\"}",
                "[]",
                "both feed table \"books\"",
            ),
            ("{\"a.t\"=\"books\"}", "[\"c.t\"]", "land.cdc_unwrapped"),
        ] {
            let msg = Config::load_with_env(
                None,
                env(&[
                    ("BOOKREC__LAND__CDC", cdc),
                    ("BOOKREC__LAND__CDC_UNWRAPPED", unwrapped),
                ]),
            )
            .expect_err(needle)
            .to_string();
            assert!(msg.contains(needle), "{cdc} {unwrapped}: {msg}");
        }
        let ok = Config::load_with_env(
            None,
            env(&[
                ("BOOKREC__LAND__CDC", "{\"a.t\"=\"books\"}"),
                ("BOOKREC__LAND__CDC_UNWRAPPED", "[\"a.t\"]"),
            ]),
        )
        .expect("valid");
        assert_eq!(ok.land.cdc_unwrapped, vec!["a.t".to_string()]);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = Config::load_with_env(
            None,
            env(&[(
                "BOOKREC__KAFKA__EXTRA",
                "{\"sasl.password\"=\"hunter2\",\"security.protocol\"=\"SASL_SSL\"}",
            )]),
        )
        .expect("loads");
        assert_eq!(c.kafka.extra["sasl.password"], "hunter2");
        let printed = c.to_redacted_toml().expect("toml");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("SASL_SSL"), "{printed}");
        assert_eq!(
            redact_url("postgres://db/x?user=a&password=hunter2&sslkey=/k.pem&sslmode=require"),
            "postgres://db/x?user=a&password=<redacted>&sslkey=<redacted>&sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root:pw@db:3306/x?ssl-mode=REQUIRED"),
            "mysql://root:<redacted>@db:3306/x?ssl-mode=REQUIRED"
        );
        for key in [
            "sasl.username",
            "ssl.key.password",
            "ssl.key.pem",
            "oauth.token",
        ] {
            assert!(is_secret_key(key), "{key}");
        }
        assert!(!is_secret_key("security.protocol"));
        assert_eq!(
            redact_url("mysql://root:pw@db:3306/x"),
            "mysql://root:<redacted>@db:3306/x"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
