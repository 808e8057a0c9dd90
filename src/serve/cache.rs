//! The per-model-version list cache: published lists (a user's, similar books, popular
//! books) never change within a model version, so they are read once per version.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::store::{Ranked, Store};

/// Which published list a cache entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum List {
    User,
    Similar,
    Popular,
}

pub(super) type Listed = Option<(String, Arc<Vec<Ranked>>)>;

#[derive(Default)]
pub(super) struct ListCache {
    version: String,
    /// (list, k) → key → list
    entries: HashMap<(List, usize), HashMap<String, Listed>>,
    /// the estimated bytes the entries hold
    bytes: usize,
}

/// The bytes one cached list is counted for: its key, its items' ids and scores, and the
/// maps' overhead (an estimate that errs on the high side).
fn cost(key: &str, got: &Listed) -> usize {
    let items = got.as_ref().map_or(0, |(v, items)| {
        v.len() + items.iter().map(|r| r.item.len() + 48).sum::<usize>()
    });
    key.len() + 96 + items
}

impl ListCache {
    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Keeps `got` under (list, k, key); when the cache would pass `max_bytes` it starts
    /// afresh (lists of one version are cheap to read again; memory stays bounded in bytes,
    /// whatever the ids' lengths or the lists' sizes).
    fn insert(&mut self, list: List, k: usize, key: &str, got: Listed, max_bytes: usize) {
        let c = cost(key, &got);
        if self.bytes + c > max_bytes {
            self.clear();
        }
        if c > max_bytes {
            return;
        }
        self.bytes += c;
        if let Some(old) = self
            .entries
            .entry((list, k))
            .or_default()
            .insert(key.to_owned(), got)
        {
            self.bytes = self.bytes.saturating_sub(cost(key, &old));
        }
    }
}

/// A published list (a user's, a book's similar books, popular books), from the cache when
/// the current model version's list was read before: the lists of a version never change,
/// so the cache needs no invalidation but a new version (seen by the refresh task), which
/// empties it. At most `serve.cache_max_bytes` are kept (then it starts afresh).
/// With `pinned` (a kept version an experiment pins), that version's list, cached per
/// pinned version the same way.
pub(super) async fn listed(
    shared: &Shared,
    db: &Store,
    list: List,
    key: &str,
    k: usize,
    pinned: Option<&str>,
) -> Result<Listed, String> {
    if let Some(version) = pinned {
        return pinned_list(shared, db, list, key, k, version).await;
    }
    let version = read(&shared.snapshot)
        .model
        .as_ref()
        .map(|m| m.version.clone())
        .unwrap_or_default();
    // the version's similar and popular lists, when preloaded: no DB read at all
    if list != List::User
        && let Some(pre) = read(&shared.preloaded).filter(|p| p.version == version)
    {
        let lists = if list == List::Similar {
            &pre.similar
        } else {
            &pre.popular
        };
        return Ok(lists.get(key).map(|items| {
            let items = if items.len() <= k {
                items.clone()
            } else {
                Arc::new(items[..k].to_vec())
            };
            (version, items)
        }));
    }
    {
        let mut c = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.version != version {
            c.version = version.clone();
            c.clear();
        }
        if let Some(hit) = c.entries.get(&(list, k)).and_then(|m| m.get(key)) {
            return Ok(hit.clone());
        }
    }
    let got = match list {
        List::User => user_list(shared, db, key, k).await?,
        List::Similar => db_call(shared, "similar_books", db.similar_books(key, k)).await?,
        List::Popular => {
            let category = (!key.is_empty()).then_some(key);
            db_call(shared, "popular_books", db.popular_books(category, k)).await?
        }
    }
    .map(|(v, items)| (v, Arc::new(items)));
    // cache only what the snapshot's version answered (a list of a newer version waits for
    // the snapshot to catch up)
    if !version.is_empty() && got.as_ref().is_none_or(|(v, _)| *v == version) {
        let mut c = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.version == version {
            c.insert(list, k, key, got.clone(), shared.cfg.serve.cache_max_bytes);
        }
    }
    Ok(got)
}

