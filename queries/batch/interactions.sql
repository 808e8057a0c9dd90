-- name: interactions
-- description: The user–book interaction matrix for ALS: one row per (user, book) with an
--   implicit-feedback weight (event type weight × exponential recency decay, summed) and the
--   last interaction time. Pairs whose weight is not positive (e.g. only an unfavourite) are
--   left out. Ratings outside rating_min..rating_max count nothing. What users saved
--   server-side (the engagement source: favourites, ratings, reading progress) counts too,
--   with its own weights (w_saved_*) and the same decay from the time it was saved, so a
--   favourite counts even when the front end never logged it. A favourite both logged and
--   saved counts both ways (the act and the standing state); set w_saved_* = 0 to count
--   the logs only.
-- output: lake
-- keys: user_id, book_id
-- param: w_view = 1
-- param: w_click = 2
-- param: w_favorite = 4
-- param: w_unfavorite = -4
-- param: w_add_to_cart = 6
-- param: w_remove_from_cart = -3
-- param: w_purchase = 10
-- param: w_read = 8
-- param: w_rate = 1
-- param: half_life_days = 30
-- param: rating_min = 0
-- param: rating_max = 10
-- param: w_saved_favorite = 4
-- param: w_saved_rating = 1
-- param: w_saved_progress = 8
-- tags: daily, model
-- test: unique(user_id, book_id)
-- test: not_null(user_id, book_id, weight)
-- test: sql(SELECT * FROM ${this} WHERE weight <= 0 OR isnan(weight))
-- test: row_count(>= 1) warn
WITH weighted AS (
    SELECT
        user_id,
        book_id,
        event_ts,
        CAST(CASE event_type
            WHEN 'view' THEN ${w_view}
            WHEN 'click' THEN ${w_click}
            WHEN 'favorite' THEN ${w_favorite}
            WHEN 'unfavorite' THEN ${w_unfavorite}
            WHEN 'add_to_cart' THEN ${w_add_to_cart}
            WHEN 'remove_from_cart' THEN ${w_remove_from_cart}
            WHEN 'purchase' THEN ${w_purchase}
            WHEN 'read' THEN ${w_read}
            -- a rating outside the intake's range (an older lake may hold one) counts 0
            WHEN 'rate' THEN ${w_rate} * CASE WHEN rating BETWEEN ${rating_min} AND ${rating_max}
                                             THEN rating ELSE 0 END
            ELSE 0
        END AS DOUBLE)
        * exp(-ln(2.0) * (date_part('epoch', ${as_of}) - date_part('epoch', event_ts))
              / 86400.0 / ${half_life_days}) AS w
    FROM events
    WHERE user_id IS NOT NULL
      AND book_id IS NOT NULL
      -- impressions (what serve showed) weigh nothing
      AND event_type <> 'impression'
      AND event_ts <= ${as_of}
      AND dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
saved AS (
    SELECT
        user_id,
        book_id,
        ts AS event_ts,
        CASE kind
            WHEN 'favorite' THEN ${w_saved_favorite}
            WHEN 'rating' THEN ${w_saved_rating} * CASE WHEN value BETWEEN ${rating_min} AND ${rating_max}
                                                    THEN value ELSE 0 END
            -- progress is the share read: 0..1
            WHEN 'progress' THEN ${w_saved_progress} * greatest(least(value, 1.0), 0.0)
            ELSE 0
        END
        * exp(-ln(2.0) * greatest(date_part('epoch', ${as_of}) - date_part('epoch', ts), 0)
              / 86400.0 / ${half_life_days}) AS w
    FROM engagement
    WHERE user_id IS NOT NULL
      AND book_id IS NOT NULL
      AND ts <= ${as_of}
)
SELECT
    user_id,
    book_id,
    sum(w) AS weight,
    max(event_ts) AS last_ts
FROM (
    SELECT user_id, book_id, event_ts, w FROM weighted
    UNION ALL
    SELECT user_id, book_id, event_ts, CAST(w AS DOUBLE) FROM saved
) AS all_signals
GROUP BY user_id, book_id
HAVING sum(w) > 0
