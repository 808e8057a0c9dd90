-- name: user_profile
-- description: Long-term interest profile per user: activity by event type, what the user
--   saved server-side (favourites, ratings, books in progress, from the engagement source),
--   the top categories and authors with their share of the user's weighted book signals
--   (a logged event weighs 1, a saved one its w_saved_* weight), first and last seen, and
--   recency in days. A user known only from saved engagement has a profile too.
-- output: lake, db
-- keys: user_id
-- param: top_n = 5
-- param: w_saved_favorite = 4
-- param: w_saved_rating = 2
-- param: w_saved_progress = 3
-- tags: daily
-- test: unique(user_id)
-- test: not_null(user_id, first_seen, last_seen)
-- test: range(events, 0, )
-- test: range(recency_days, 0, )
WITH ev AS (
    SELECT e.user_id, e.event_type, e.event_ts, b.category, b.author
    FROM events e
    LEFT JOIN books b ON e.book_id = b.book_id
    WHERE e.user_id IS NOT NULL
      -- impressions are what serve showed, not what the user did
      AND e.event_type <> 'impression'
      AND e.event_ts <= ${as_of}
      AND e.dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
saved AS (
    SELECT
        s.user_id,
        s.kind,
        s.ts,
        b.category,
        b.author,
        CAST(CASE s.kind
            WHEN 'favorite' THEN ${w_saved_favorite}
            WHEN 'rating' THEN ${w_saved_rating}
            WHEN 'progress' THEN ${w_saved_progress}
            ELSE 0
        END AS DOUBLE) AS w
    FROM engagement s
    LEFT JOIN books b ON s.book_id = b.book_id
    WHERE s.user_id IS NOT NULL
      AND s.ts <= ${as_of}
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
        min(event_ts) AS first_event,
        max(event_ts) AS last_event
    FROM ev
    GROUP BY user_id
),
saved_activity AS (
    SELECT
        user_id,
        count(*) FILTER (WHERE kind = 'favorite') AS saved_favorites,
        count(*) FILTER (WHERE kind = 'rating') AS saved_ratings,
        count(*) FILTER (WHERE kind = 'progress') AS books_in_progress,
        min(ts) AS first_saved,
        max(ts) AS last_saved
    FROM saved
    GROUP BY user_id
),
signals AS (
    SELECT user_id, category, author, CAST(1.0 AS DOUBLE) AS w FROM ev
    UNION ALL
    SELECT user_id, category, author, w FROM saved WHERE w > 0
),
cat AS (
    SELECT
        user_id,
        category,
        sum(w) / sum(sum(w)) OVER (PARTITION BY user_id) AS share,
        row_number() OVER (PARTITION BY user_id ORDER BY sum(w) DESC, category) AS rk
    FROM signals
    WHERE category IS NOT NULL
    GROUP BY user_id, category
),
auth AS (
    SELECT
        user_id,
        author,
        sum(w) / sum(sum(w)) OVER (PARTITION BY user_id) AS share,
        row_number() OVER (PARTITION BY user_id ORDER BY sum(w) DESC, author) AS rk
    FROM signals
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
),
everyone AS (
    SELECT user_id FROM activity
    UNION
    SELECT user_id FROM saved_activity
),
seen AS (
    SELECT
        p.user_id,
        CASE WHEN a.first_event IS NULL THEN s.first_saved
             WHEN s.first_saved IS NULL THEN a.first_event
             ELSE least(a.first_event, s.first_saved) END AS first_seen,
        CASE WHEN a.last_event IS NULL THEN s.last_saved
             WHEN s.last_saved IS NULL THEN a.last_event
             ELSE greatest(a.last_event, s.last_saved) END AS last_seen
    FROM everyone p
    LEFT JOIN activity a ON p.user_id = a.user_id
    LEFT JOIN saved_activity s ON p.user_id = s.user_id
)
SELECT
    p.user_id,
    coalesce(a.events, 0) AS events,
    coalesce(a.views, 0) AS views,
    coalesce(a.clicks, 0) AS clicks,
    coalesce(a.favorites, 0) AS favorites,
    coalesce(a.cart_adds, 0) AS cart_adds,
    coalesce(a.purchases, 0) AS purchases,
    coalesce(a.ratings, 0) AS ratings,
    coalesce(a.searches, 0) AS searches,
    coalesce(s.saved_favorites, 0) AS saved_favorites,
    coalesce(s.saved_ratings, 0) AS saved_ratings,
    coalesce(s.books_in_progress, 0) AS books_in_progress,
    w.first_seen,
    w.last_seen,
    (date_part('epoch', ${as_of}) - date_part('epoch', w.last_seen)) / 86400.0 AS recency_days,
    c.top_categories,
    t.top_authors
FROM everyone p
JOIN seen w ON p.user_id = w.user_id
LEFT JOIN activity a ON p.user_id = a.user_id
LEFT JOIN saved_activity s ON p.user_id = s.user_id
LEFT JOIN top_cat c ON p.user_id = c.user_id
LEFT JOIN top_auth t ON p.user_id = t.user_id
