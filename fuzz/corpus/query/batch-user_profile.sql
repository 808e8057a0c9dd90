-- name: user_profile
-- description: Long-term interest profile per user: activity by event type, the top
--   categories and authors with their share of the user's book events, first and last seen,
--   and recency in days.
-- output: lake, db
-- keys: user_id
-- param: top_n = 5
WITH ev AS (
    SELECT e.user_id, e.event_type, e.event_ts, b.category, b.author
    FROM events e
    LEFT JOIN books b ON e.book_id = b.book_id
    WHERE e.user_id IS NOT NULL
      AND e.event_ts <= ${as_of}
      AND e.dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
activity AS (
    SELECT
        user_id,
        count(*) AS events,
        count(*) FILTER (WHERE event_type = 'view') AS views,
        count(*) FILTER (WHERE event_type = 'click') AS clicks,
        count(*) FILTER (WHERE event_type = 'favorite') AS favorites,
        count(*) FILTER (WHERE event_type = 'add_to_cart') AS cart_adds,
        count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
        count(*) FILTER (WHERE event_type = 'rate') AS ratings,
        count(*) FILTER (WHERE event_type = 'search') AS searches,
        min(event_ts) AS first_seen,
        max(event_ts) AS last_seen,
        (date_part('epoch', ${as_of}) - date_part('epoch', max(event_ts))) / 86400.0 AS recency_days
    FROM ev
    GROUP BY user_id
),
cat AS (
    SELECT
        user_id,
        category,
        count(*) * 1.0 / sum(count(*)) OVER (PARTITION BY user_id) AS share,
        row_number() OVER (PARTITION BY user_id ORDER BY count(*) DESC, category) AS rk
    FROM ev
    WHERE category IS NOT NULL
    GROUP BY user_id, category
),
auth AS (
    SELECT
        user_id,
        author,
        count(*) * 1.0 / sum(count(*)) OVER (PARTITION BY user_id) AS share,
        row_number() OVER (PARTITION BY user_id ORDER BY count(*) DESC, author) AS rk
    FROM ev
    WHERE author IS NOT NULL
    GROUP BY user_id, author
),
top_cat AS (
    SELECT user_id,
        array_to_string(array_agg(category || ':' || CAST(round(share, 3) AS VARCHAR) ORDER BY rk), ',') AS top_categories
    FROM cat WHERE rk <= ${top_n} GROUP BY user_id
),
top_auth AS (
    SELECT user_id,
        array_to_string(array_agg(author || ':' || CAST(round(share, 3) AS VARCHAR) ORDER BY rk), ',') AS top_authors
    FROM auth WHERE rk <= ${top_n} GROUP BY user_id
)
SELECT a.*, c.top_categories, t.top_authors
FROM activity a
LEFT JOIN top_cat c ON a.user_id = c.user_id
LEFT JOIN top_auth t ON a.user_id = t.user_id
