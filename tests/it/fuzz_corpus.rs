//! Replays every kept fuzz input (`fuzz/corpus/<target>/`, and `fuzz/regressions/<target>/`
//! for inputs that once crashed) through the same harness the fuzzer runs: the short fuzz
//! run of every test run. The long coverage-guided runs are `scripts/fuzz` (FUZZING.md).

use std::path::Path;

#[test]
fn every_kept_fuzz_input_passes_its_harness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for (target, harness) in bookrec::fuzzing::TARGETS {
        let mut per_target = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                let result = std::panic::catch_unwind(|| harness(&data));
                assert!(
                    result.is_ok(),
                    "{target}: {} fails its harness",
                    path.display()
                );
                per_target += 1;
            }
        }
        assert!(per_target > 0, "no corpus for fuzz target {target}");
        let source = root.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.exists(), "{} is missing", source.display());
        replayed += per_target;
    }
    assert!(replayed >= 20, "only {replayed} inputs replayed");
}
