//! A/B experiments: which variant of each configured experiment a user is in, and the blend
//! weights that follow. Pure.
//!
//! A user's draws are `H(d, salt, user_id)`: the first 8 bytes of SHA-256(salt ‖ d ‖
//! user_id) as a fraction of 2⁶⁴ (53 bits kept), for a domain byte `d`. They are the same in
//! every process and release (no per-process hash keys), uniform, and independent across
//! experiments because their salts differ. The user is in the experiment when
//! `H(0, …) < traffic`; the variant is chosen by `H(1, …)` over the variants' cumulative
//! shares — a second, independent draw, so a user keeps their variant when `traffic` grows.
//! Several experiments may hold one user; their weight overrides apply in configuration order
//! (a later experiment's override of the same weight wins).

use sha2::{Digest, Sha256};

use crate::config::{BlendWeights, ExperimentConfig};

/// A user's variant of one experiment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Assignment {
    pub experiment: String,
    pub variant: String,
}

/// The user's draw in `[0, 1)` for a salt: whether they are in the experiment.
pub fn unit(salt: &str, user_id: &str) -> f64 {
    draw(0, salt, user_id)
}

fn draw(domain: u8, salt: &str, user_id: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([domain]);
    h.update(user_id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits: every value is exact in an f64 and below 1
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The variant of `experiment` the user is in (index into its variants), or `None` when the
/// user is outside its traffic.
pub fn variant_of(experiment: &ExperimentConfig, user_id: &str) -> Option<usize> {
    let salt = experiment.salt.as_deref().unwrap_or(&experiment.name);
    if unit(salt, user_id) >= experiment.traffic || experiment.variants.is_empty() {
        return None;
    }
    let total: f64 = experiment.variants.iter().map(|v| v.share).sum();
    let at = draw(1, salt, user_id) * total;
    let mut sum = 0.0;
    for (n, v) in experiment.variants.iter().enumerate() {
        sum += v.share;
        if at < sum {
            return Some(n);
        }
    }
    // rounding at the top end
    Some(experiment.variants.len() - 1)
}

/// What a user's variants make of the serve settings they may change.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub weights: BlendWeights,
    /// `serve.exclude_ignored_after` (0: off)
    pub exclude_ignored_after: f64,
    /// the model version to serve from; None: the current one
    pub model_version: Option<String>,
}

/// The user's variants of all experiments and the settings they make from `base`.
pub fn assign(
    experiments: &[ExperimentConfig],
    base: Settings,
    user_id: &str,
) -> (Vec<Assignment>, Settings) {
    let mut settings = base;
    let mut out = Vec::new();
    for e in experiments {
        if let Some(n) = variant_of(e, user_id) {
            let v = &e.variants[n];
            settings.weights = v.weights.apply(&settings.weights);
            if let Some(after) = v.exclude_ignored_after {
                settings.exclude_ignored_after = after;
            }
            if let Some(m) = &v.model_version {
                settings.model_version = (m != "current").then(|| m.clone());
            }
            out.push(Assignment {
                experiment: e.name.clone(),
                variant: v.name.clone(),
            });
        }
    }
    (out, settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{VariantConfig, WeightOverrides};

    fn experiment(name: &str, traffic: f64, shares: &[f64]) -> ExperimentConfig {
        ExperimentConfig {
            name: name.into(),
            salt: None,
            traffic,
            variants: shares
                .iter()
                .enumerate()
                .map(|(n, &share)| VariantConfig {
                    name: format!("v{n}"),
                    share,
                    weights: WeightOverrides::default(),
                    exclude_ignored_after: None,
                    model_version: None,
                })
                .collect(),
        }
    }

    fn users() -> impl Iterator<Item = String> {
        (0..100_000).map(|n| format!("user-{n}"))
    }

    #[test]
    fn the_hash_is_fixed_across_processes_and_releases() {
        // pinned values, computed independently with Python's hashlib:
        // (int.from_bytes(sha256(b"realtime-weight\x0042").digest()[:8], "big") >> 11) / 2**53
        // a change here would reshuffle every running experiment's users
        assert_eq!(unit("exp", "u1"), unit("exp", "u1"));
        let pinned = unit("realtime-weight", "42");
        assert_eq!(format!("{pinned:.12}"), "0.849171168260");
        // salt and id are separated: ("ab", "c") is not ("a", "bc")
        assert_ne!(unit("ab", "c"), unit("a", "bc"));
    }

    #[test]
    fn shares_hold_within_one_percent_on_100k_users() {
        let e = experiment("shares", 0.8, &[1.0, 1.0, 2.0]);
        let mut counts = [0usize; 4];
        for u in users() {
            match variant_of(&e, &u) {
                Some(n) => counts[n] += 1,
                None => counts[3] += 1,
            }
        }
        let expected = [0.2, 0.2, 0.4, 0.2];
        for (got, want) in counts.iter().zip(expected) {
            let share = *got as f64 / 100_000.0;
            assert!((share - want).abs() < 0.01, "{counts:?}");
        }
    }

    #[test]
    fn experiments_are_independent_and_assignments_stable() {
        let a = experiment("a", 1.0, &[1.0, 1.0]);
        let b = experiment("b", 1.0, &[1.0, 1.0]);
        // the joint distribution is the product of the marginals (each cell ≈ 25%)
        let mut joint = [[0usize; 2]; 2];
        for u in users() {
            let (x, y) = (variant_of(&a, &u), variant_of(&b, &u));
            joint[x.unwrap()][y.unwrap()] += 1;
            // stable: the same answer asked again, and from a clone (another "process")
            assert_eq!(variant_of(&a.clone(), &u), x);
        }
        for row in joint {
            for cell in row {
                let share = cell as f64 / 100_000.0;
                assert!((share - 0.25).abs() < 0.01, "{joint:?}");
            }
        }
        // a different salt reshuffles: about half the users change variant
        let mut salted = a.clone();
        salted.salt = Some("a-2".into());
        let moved = users()
            .filter(|u| variant_of(&a, u) != variant_of(&salted, u))
            .count();
        assert!((moved as f64 / 100_000.0 - 0.5).abs() < 0.01, "{moved}");
    }

    #[test]
    fn growing_traffic_keeps_users_in_their_variant() {
        let small = experiment("grow", 0.1, &[1.0, 1.0]);
        let big = experiment("grow", 0.5, &[1.0, 1.0]);
        for u in users().take(20_000) {
            if let Some(n) = variant_of(&small, &u) {
                assert_eq!(variant_of(&big, &u), Some(n), "{u}");
            }
        }
        assert!(variant_of(&experiment("none", 0.0, &[1.0]), "x").is_none());
    }

    #[test]
    fn overrides_apply_in_order() {
        let base = BlendWeights {
            als: 1.0,
            fold_in: 1.0,
            similar: 2.0,
            realtime: 3.0,
            trending: 0.1,
            category: 3.0,
            popular: 0.5,
        };
        let mut a = experiment("a", 1.0, &[1.0]);
        a.variants[0].weights.realtime = Some(6.0);
        a.variants[0].weights.similar = Some(0.0);
        let mut b = experiment("b", 1.0, &[1.0]);
        b.variants[0].weights.realtime = Some(9.0);
        a.variants[0].exclude_ignored_after = Some(3.0);
        let base = Settings {
            weights: base,
            exclude_ignored_after: 0.0,
            model_version: None,
        };
        a.variants[0].model_version = Some("als-old".into());
        let (assigned, got) = assign(&[a.clone(), b.clone()], base.clone(), "someone");
        assert_eq!(got.model_version.as_deref(), Some("als-old"));
        // a later experiment's "current" wins over an earlier pin
        b.variants[0].model_version = Some("current".into());
        assert_eq!(
            assign(&[a, b], base.clone(), "someone").1.model_version,
            None
        );
        let w = got.weights;
        assert_eq!(got.exclude_ignored_after, 3.0);
        assert_eq!(
            assigned,
            vec![
                Assignment {
                    experiment: "a".into(),
                    variant: "v0".into()
                },
                Assignment {
                    experiment: "b".into(),
                    variant: "v0".into()
                }
            ]
        );
        assert_eq!((w.realtime, w.similar, w.als), (9.0, 0.0, 1.0));
        let (none, same) = assign(&[], base.clone(), "someone");
        assert!(none.is_empty());
        assert_eq!(same, base);
    }
}
