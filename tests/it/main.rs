//! Integration tests: one binary. Tests that need Kafka use the broker `.ci/run` starts
//! (127.0.0.1:9092, or BOOKREC_TEST_KAFKA) with topics of their own, or start a private
//! tansu broker when they must stop and restart it.

mod als;
mod ballista;
mod batch;
mod bus;
mod cdc_fixtures;
mod cdc_state;
mod cli;
mod collect;
mod compose;
mod compose_run;
mod debezium;
mod demo;
mod docs;
mod features;
mod fuzz_corpus;
mod http_limits;
mod land;
mod lift;
mod modules;
mod ops;
mod publish;
mod scan;
mod schedule;
mod serve;
mod spool_faults;
mod store;
mod stream;
mod stream_faults;
mod support;
