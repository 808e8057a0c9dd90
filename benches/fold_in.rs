//! Fold-in for a user the model does not know (`bookrec::als::FoldIn`): the user's factor from
//! a dozen interactions (one f × f Cholesky solve, f = 64), and that solve plus ranking every
//! book of a 10,000- and a 100,000-book catalogue (x·Y, then the top 50).
//!
//!     cargo bench --bench fold_in

use std::collections::HashSet;
use std::hint::black_box;

use bookrec::als::FoldIn;
use bookrec::config::AlsParams;
use criterion::{Criterion, criterion_group, criterion_main};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn model(items: usize, f: usize) -> FoldIn {
    let mut rng = StdRng::seed_from_u64(7);
    let factors: Vec<f32> = (0..items * f)
        .map(|_| rng.random_range(-0.3f32..0.3))
        .collect();
    let ids = (0..items).map(|i| format!("b{i}")).collect();
    // the shipped regularisation (config/default.toml's [als])
    FoldIn::new(ids, factors, f, &AlsParams::default()).expect("model")
}

fn bench(c: &mut Criterion) {
    let f = 64;
    let events: Vec<(u32, f32)> = (0..12u32)
        .map(|i| (i * 37 % 9000, 1.0 + (i % 3) as f32))
        .collect();
    let seen: HashSet<u32> = events.iter().map(|(i, _)| *i).collect();
    let mut g = c.benchmark_group("fold_in");
    for items in [10_000usize, 100_000] {
        let m = model(items, f);
        if items == 10_000 {
            g.bench_function("solve_f64_12_events", |b| {
                b.iter(|| black_box(m.user_factor(black_box(&events))))
            });
        }
        g.bench_function(format!("solve_and_rank_{items}_books"), |b| {
            b.iter(|| {
                let x = m.user_factor(black_box(&events));
                black_box(m.rank(&x, 50, &seen))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
