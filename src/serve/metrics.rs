//! Prometheus metrics of `bookrec serve`: request latency per route and status class,
//! backend call latency and errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

pub struct ServeMetrics {
    registry: Registry,
    requests: HistogramVec,
    backend: HistogramVec,
    backend_errors: IntCounterVec,
    fold_in: HistogramVec,
    impressions: IntCounterVec,
}

const LATENCY: [f64; 14] = [
    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

impl ServeMetrics {
    /// The registry, for the HTTP server's own metrics ([`crate::http::HttpMetrics`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<ServeMetrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "bookrec_serve_request_seconds",
                "Request latency by route and status class",
            )
            .buckets(LATENCY.to_vec()),
            &["route", "status"],
        )?;
        let backend = HistogramVec::new(
            HistogramOpts::new(
                "bookrec_serve_backend_seconds",
                "Latency of backend calls (db, redis)",
            )
            .buckets(LATENCY.to_vec()),
            &["backend"],
        )?;
        let backend_errors = IntCounterVec::new(
            Opts::new(
                "bookrec_serve_backend_errors_total",
                "Backend calls that failed or timed out",
            ),
            &["backend"],
        )?;
        let fold_in = HistogramVec::new(
            HistogramOpts::new(
                "bookrec_serve_fold_in_seconds",
                "Fold-in of a user the model does not know: solve and rank, by whether it \
                 gave a list (a user none of whose books the model knows gets none)",
            )
            .buckets(LATENCY.to_vec()),
            &["listed"],
        )?;
        let impressions = IntCounterVec::new(
            Opts::new(
                "bookrec_serve_impression_events_total",
                "Impression events (one per shown book) by outcome: sent, rejected (by the \
                 collector), dropped_queue_full, dropped_unreachable",
            ),
            &["outcome"],
        )?;
        for outcome in [
            "sent",
            "rejected",
            "dropped_queue_full",
            "dropped_unreachable",
        ] {
            impressions.with_label_values(&[outcome]);
        }
        registry.register(Box::new(impressions.clone()))?;
        registry.register(Box::new(fold_in.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(backend.clone()))?;
        registry.register(Box::new(backend_errors.clone()))?;
        Ok(ServeMetrics {
            registry,
            requests,
            backend,
            backend_errors,
            fold_in,
            impressions,
        })
    }

    pub fn impressions(&self, outcome: &str, events: u64) {
        self.impressions
            .with_label_values(&[outcome])
            .inc_by(events);
    }

    pub fn fold_in(&self, took: Duration, listed: bool) {
        self.fold_in
            .with_label_values(&[if listed { "yes" } else { "no" }])
            .observe(took.as_secs_f64());
    }

    pub fn backend(&self, name: &str, took: Duration) {
        self.backend
            .with_label_values(&[name])
            .observe(took.as_secs_f64());
    }

    pub fn backend_error(&self, name: &str) {
        self.backend_errors.with_label_values(&[name]).inc();
    }

    pub fn text(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// Middleware: times every request under its route pattern.
pub async fn track(State(m): State<Arc<ServeMetrics>>, req: Request, next: Next) -> Response {
    let route = route_of(&req);
    let started = Instant::now();
    let resp = next.run(req).await;
    let class = format!("{}xx", resp.status().as_u16() / 100);
    m.requests
        .with_label_values(&[route.as_str(), class.as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Route label for the latency histogram.
fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into())
}
