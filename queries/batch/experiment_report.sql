-- name: experiment_report
-- description: A/B experiments, per experiment and variant: users shown recommendations,
--   responses and impressions (shown book slots), clicks on them (a click carrying the
--   response's request_id on a book it showed), conversions (the user adds the shown book
--   to the cart or buys it within attribution_hours after it was shown), the click-through
--   and conversion rates, and 95% confidence intervals (normal approximation on the
--   impressions; the inputs are columns, so other intervals can be computed from them).
--   `bookrec experiment report NAME` prints one experiment with the differences between
--   variants and whether they are significant. Impressions are logged by `bookrec serve`
--   (README "Experiments").
-- output: lake
-- keys: experiment, variant
-- param: days = 28
-- param: attribution_hours = 24
-- tags: experiments
-- test: unique(experiment, variant)
-- test: not_null(experiment, variant)
-- test: range(ctr, 0, 1)
-- test: sql(SELECT * FROM ${this} WHERE clicks > impressions OR conversions > impressions OR users > impressions)
WITH shown AS (
    -- one row per (impression, experiment it was in). Built-in functions only (the report
    -- also runs on a Ballista cluster, whose executors know no bookrec functions): the
    -- collector keeps properties as compact JSON with sorted keys, so `"request_id":"…"`
    -- and `"experiments":{"name":"variant",…}` can be cut out by pattern (experiment and
    -- variant names are letters, digits, `_`, `-`, `.`: serve.experiments checks them)
    SELECT
        user_id,
        book_id,
        event_ts,
        regexp_match(properties, '"request_id":"([^"\\]*)"')[1] AS request_id,
        unnest(string_to_array(regexp_match(properties, '"experiments":\{([^}]*)\}')[1], ','))
            AS assignment
    FROM events
    WHERE event_type = 'impression'
      AND user_id IS NOT NULL
      AND event_ts <= ${as_of}
      AND event_ts > ${as_of} - CAST(CAST(${days} AS VARCHAR) || ' days' AS INTERVAL)
      AND dt >= CAST(CAST(${as_of} - CAST(CAST(${days} AS VARCHAR) || ' days' AS INTERVAL) AS DATE) AS VARCHAR)
      AND dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
impressions AS (
    SELECT
        user_id,
        book_id,
        event_ts,
        request_id,
        btrim(split_part(assignment, ':', 1), '"') AS experiment,
        btrim(split_part(assignment, ':', 2), '"') AS variant
    FROM shown
),
clicks AS (
    SELECT DISTINCT regexp_match(properties, '"request_id":"([^"\\]*)"')[1] AS request_id, book_id
    FROM events
    WHERE event_type = 'click'
      AND properties LIKE '%"request_id":%'
      AND event_ts <= ${as_of}
      AND dt >= CAST(CAST(${as_of} - CAST(CAST(${days} AS VARCHAR) || ' days' AS INTERVAL) AS DATE) AS VARCHAR)
      AND dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
conversions AS (
    SELECT user_id, book_id, event_ts
    FROM events
    WHERE event_type IN ('add_to_cart', 'purchase')
      AND user_id IS NOT NULL
      AND event_ts <= ${as_of}
      AND dt >= CAST(CAST(${as_of} - CAST(CAST(${days} AS VARCHAR) || ' days' AS INTERVAL) AS DATE) AS VARCHAR)
      AND dt <= CAST(CAST(${as_of} AS DATE) AS VARCHAR)
),
scored AS (
    SELECT
        i.experiment,
        i.variant,
        i.user_id,
        i.request_id,
        i.book_id,
        max(CASE WHEN c.request_id IS NOT NULL THEN 1 ELSE 0 END) AS clicked,
        max(CASE WHEN v.user_id IS NOT NULL THEN 1 ELSE 0 END) AS converted
    FROM impressions i
    LEFT JOIN clicks c ON c.request_id = i.request_id AND c.book_id = i.book_id
    LEFT JOIN conversions v
        ON v.user_id = i.user_id
       AND v.book_id = i.book_id
       AND v.event_ts >= i.event_ts
       AND v.event_ts <= i.event_ts + CAST(CAST(${attribution_hours} AS VARCHAR) || ' hours' AS INTERVAL)
    WHERE i.variant IS NOT NULL AND i.variant <> ''
    GROUP BY 1, 2, 3, 4, 5
),
totals AS (
    SELECT
        experiment,
        variant,
        count(DISTINCT user_id) AS users,
        count(DISTINCT request_id) AS responses,
        count(*) AS impressions,
        CAST(sum(clicked) AS BIGINT) AS clicks,
        CAST(sum(converted) AS BIGINT) AS conversions
    FROM scored
    GROUP BY 1, 2
)
SELECT
    experiment,
    variant,
    users,
    responses,
    impressions,
    clicks,
    conversions,
    CAST(clicks AS DOUBLE) / impressions AS ctr,
    CAST(clicks AS DOUBLE) / impressions
        - 1.96 * sqrt((CAST(clicks AS DOUBLE) / impressions)
                      * (1 - CAST(clicks AS DOUBLE) / impressions) / impressions) AS ctr_low,
    CAST(clicks AS DOUBLE) / impressions
        + 1.96 * sqrt((CAST(clicks AS DOUBLE) / impressions)
                      * (1 - CAST(clicks AS DOUBLE) / impressions) / impressions) AS ctr_high,
    CAST(conversions AS DOUBLE) / impressions AS conversion_rate,
    CAST(conversions AS DOUBLE) / impressions
        - 1.96 * sqrt((CAST(conversions AS DOUBLE) / impressions)
                      * (1 - CAST(conversions AS DOUBLE) / impressions) / impressions)
        AS conversion_low,
    CAST(conversions AS DOUBLE) / impressions
        + 1.96 * sqrt((CAST(conversions AS DOUBLE) / impressions)
                      * (1 - CAST(conversions AS DOUBLE) / impressions) / impressions)
        AS conversion_high
FROM totals
ORDER BY experiment, variant
