-- name: book_popularity
-- description: Activity per book over the last 1, 7 and 30 days (views, clicks, favourites,
--   cart adds, purchases), the 7-day trend (last 7 days against the 7 before, +1 smoothed)
--   and a time-decayed popularity score (type weight × 2^(−age / half-life)).
-- output: lake, db
-- keys: book_id
-- param: half_life_days = 7
-- param: w_view = 1
-- param: w_click = 2
-- param: w_favorite = 4
-- param: w_add_to_cart = 6
-- param: w_purchase = 10
-- tags: daily, cold_start
-- test: unique(book_id)
-- test: not_null(book_id)
-- test: range(popularity, 0, )
-- test: relationships(book_id, books.book_id) warn
WITH e AS (
    SELECT
        book_id,
        event_type,
        (date_part('epoch', ${as_of}) - date_part('epoch', event_ts)) / 86400.0 AS age_days
    FROM events
    WHERE book_id IS NOT NULL
      -- what serve showed is not what users did
      AND event_type <> 'impression'
      AND event_ts <= ${as_of}
      AND event_ts > ${as_of} - INTERVAL '90 days'
      -- the same window on the partition column: only those days' folders are read
      AND dt >= CAST(CAST(${as_of} - INTERVAL '90 days' AS DATE) AS VARCHAR)
      AND dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
)
SELECT
    book_id,
    count(*) FILTER (WHERE event_type = 'view' AND age_days < 1) AS views_1d,
    count(*) FILTER (WHERE event_type = 'view' AND age_days < 7) AS views_7d,
    count(*) FILTER (WHERE event_type = 'view' AND age_days < 30) AS views_30d,
    count(*) FILTER (WHERE event_type = 'click' AND age_days < 1) AS clicks_1d,
    count(*) FILTER (WHERE event_type = 'click' AND age_days < 7) AS clicks_7d,
    count(*) FILTER (WHERE event_type = 'click' AND age_days < 30) AS clicks_30d,
    count(*) FILTER (WHERE event_type = 'favorite' AND age_days < 7) AS favorites_7d,
    count(*) FILTER (WHERE event_type = 'favorite' AND age_days < 30) AS favorites_30d,
    count(*) FILTER (WHERE event_type = 'add_to_cart' AND age_days < 7) AS cart_adds_7d,
    count(*) FILTER (WHERE event_type = 'add_to_cart' AND age_days < 30) AS cart_adds_30d,
    count(*) FILTER (WHERE event_type = 'purchase' AND age_days < 7) AS purchases_7d,
    count(*) FILTER (WHERE event_type = 'purchase' AND age_days < 30) AS purchases_30d,
    (count(*) FILTER (WHERE age_days < 7) + 1.0)
        / (count(*) FILTER (WHERE age_days >= 7 AND age_days < 14) + 1.0) AS trend_7d,
    sum(
        CAST(CASE event_type
            WHEN 'view' THEN ${w_view}
            WHEN 'click' THEN ${w_click}
            WHEN 'favorite' THEN ${w_favorite}
            WHEN 'add_to_cart' THEN ${w_add_to_cart}
            WHEN 'purchase' THEN ${w_purchase}
            ELSE 0
        END AS DOUBLE) * power(2.0, -age_days / ${half_life_days})
    ) AS popularity
FROM e
GROUP BY book_id
