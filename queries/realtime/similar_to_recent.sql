-- name: similar_to_recent
-- description: Each user's realtime recommendation list, for any service to read: books
--   similar to what the user just viewed, clicked, favourited, put in the cart, bought, read
--   or rated at least min_rating (the current model's `similar_books`), and the books popular in that book's category
--   (the model's `popular_books`). A row's score is its evidence decayed by age, in log2:
--   log2(event weight × similarity or popularity share) + event time / half-life — one
--   half-life newer counts as twice the evidence. Each book keeps its best row (score and
--   reason), the list its 50 best books; both follow model promotions within
--   stream.catalogue_refresh_secs. Read with ZREVRANGE rec:rt:<user_id> 0 N-1 WITHSCORES
--   and HGETALL rec:why:<user_id> (reasons similar_to:<book_id>, popular_in:<category>);
--   the list may hold books the user already has (rt:owned:<user_id> lists them).
-- sink: ranked
-- key: rec:rt:{user_id}
-- member: book_id
-- value: score
-- reason: reason
-- reason_key: rec:why:{user_id}
-- max_len: 50
-- ttl_secs: 604800
-- param: half_life_hours = 24
-- param: w_view = 1
-- param: w_click = 2
-- param: w_favorite = 4
-- param: w_add_to_cart = 6
-- param: w_purchase = 8
-- param: w_read = 4
-- param: w_rate = 4
-- param: min_rating = 4
-- param: w_popular = 0.5
WITH e AS (
    SELECT
        user_id,
        book_id,
        CASE event_type
            WHEN 'view' THEN ${w_view}
            WHEN 'click' THEN ${w_click}
            WHEN 'favorite' THEN ${w_favorite}
            WHEN 'add_to_cart' THEN ${w_add_to_cart}
            WHEN 'purchase' THEN ${w_purchase}
            WHEN 'read' THEN ${w_read}
            ELSE ${w_rate}
        END AS w,
        date_part('epoch', event_ts) / (3600.0 * ${half_life_hours}) AS t
    FROM events
    WHERE user_id IS NOT NULL
      AND book_id IS NOT NULL
      AND event_type IN ('view', 'click', 'favorite', 'add_to_cart', 'purchase', 'read', 'rate')
      AND (event_type <> 'rate' OR rating >= ${min_rating})
),
top_popular AS (
    SELECT category, max(score) AS top FROM popular_books GROUP BY category
)
SELECT
    e.user_id,
    s.similar_book_id AS book_id,
    e.t + log2(e.w * s.score) AS score,
    'similar_to:' || e.book_id AS reason
FROM e
JOIN similar_books s ON s.book_id = e.book_id
WHERE s.score > 0
UNION ALL
SELECT
    e.user_id,
    p.book_id,
    e.t + log2(${w_popular} * e.w * p.score / m.top) AS score,
    'popular_in:' || b.category AS reason
FROM e
JOIN books b ON b.book_id = e.book_id
JOIN popular_books p ON p.category = b.category
JOIN top_popular m ON m.category = p.category
WHERE p.score > 0
  AND p.book_id <> e.book_id
