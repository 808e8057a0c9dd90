-- name: books
-- description: The book catalogue, from the MongoDB collection book_db.books captured by
--   Debezium (topic book_db_mongo.book_db.books, landed as book_db_mongo_books). The
--   document id (an ObjectId as its hex string, or whatever id the document has) is the
--   book_id the front end logs. Documents without an id are left out. work_id groups the
--   editions of one work (different ISBNs of one book): by default the title without a
--   bracketed suffix ("(Book 2)", "[Large Print]"), lower case, punctuation folded, and the
--   author's last name; a book without a title is a work of its own. Refine it here (a
--   mapping table, an ISBN service) and every list follows: recommendations never hold two
--   editions of one work, and another edition of a book the user has is treated as seen.
-- input: book_db_mongo_books(_id, title, author, publisher, year, category)
SELECT
    CAST(_id AS VARCHAR) AS book_id,
    CAST(title AS VARCHAR) AS title,
    CAST(author AS VARCHAR) AS author,
    CAST(publisher AS VARCHAR) AS publisher,
    -- a year that is not a whole number (text, a float) is NULL rather than an error
    TRY_CAST(TRY_CAST(year AS DOUBLE) AS BIGINT) AS year,
    CAST(category AS VARCHAR) AS category,
    COALESCE(
        NULLIF(trim(regexp_replace(
            lower(regexp_replace(CAST(title AS VARCHAR), '\s*[\(\[][^\)\]]*[\)\]]', '', 'g')),
            '[^[:alnum:]]+', ' ', 'g')), '')
        || '|'
        || COALESCE(regexp_replace(lower(trim(CAST(author AS VARCHAR))),
            '^(.*[^[:alnum:]])?([[:alnum:]]+)[^[:alnum:]]*$', '\2'), ''),
        CAST(_id AS VARCHAR)) AS work_id
FROM book_db_mongo_books
WHERE _id IS NOT NULL
