//! The raw consume rate of a topic: a consumer-group member (the same client settings as
//! `bookrec land`) that reads every record to the high watermarks and does nothing else.
//! The limit `bookrec land` is compared with in `scripts/bench-land`.
//!
//!     cargo run --release --example consume_rate -- <brokers> <topic> [librdkafka.key=value …]

use std::time::{Duration, Instant};

use bookrec::bus::{Consumer, KafkaConsumer};
use bookrec::config::Config;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(brokers), Some(topic)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: consume_rate <brokers> <topic>");
    };
    let mut cfg = Config::load_with_env(None, Vec::new())?;
    cfg.kafka.brokers = brokers;
    // optional librdkafka settings as key=value arguments (e.g. fetch.wait.max.ms=20, the
    // stream consumer's default), so the raw rate is measured with the same client settings
    for kv in args {
        if let Some((k, v)) = kv.split_once('=') {
            cfg.kafka.extra.insert(k.to_string(), v.to_string());
        }
    }
    let group = format!("consume-rate-{}", uuid::Uuid::new_v4());
    let start = Instant::now();
    let consumer = KafkaConsumer::new(&cfg.kafka, &group, &[&topic])?;
    let mut highs = std::collections::HashMap::new();
    let mut seen: u64 = 0;
    let mut bytes: u64 = 0;
    let mut done = std::collections::HashSet::new();
    loop {
        let polled = consumer.poll(Duration::from_millis(100));
        let idle = polled.is_none();
        if let Some(r) = polled {
            let r = r?;
            seen += 1;
            bytes += r.payload.as_ref().map_or(0, Vec::len) as u64;
            let high = match highs.get(&r.partition) {
                Some(h) => *h,
                None => {
                    let (_, h) =
                        consumer.watermarks(&topic, r.partition, Duration::from_secs(10))?;
                    highs.insert(r.partition, h);
                    h
                }
            };
            if r.offset + 1 >= high {
                done.insert(r.partition);
            }
        }
        // the group's state is looked at every 1,000 records (and when idle), not per record
        if idle || seen.is_multiple_of(1000) {
            let _ = consumer.take_rebalances();
            let assigned = consumer.assignment()?;
            if !assigned.is_empty() && assigned.iter().all(|(_, p)| done.contains(p)) {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{seen},\"bytes\":{bytes},\"seconds\":{secs},\"records_per_sec\":{}}}",
        seen as f64 / secs
    );
    Ok(())
}
