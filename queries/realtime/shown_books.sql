-- name: shown_books
-- description: Books shown to each user (the impression events `bookrec serve` logs), counted
--   per day: the hash rt:shown:<user_id>:<day> (day = the epoch second its UTC day starts)
--   holds book → impressions that day, and expires 7 days after the day ends. The API reads
--   the last 7 days, weighs each day's counts by 2^(−age / serve.ignored_half_life_days) and
--   leaves out books shown at least serve.exclude_ignored_after times that the user did not
--   view or click (impression-aware ranking, README "Experiments and impressions").
-- sink: hash
-- key: rt:shown:{user_id}:{bucket}
-- member: book_id
-- value: impressions
-- expire_at: expire_at
-- window: tumbling, 1-day buckets, 7 days
SELECT
    user_id,
    book_id,
    CAST(date_part('epoch', date_trunc('day', event_ts)) AS BIGINT) AS bucket,
    count(*) AS impressions,
    CAST(date_part('epoch', date_trunc('day', event_ts)) AS BIGINT) + 86400 + 7 * 86400 AS expire_at
FROM events
WHERE event_type = 'impression'
  AND user_id IS NOT NULL
  AND book_id IS NOT NULL
GROUP BY 1, 2, 3
