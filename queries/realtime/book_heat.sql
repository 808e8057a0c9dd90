-- name: book_heat
-- description: Book heat for "trending now": events per book in one-minute buckets, a sorted
--   set per bucket. A window is the sum of its buckets (ZUNIONSTORE or a client-side sum);
--   the change against the previous window compares two such sums. Buckets expire two hours
--   after they end (a 1-hour window and the one before it).
-- sink: zset
-- key: rt:heat:{bucket}
-- member: book_id
-- value: events
-- expire_at: expire_at
-- window: sliding, 1-minute buckets, up to 2 × 60 minutes
SELECT
    book_id,
    CAST(date_part('epoch', date_trunc('minute', event_ts)) AS BIGINT) AS bucket,
    count(*) AS events,
    CAST(date_part('epoch', date_trunc('minute', event_ts)) AS BIGINT) + 60 + 7200 AS expire_at
FROM events
WHERE book_id IS NOT NULL
  -- what serve showed is not what the user did
  AND event_type <> 'impression'
GROUP BY 1, 2
