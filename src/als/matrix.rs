//! The user–item matrix: external ids mapped to dense indices, and the same non-zeros held
//! twice, by user (CSR) and by item (CSC), so both half-steps of ALS read contiguous rows.

use std::collections::HashMap;

/// External ids (strings) ↔ dense indices `0..len`, in first-seen order.
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    ids: Vec<String>,
    index: HashMap<String, u32>,
}

impl IdMap {
    pub fn new() -> IdMap {
        IdMap::default()
    }

    /// The index of `id`, adding it when new.
    pub fn intern(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.index.get(id) {
            return i;
        }
        let i = self.ids.len() as u32;
        self.ids.push(id.to_owned());
        self.index.insert(id.to_owned(), i);
        i
    }

    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn id(&self, index: u32) -> &str {
        &self.ids[index as usize]
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn ids(&self) -> &[String] {
        &self.ids
    }
}

/// One observed interaction, by dense index.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Triple {
    pub user: u32,
    pub item: u32,
    pub weight: f32,
}

/// A compressed sparse row matrix: row `r` holds `cols[ptr[r]..ptr[r+1]]` with `vals` beside,
/// columns sorted ascending and unique (duplicates are summed when built).
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    pub rows: usize,
    pub cols: usize,
    pub ptr: Vec<usize>,
    pub idx: Vec<u32>,
    pub vals: Vec<f32>,
}

impl Csr {
    /// Builds the `rows × cols` matrix of `(row, col, value)`; repeated cells are summed.
    pub fn build(rows: usize, cols: usize, cells: impl Iterator<Item = (u32, u32, f32)>) -> Csr {
        let cells: Vec<(u32, u32, f32)> = cells.collect();
        let mut counts = vec![0usize; rows + 1];
        for &(r, _, _) in &cells {
            counts[r as usize + 1] += 1;
        }
        for r in 0..rows {
            counts[r + 1] += counts[r];
        }
        let mut next = counts.clone();
        let mut idx = vec![0u32; cells.len()];
        let mut vals = vec![0f32; cells.len()];
        for &(r, c, v) in &cells {
            let at = next[r as usize];
            idx[at] = c;
            vals[at] = v;
            next[r as usize] += 1;
        }
        // sort each row by column and merge duplicates, compacting in place
        let mut ptr = Vec::with_capacity(rows + 1);
        ptr.push(0);
        let mut write = 0usize;
        let mut row: Vec<(u32, f32)> = Vec::new();
        for r in 0..rows {
            row.clear();
            row.extend((counts[r]..counts[r + 1]).map(|k| (idx[k], vals[k])));
            row.sort_unstable_by_key(|&(c, _)| c);
            let mut last: Option<u32> = None;
            for &(c, v) in &row {
                if last == Some(c) {
                    vals[write - 1] += v;
                } else {
                    idx[write] = c;
                    vals[write] = v;
                    write += 1;
                    last = Some(c);
                }
            }
            ptr.push(write);
        }
        idx.truncate(write);
        vals.truncate(write);
        Csr {
            rows,
            cols,
            ptr,
            idx,
            vals,
        }
    }

    pub fn from_triples(rows: usize, cols: usize, triples: &[Triple]) -> Csr {
        Csr::build(
            rows,
            cols,
            triples.iter().map(|t| (t.user, t.item, t.weight)),
        )
    }

    pub fn nnz(&self) -> usize {
        self.idx.len()
    }

    /// Columns and values of row `r`.
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.ptr[r], self.ptr[r + 1]);
        (&self.idx[a..b], &self.vals[a..b])
    }

    pub fn contains(&self, r: usize, c: u32) -> bool {
        self.row(r).0.binary_search(&c).is_ok()
    }

    /// The transpose (CSC of this matrix read as CSR).
    pub fn transpose(&self) -> Csr {
        Csr::build(
            self.cols,
            self.rows,
            (0..self.rows).flat_map(|r| {
                let (cols, vals) = self.row(r);
                cols.iter().zip(vals).map(move |(&c, &v)| (c, r as u32, v))
            }),
        )
    }
}

/// Interactions with their id maps: what a fit and an evaluation start from.
#[derive(Debug, Clone, Default)]
pub struct Interactions {
    pub users: IdMap,
    pub items: IdMap,
    pub triples: Vec<Triple>,
    /// Event time per triple (epoch seconds), when the input had one.
    pub times: Option<Vec<i64>>,
}

impl Interactions {
    /// The user × item matrix (duplicate pairs summed).
    pub fn matrix(&self) -> Csr {
        Csr::from_triples(self.users.len(), self.items.len(), &self.triples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_sorted_rows_sums_duplicates_and_transposes() {
        let m = Csr::build(
            3,
            4,
            [(0, 3, 1.0), (0, 1, 2.0), (2, 0, 1.0), (0, 3, 0.5)].into_iter(),
        );
        assert_eq!(m.ptr, vec![0, 2, 2, 3]);
        assert_eq!(m.row(0), (&[1u32, 3][..], &[2.0f32, 1.5][..]));
        assert!(m.row(1).0.is_empty());
        assert!(m.contains(2, 0) && !m.contains(2, 1));
        let t = m.transpose();
        assert_eq!((t.rows, t.cols, t.nnz()), (4, 3, 3));
        assert_eq!(t.row(3), (&[0u32][..], &[1.5f32][..]));
        assert_eq!(t.transpose(), m);
    }

    #[test]
    fn id_map_interns_in_first_seen_order() {
        let mut ids = IdMap::new();
        assert_eq!(ids.intern("b"), 0);
        assert_eq!(ids.intern("a"), 1);
        assert_eq!(ids.intern("b"), 0);
        assert_eq!(
            (ids.id(1), ids.get("a"), ids.get("z")),
            ("a", Some(1), None)
        );
    }
}
