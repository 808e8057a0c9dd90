-- name: engagement
-- description: What users saved server-side, from the PostgreSQL database
--   user_engagement_db captured by Debezium (topics user_engagement_db.public.favorites,
--   .ratings, .reading_progress): one row per user, book and kind — 'favorite' (value 1),
--   'rating' (the rating as stored) and 'progress' (the share read, 0..1) — with the time
--   it was saved (else the time of its last change; microseconds, UTC, as events.event_ts).
--   The current state: an unfavourited book's row is gone.
-- input: user_engagement_db_favorites(user_id, book_id, created_at)
-- input: user_engagement_db_ratings(user_id, book_id, rating, updated_at)
-- input: user_engagement_db_reading_progress(user_id, book_id, progress, updated_at)
SELECT
    CAST(user_id AS VARCHAR) AS user_id,
    CAST(book_id AS VARCHAR) AS book_id,
    'favorite' AS kind,
    CAST(1.0 AS DOUBLE) AS value,
    -- a time with a zone arrives as '2024-05-01T08:00:00.123456Z'; the same type as
    -- events.event_ts (microseconds, UTC)
    arrow_cast(COALESCE(TRY_CAST(CAST(created_at AS VARCHAR) AS TIMESTAMP), to_timestamp_millis(_ts_ms)),
               'Timestamp(Microsecond, Some("UTC"))') AS ts
FROM user_engagement_db_favorites
WHERE user_id IS NOT NULL AND book_id IS NOT NULL
UNION ALL
SELECT
    CAST(user_id AS VARCHAR),
    CAST(book_id AS VARCHAR),
    'rating',
    TRY_CAST(CAST(rating AS VARCHAR) AS DOUBLE),
    arrow_cast(COALESCE(TRY_CAST(CAST(updated_at AS VARCHAR) AS TIMESTAMP), to_timestamp_millis(_ts_ms)),
               'Timestamp(Microsecond, Some("UTC"))')
FROM user_engagement_db_ratings
WHERE user_id IS NOT NULL AND book_id IS NOT NULL AND rating IS NOT NULL
UNION ALL
SELECT
    CAST(user_id AS VARCHAR),
    CAST(book_id AS VARCHAR),
    'progress',
    TRY_CAST(CAST(progress AS VARCHAR) AS DOUBLE),
    arrow_cast(COALESCE(TRY_CAST(CAST(updated_at AS VARCHAR) AS TIMESTAMP), to_timestamp_millis(_ts_ms)),
               'Timestamp(Microsecond, Some("UTC"))')
FROM user_engagement_db_reading_progress
WHERE user_id IS NOT NULL AND book_id IS NOT NULL AND progress IS NOT NULL
