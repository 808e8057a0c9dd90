//! Replays every kept fuzz input (`fuzz/corpus/<target>/`, and `fuzz/regressions/<target>/`
//! for inputs that once crashed) through the same harness the fuzzer runs, then a short
//! mutation run (random flips, inserts, deletions and splices of those inputs; no coverage
//! feedback) on every test run. The long coverage-guided runs are `scripts/fuzz`
//! (FUZZING.md).

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn kept_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            out.push((path, data));
        }
    }
    out.sort();
    out
}

/// One random edit of `data`, sometimes spliced with `other`.
fn mutate(rng: &mut StdRng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = if v.is_empty() {
            0
        } else {
            rng.random_range(0..v.len())
        };
        match rng.random_range(0..6) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.random_range(0..8),
            1 => v.insert(at, rng.random()),
            2 if !v.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(v.len());
                v.drain(at..end);
            }
            3 => {
                let interesting: &[&[u8]] = &[
                    b"\"",
                    b"\\",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"\n",
                    b"\r\n",
                    b"\0",
                    br"\u0000",
                    br"\u202e",
                    b"1e308",
                    b"-0",
                    b"null",
                    b"--",
                    b"/*",
                    b"\xff\xfe",
                ];
                let piece = interesting[rng.random_range(0..interesting.len())];
                v.splice(at..at, piece.iter().copied());
            }
            4 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let len = rng.random_range(1..=64).min(other.len() - from);
                v.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => {
                if !v.is_empty() {
                    let end = (at + rng.random_range(1..=32)).min(v.len());
                    let copy = v[at..end].to_vec();
                    v.splice(at..at, copy);
                }
            }
        }
    }
    v
}

#[test]
fn a_short_mutation_run_over_the_corpora_breaks_no_harness() {
    // the seed is printed so that a failure can be replayed
    let seed: u64 = std::env::var("BOOKREC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(1)
        });
    eprintln!("fuzz mutation run: BOOKREC_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for (target, harness) in bookrec::fuzzing::TARGETS {
        let inputs = kept_inputs(target);
        for i in 0..3000 {
            let (_, data) = &inputs[i % inputs.len()];
            let (_, other) = &inputs[rng.random_range(0..inputs.len())];
            let mutated = mutate(&mut rng, data, other);
            let result = std::panic::catch_unwind(|| harness(&mutated));
            assert!(
                result.is_ok(),
                "{target}: mutation {i} (BOOKREC_FUZZ_SEED={seed}) breaks its harness: {:?}",
                String::from_utf8_lossy(&mutated)
            );
        }
    }
}

#[test]
fn every_kept_fuzz_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (target, harness) in bookrec::fuzzing::TARGETS {
        let inputs = kept_inputs(target);
        assert!(!inputs.is_empty(), "no corpus for fuzz target {target}");
        for (path, data) in &inputs {
            let result = std::panic::catch_unwind(|| harness(data));
            assert!(
                result.is_ok(),
                "{target}: {} fails its harness",
                path.display()
            );
        }
        let source = root.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.exists(), "{} is missing", source.display());
        replayed += inputs.len();
    }
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}
