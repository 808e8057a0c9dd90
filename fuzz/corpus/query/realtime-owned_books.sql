-- name: owned_books
-- description: The books each user bought, read or rated, with the time of the latest such
--   event (epoch ms), up to 500 per user: the recommendation API leaves them out. Read with
--   ZREVRANGE rt:owned:<user_id> 0 -1.
-- sink: recent
-- key: rt:owned:{user_id}
-- member: book_id
-- value: at_ms
-- max_len: 500
-- ttl_secs: 31536000
SELECT user_id, book_id, max(CAST(date_part('epoch', event_ts) * 1000 AS BIGINT)) AS at_ms
FROM events
WHERE event_type IN ('purchase', 'read', 'rate')
  AND user_id IS NOT NULL
  AND book_id IS NOT NULL
GROUP BY user_id, book_id
