//! Writes a CDC change history into a lake, as the lander would have landed it: `users`
//! users, each created then updated `updates` times, in files of at most a million changes
//! (one Kafka partition, offsets in order). The input of `scripts/bench-cdc-state`.
//!
//!     cargo run --release --example cdc_history -- /tmp/lake 1000000 10

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use bookrec::lake::Lake;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: cdc_history <lake dir> <users> <updates per user>";
    let (Some(dir), Some(users), Some(updates)) = (args.first(), args.get(1), args.get(2)) else {
        anyhow::bail!(usage);
    };
    let users: u64 = users.parse().map_err(|_| anyhow::anyhow!(usage))?;
    let updates: u64 = updates.parse().map_err(|_| anyhow::anyhow!(usage))?;
    let mut cfg = bookrec::config::Config::load_with_env(None, Vec::new())?;
    std::fs::create_dir_all(dir)?;
    cfg.lake.url = format!("file://{}", std::fs::canonicalize(dir)?.display());
    let lake = Lake::open(&cfg.lake)?;
    let rt = tokio::runtime::Runtime::new()?;
    let total = users * (updates + 1);
    let per_file = 1_000_000u64;
    let mut offset = 0u64;
    while offset < total {
        let n = per_file.min(total - offset);
        let (mut ops, mut keys, mut afters, mut ts) = (vec![], vec![], vec![], vec![]);
        for o in offset..offset + n {
            // round r updates every user in turn: user = o % users, round = o / users
            let (user, round) = (o % users, o / users);
            ops.push(if round == 0 { "r" } else { "u" });
            keys.push(format!("{{\"id\":{user}}}"));
            afters.push(format!(
                "{{\"id\":{user},\"name\":\"user {user}\",\"email\":\"u{user}@example.org\",\
                 \"balance\":\"{}.{:02}\",\"logins\":{round},\"updated\":\"2024-05-01T10:{:02}:00\"}}",
                user % 1000,
                round % 100,
                round % 60
            ));
            ts.push(1_714_557_600_000 + o as i64);
        }
        let n = n as usize;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ops)),
            Arc::new(Int64Array::from(ts)),
            Arc::new(StringArray::from(keys)),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(StringArray::from(afters)),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(StringArray::from(vec![Some("auth_db"); n])),
            Arc::new(StringArray::from(vec![Some("users"); n])),
            Arc::new(Int32Array::from(vec![0; n])),
            Arc::new(Int64Array::from_iter_values(
                (offset..offset + n as u64).map(|o| o as i64),
            )),
        ];
        let batch = RecordBatch::try_new(bookrec::lake::cdc_changes_schema(), cols)?;
        let last = offset + n as u64 - 1;
        let bytes = bookrec::lake::write_parquet(&batch).map_err(|e| anyhow::anyhow!(e))?;
        rt.block_on(lake.put(
            &format!("cdc/users/part-auth_db.auth_db.users-0-{offset}-{last}.parquet"),
            bytes,
        ))?;
        offset += n as u64;
    }
    println!("{total} changes of {users} users in {dir}");
    Ok(())
}
