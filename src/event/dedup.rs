//! Recently seen event ids: the collector acknowledges a client retry without producing it
//! twice, and the lander drops a duplicate that reached Kafka twice.
//!
//! Two generations of ids: an id stays known for at least `window` and at most twice that.
//! When a generation fills up (`max_entries / 2`) it rotates early, which shortens the window
//! under extreme load rather than growing memory without bound. The set is per process: with
//! several collectors behind a load balancer, a retry that lands on another instance is caught
//! downstream, where `event_id` is the dedup key of the lake.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

pub struct Dedup {
    window: Duration,
    max_generation: usize,
    /// ids one client key may have remembered per generation (`usize::MAX`: no quota)
    per_client: usize,
    inner: Mutex<Generations>,
}

struct Generations {
    current: HashSet<Uuid>,
    previous: HashSet<Uuid>,
    /// ids remembered in `current` per client key
    counts: std::collections::HashMap<String, usize>,
    rotated_at: Instant,
}

impl Dedup {
    pub fn new(window: Duration, max_entries: usize) -> Self {
        Dedup {
            window,
            max_generation: (max_entries / 2).max(1),
            per_client: usize::MAX,
            inner: Mutex::new(Generations {
                current: HashSet::new(),
                previous: HashSet::new(),
                counts: std::collections::HashMap::new(),
                rotated_at: Instant::now(),
            }),
        }
    }

    /// At most `per_client` ids of one client key are remembered per generation (see
    /// [`Dedup::insert_new_for`]): a client sending a flood of fresh ids fills its own
    /// quota, not the table, so it cannot evict the other clients' ids.
    pub fn with_client_quota(mut self, per_client: usize) -> Self {
        self.per_client = per_client.max(1);
        self
    }

    /// Like [`Dedup::insert_new`] for ids that belong to a client key (a user or anonymous
    /// id). An id whose key has used its quota this generation is reported new and not
    /// remembered: a retry of it is then caught downstream (the lake dedups by
    /// `event_id`), never lost.
    pub fn insert_new_for(&self, ids: &[(Uuid, &str)], now: Instant) -> Vec<bool> {
        if self.window.is_zero() {
            let mut seen = HashSet::new();
            return ids.iter().map(|(id, _)| seen.insert(*id)).collect();
        }
        let mut g = self.lock();
        if now.duration_since(g.rotated_at) >= self.window {
            g.rotate(now);
        }
        ids.iter()
            .map(|(id, key)| {
                if g.previous.contains(id) || g.current.contains(id) {
                    return false;
                }
                if g.counts.get(*key).copied().unwrap_or(0) >= self.per_client {
                    return true;
                }
                if g.current.len() >= self.max_generation {
                    g.rotate(now);
                }
                *g.counts.entry((*key).to_owned()).or_default() += 1;
                g.current.insert(*id)
            })
            .collect()
    }

    /// Marks each id as seen; returns, per id, whether it was new. An id repeated within
    /// the slice counts once.
    pub fn insert_new(&self, ids: &[Uuid], now: Instant) -> Vec<bool> {
        if self.window.is_zero() {
            let mut seen = HashSet::new();
            return ids.iter().map(|id| seen.insert(*id)).collect();
        }
        let mut g = self.lock();
        if now.duration_since(g.rotated_at) >= self.window {
            g.rotate(now);
        }
        ids.iter()
            .map(|id| {
                if g.previous.contains(id) || g.current.contains(id) {
                    return false;
                }
                if g.current.len() >= self.max_generation {
                    g.rotate(now);
                }
                g.current.insert(*id)
            })
            .collect()
    }

    /// Forgets ids whose events could not be stored, so a retry is accepted.
    pub fn forget(&self, ids: &[Uuid]) {
        let mut g = self.lock();
        for id in ids {
            g.current.remove(id);
            g.previous.remove(id);
        }
    }

    pub fn len(&self) -> usize {
        let g = self.lock();
        g.current.len() + g.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding this lock cannot leave the sets inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Generations {
    fn rotate(&mut self, now: Instant) {
        self.previous = std::mem::take(&mut self.current);
        self.counts.clear();
        self.rotated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_are_caught() {
        let d = Dedup::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(d.insert_new(&[a, b, a], t0), vec![true, true, false]);
        assert_eq!(d.insert_new(&[a], t0 + Duration::from_secs(9)), vec![false]);
        // still known one window later (previous generation)
        assert_eq!(
            d.insert_new(&[b], t0 + Duration::from_secs(15)),
            vec![false]
        );
        // gone after two windows
        assert_eq!(d.insert_new(&[a], t0 + Duration::from_secs(31)), vec![true]);
    }

    #[test]
    fn forget_allows_a_retry_and_memory_is_bounded() {
        let d = Dedup::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let ids: Vec<Uuid> = (0..100).map(Uuid::from_u128).collect();
        assert!(d.insert_new(&ids, t0).into_iter().all(|n| n));
        assert!(d.len() <= 10);
        let last = ids[99];
        d.forget(&[last]);
        assert_eq!(d.insert_new(&[last], t0), vec![true]);
    }

    #[test]
    fn one_client_flooding_fresh_ids_does_not_evict_the_others() {
        let d = Dedup::new(Duration::from_secs(60), 1000).with_client_quota(10);
        let t0 = Instant::now();
        let victim = Uuid::from_u128(7);
        assert_eq!(d.insert_new_for(&[(victim, "alice")], t0), vec![true]);
        let flood: Vec<(Uuid, &str)> = (100..100_000u128)
            .map(|i| (Uuid::from_u128(i), "mallory"))
            .collect();
        assert!(d.insert_new_for(&flood, t0).into_iter().all(|n| n));
        assert!(d.len() <= 11, "{}", d.len());
        // alice's retry is still caught
        assert_eq!(d.insert_new_for(&[(victim, "alice")], t0), vec![false]);
        // mallory's first ids are remembered, the rest are not (caught downstream)
        assert_eq!(
            d.insert_new_for(&[(Uuid::from_u128(100), "mallory")], t0),
            vec![false]
        );
        assert_eq!(
            d.insert_new_for(&[(Uuid::from_u128(50_000), "mallory")], t0),
            vec![true]
        );
    }
}
