//! Object names of the lake and their parsing.

use chrono::{DateTime, Datelike, Timelike, Utc};

/// What a data file holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileKind {
    /// Events of one event-time hour.
    Events { dt: String, hour: u32 },
    /// Records the lander could not turn into events, by landing date.
    DeadLetters { dt: String },
    /// Change rows of one CDC table.
    Cdc { table: String },
}

/// A data file written by the lander: its kind and the Kafka coordinates of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub kind: FileKind,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

pub const EVENTS: &str = "events";
pub const DEAD_LETTERS: &str = "dlq/land";
pub const CDC: &str = "cdc";
/// Model versions: `models/als/<version>/` holds the factors (`user_factors.parquet`,
/// `item_factors.parquet`), the published lists ([`SIMILAR_BOOKS`], [`POPULAR_BOOKS`]) and
/// `model.json`.
pub const MODELS: &str = "models/als";
/// The promoted version's name (text), written when a version is promoted or rolled back
/// to: what readers of the lake alone (the stream's `similar_books`) take as current.
pub const CURRENT_MODEL: &str = "models/als/_current";
/// A version's similar books: `book_id, pos, similar_book_id, score` (as the store's
/// `rec_similar_books`).
pub const SIMILAR_BOOKS: &str = "similar_books.parquet";
/// A version's popular books per category: `category, pos, book_id, score` (as the store's
/// `rec_popular_books`; category `''` is the whole catalogue).
pub const POPULAR_BOOKS: &str = "popular_books.parquet";

/// A model version's folder.
pub fn model_folder(version: &str) -> String {
    format!("{MODELS}/{version}")
}

/// `(dt, hour)` of a timestamp, UTC.
pub fn hour_bucket(ts: &DateTime<Utc>) -> (String, u32) {
    (
        format!("{:04}-{:02}-{:02}", ts.year(), ts.month(), ts.day()),
        ts.hour(),
    )
}

impl DataFile {
    /// The lake-relative object name.
    pub fn relative_path(&self) -> String {
        let name = format!(
            "part-{}-{}-{}-{}.parquet",
            self.topic, self.partition, self.first_offset, self.last_offset
        );
        match &self.kind {
            FileKind::Events { dt, hour } => format!("{EVENTS}/dt={dt}/hour={hour:02}/{name}"),
            FileKind::DeadLetters { dt } => format!("{DEAD_LETTERS}/dt={dt}/{name}"),
            FileKind::Cdc { table } => format!("{CDC}/{table}/{name}"),
        }
    }

    /// Parses a lake-relative object name written by [`DataFile::relative_path`].
    pub fn parse(relative: &str) -> Option<DataFile> {
        let (dir, file) = relative.rsplit_once('/')?;
        let stem = file.strip_prefix("part-")?.strip_suffix(".parquet")?;
        // topic names may contain '-': the numbers are the last three fields
        let mut it = stem.rsplitn(4, '-');
        let last_offset = it.next()?.parse().ok()?;
        let first_offset = it.next()?.parse().ok()?;
        let partition = it.next()?.parse().ok()?;
        let topic = it.next()?.to_string();
        let kind = if let Some(rest) = dir.strip_prefix(&format!("{EVENTS}/")) {
            let (dt, hour) = rest.split_once('/')?;
            FileKind::Events {
                dt: dt.strip_prefix("dt=")?.to_string(),
                hour: hour.strip_prefix("hour=")?.parse().ok()?,
            }
        } else if let Some(rest) = dir.strip_prefix(&format!("{DEAD_LETTERS}/")) {
            FileKind::DeadLetters {
                dt: rest.strip_prefix("dt=")?.to_string(),
            }
        } else if let Some(table) = dir.strip_prefix(&format!("{CDC}/")) {
            if table.is_empty() || table.contains('/') {
                return None;
            }
            FileKind::Cdc {
                table: table.to_string(),
            }
        } else {
            return None;
        };
        Some(DataFile {
            kind,
            topic,
            partition,
            first_offset,
            last_offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_even_with_dashes_in_topics() {
        for f in [
            DataFile {
                kind: FileKind::Events {
                    dt: "2026-11-26".into(),
                    hour: 7,
                },
                topic: "user_behavior_logs".into(),
                partition: 3,
                first_offset: 100,
                last_offset: 250,
            },
            DataFile {
                kind: FileKind::DeadLetters {
                    dt: "2026-11-26".into(),
                },
                topic: "events-it-1-2".into(),
                partition: 0,
                first_offset: 0,
                last_offset: 0,
            },
            DataFile {
                kind: FileKind::Cdc {
                    table: "books".into(),
                },
                topic: "book_db.books".into(),
                partition: 2,
                first_offset: 5,
                last_offset: 9,
            },
        ] {
            let p = f.relative_path();
            assert_eq!(DataFile::parse(&p), Some(f), "{p}");
        }
        assert_eq!(
            DataFile {
                kind: FileKind::Events {
                    dt: "2026-11-26".into(),
                    hour: 7
                },
                topic: "t".into(),
                partition: 1,
                first_offset: 2,
                last_offset: 3
            }
            .relative_path(),
            "events/dt=2026-11-26/hour=07/part-t-1-2-3.parquet"
        );
        assert_eq!(DataFile::parse("events/dt=x/hour=01/other.parquet"), None);
        assert_eq!(DataFile::parse("cdc/books/x/part-t-1-2-3.parquet"), None);
        assert_eq!(DataFile::parse("other/part-t-1-2-3.parquet"), None);
    }
}
