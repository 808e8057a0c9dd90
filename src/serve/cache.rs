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
    len: usize,
}

/// Entries kept before the cache starts afresh.
const CACHE_MAX: usize = 200_000;

/// A published list (a user's, a book's similar books, popular books), from the cache when
/// the current model version's list was read before: the lists of a version never change,
/// so the cache needs no invalidation but a new version (seen by the refresh task), which
/// empties it. At most [`CACHE_MAX`] lists are kept (then it starts afresh).
pub(super) async fn listed(
    shared: &Shared,
    db: &Store,
    list: List,
    key: &str,
    k: usize,
) -> Result<Listed, String> {
    let version = read(&shared.snapshot)
        .model
        .as_ref()
        .map(|m| m.version.clone())
        .unwrap_or_default();
    {
        let mut c = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.version != version {
            c.version = version.clone();
            c.entries.clear();
            c.len = 0;
        }
        if let Some(hit) = c.entries.get(&(list, k)).and_then(|m| m.get(key)) {
            return Ok(hit.clone());
        }
    }
    let got = match list {
        List::User => db_call(shared, "user_books", db.user_books(key, k)).await?,
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
            if c.len >= CACHE_MAX {
                c.entries.clear();
                c.len = 0;
            }
            c.len += 1;
            c.entries
                .entry((list, k))
                .or_default()
                .insert(key.to_owned(), got.clone());
        }
    }
    Ok(got)
}
