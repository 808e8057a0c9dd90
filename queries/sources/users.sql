-- name: users
-- description: The platform's users, from the MySQL table auth_db.users captured by
--   Debezium (topic auth_db.auth_db.users, landed as auth_db_users). The numeric id is the
--   user_id the front end logs (as text). Credentials and e-mail addresses stay upstream:
--   no feature needs them.
-- input: auth_db_users(id, username, gender, birth_date, region, created_at)
SELECT
    CAST(id AS VARCHAR) AS user_id,
    CAST(username AS VARCHAR) AS username,
    CAST(gender AS VARCHAR) AS gender,
    -- a DATE arrives as 'YYYY-MM-DD'
    TRY_CAST(substr(CAST(birth_date AS VARCHAR), 1, 4) AS BIGINT) AS birth_year,
    CAST(region AS VARCHAR) AS region,
    -- a DATETIME arrives as '2024-05-01T13:45:00.25' (no zone: read as UTC)
    TRY_CAST(CAST(created_at AS VARCHAR) AS TIMESTAMP) AS signup_ts
FROM auth_db_users
WHERE id IS NOT NULL