async fn pinned_list(
    shared: &Shared,
    db: &Store,
    list: List,
    key: &str,
    k: usize,
    version: &str,
) -> Result<Listed, String> {
    let lock = || {
        shared
            .pinned_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    };
    if let Some(hit) = lock()
        .get(version)
        .and_then(|c| c.entries.get(&(list, k)))
        .and_then(|m| m.get(key))
    {
        return Ok(hit.clone());
    }
    let (table, call) = match list {
        List::User => (crate::store::RecTable::UserBooks, "user_books"),
        List::Similar => (crate::store::RecTable::SimilarBooks, "similar_books"),
        List::Popular => (crate::store::RecTable::PopularBooks, "popular_books"),
    };
    let got = db_call(shared, call, db.ranked_in(table, version, key, k))
        .await?
        .map(|(v, items)| (v, Arc::new(items)));
    // a pinned version's lists never change either (a pruned version's reads come back
    // empty, and the refresh stops pinning it)
    lock()
        .entry(version.to_owned())
        .or_insert_with(|| ListCache {
            version: version.to_owned(),
            ..ListCache::default()
        })
        .insert(list, k, key, got.clone(), shared.cfg.serve.cache_max_bytes);
    Ok(got)
}

/// A user's list, then the answer of one batched statement that reads it with the other
/// users' lists asked for at the same time.
type Ask = (
    String,
    usize,
    tokio::sync::oneshot::Sender<Result<Option<(String, Vec<Ranked>)>, String>>,
);

/// Users' lists asked at most this many at once.
const MAX_BATCH: usize = 64;
/// Statements in flight at once (the SQLite reader pool has 4 connections).
const MAX_STATEMENTS: usize = 4;

/// The sending side of [`user_list_loader`].
pub(super) type UserLists = tokio::sync::mpsc::Sender<Ask>;

pub(super) fn user_lists_channel() -> (UserLists, tokio::sync::mpsc::Receiver<Ask>) {
    tokio::sync::mpsc::channel(4096)
}

/// A user's published list through the loader; when its queue is full or it is gone, read
/// directly.
async fn user_list(
    shared: &Shared,
    db: &Store,
    key: &str,
    k: usize,
) -> Result<Option<(String, Vec<Ranked>)>, String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if shared.user_lists.try_send((key.to_owned(), k, tx)).is_ok()
        && let Ok(answer) = rx.await
    {
        return answer;
    }
    db_call(shared, "user_books", db.user_books(key, k)).await
}

/// Reads the users' lists that requests miss in the cache: the misses that queue while the
/// statements in flight run go together into the next statement (up to [`MAX_BATCH`] users,
/// [`MAX_STATEMENTS`] statements at once), so a cold API makes one DB round trip per batch
/// instead of one per user — and a lone request waits for nobody. Each statement has
/// `serve.db_timeout_ms`; its error answers every user in it.
pub(super) async fn user_list_loader(
    shared: Arc<Shared>,
    mut asks: tokio::sync::mpsc::Receiver<Ask>,
    stop: tokio_util::sync::CancellationToken,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_STATEMENTS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            a = asks.recv() => match a {
                Some(a) => a,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match asks.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(db) = read(&shared.db) else {
                for (_, _, tx) in batch {
                    let _ = tx.send(Err("the recommendation DB is not connected".into()));
                }
                return;
            };
            let k = batch.iter().map(|a| a.1).max().unwrap_or(1);
            let mut keys: Vec<String> = batch.iter().map(|a| a.0.clone()).collect();
            keys.sort();
            keys.dedup();
            match db_call(&shared, "user_books", db.user_books_many(&keys, k)).await {
                Ok(got) => {
                    for (key, want, tx) in batch {
                        let list = got.get(&key).map(|(version, items)| {
                            (version.clone(), items.iter().take(want).cloned().collect())
                        });
                        let _ = tx.send(Ok(list));
                    }
                }
                Err(e) => {
                    for (_, _, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let mut c = ListCache::default();
        let max = 100_000;
        let list = |n: usize| -> Listed {
            Some((
                "v1".into(),
                Arc::new(
                    (0..n)
                        .map(|i| Ranked {
                            item: format!("book-{i}"),
                            score: 1.0,
                        })
                        .collect(),
                ),
            ))
        };
        for i in 0..10_000 {
            let key = format!("{}-{i}", "u".repeat(200));
            c.insert(List::User, 10, &key, list(10), max);
            assert!(c.bytes <= max, "{}", c.bytes);
        }
        // a list larger than the whole budget is not kept
        c.insert(List::Similar, 10, "huge", list(10_000), max);
        assert!(c.bytes <= max);
        assert!(
            c.entries
                .get(&(List::Similar, 10))
                .is_none_or(|m| !m.contains_key("huge"))
        );
        // a key stored again is counted once
        c.clear();
        c.insert(List::User, 10, "u1", list(5), max);
        let once = c.bytes;
        c.insert(List::User, 10, "u1", list(5), max);
        assert_eq!(c.bytes, once);
    }
}
