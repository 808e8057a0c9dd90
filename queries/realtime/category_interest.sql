-- name: category_interest
-- description: Short-term category interest per user: events per category in one-minute
--   buckets. A window of W minutes ending at minute M is exactly the sum of the hashes
--   rt:cat:<user_id>:<bucket> for the W buckets (epoch seconds of each minute) up to M;
--   a bucket expires an hour after it ends, so windows of up to 60 minutes (5 min, 1 h)
--   can be read back exactly.
-- sink: hash
-- key: rt:cat:{user_id}:{bucket}
-- member: category
-- value: events
-- expire_at: expire_at
-- window: sliding, 1-minute buckets, up to 60 minutes
SELECT
    e.user_id,
    b.category,
    CAST(date_part('epoch', date_trunc('minute', e.event_ts)) AS BIGINT) AS bucket,
    count(*) AS events,
    CAST(date_part('epoch', date_trunc('minute', e.event_ts)) AS BIGINT) + 60 + 3600 AS expire_at
FROM events e
JOIN books b ON e.book_id = b.book_id
WHERE e.user_id IS NOT NULL
  AND b.category IS NOT NULL
  -- what serve showed is not what the user did
  AND e.event_type <> 'impression'
GROUP BY 1, 2, 3
