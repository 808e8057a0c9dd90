-- name: recent_books
-- description: Each user's last 50 viewed or clicked books, newest first, de-duplicated,
--   each with the time it was last viewed or clicked (epoch ms): a sorted set scored by
--   time. Read with ZREVRANGE rt:recent:<user_id> 0 N-1 WITHSCORES; the times let a reader
--   ignore views older than the model's data cut-off.
-- sink: recent
-- key: rt:recent:{user_id}
-- member: book_id
-- value: at_ms
-- max_len: 50
-- ttl_secs: 2592000
SELECT user_id, book_id, max(CAST(date_part('epoch', event_ts) * 1000 AS BIGINT)) AS at_ms
FROM events
WHERE event_type IN ('view', 'click')
  AND user_id IS NOT NULL
  AND book_id IS NOT NULL
GROUP BY user_id, book_id
