-- name: category_popularity
-- description: Popularity per book category for cold start: events and distinct users over
--   the last 7 days, a time-decayed score summed over the category's books, and the rank.
-- output: lake, db
-- keys: category
-- param: half_life_days = 7
-- tags: daily, cold_start
-- test: unique(category)
-- test: not_null(category)
-- test: range(popularity_rank, 1, )
-- test: relationships(category, books.category)
SELECT
    b.category,
    count(*) FILTER (WHERE e.event_ts > ${as_of} - INTERVAL '7 days') AS events_7d,
    count(DISTINCT e.user_id) FILTER (WHERE e.event_ts > ${as_of} - INTERVAL '7 days') AS users_7d,
    sum(power(2.0, -((date_part('epoch', ${as_of}) - date_part('epoch', e.event_ts)) / 86400.0)
        / ${half_life_days})) AS popularity,
    rank() OVER (ORDER BY sum(power(2.0, -((date_part('epoch', ${as_of})
        - date_part('epoch', e.event_ts)) / 86400.0) / ${half_life_days})) DESC) AS popularity_rank
FROM events e
JOIN books b ON e.book_id = b.book_id
WHERE e.event_ts <= ${as_of}
  AND e.event_ts > ${as_of} - INTERVAL '90 days'
  -- the same window on the partition column: only those days' folders are read
  AND e.dt >= CAST(CAST(${as_of} - INTERVAL '90 days' AS DATE) AS VARCHAR)
  AND e.dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
  AND b.category IS NOT NULL
  -- impressions are what serve showed, not what users did
  AND e.event_type <> 'impression'
GROUP BY b.category
