-- name: recent_books
-- description: Each user's last 50 viewed or clicked books, newest first, de-duplicated.
--   Read with LRANGE rt:recent:<user_id> 0 N-1.
-- sink: recent
-- key: rt:recent:{user_id}
-- member: book_id
-- max_len: 50
-- ttl_secs: 2592000
SELECT user_id, book_id
FROM events
WHERE event_type IN ('view', 'click')
  AND user_id IS NOT NULL
  AND book_id IS NOT NULL
ORDER BY event_ts, event_id
