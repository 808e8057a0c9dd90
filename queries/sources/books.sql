-- name: books
-- description: The book catalogue, from the MongoDB collection book_db.books captured by
--   Debezium (topic book_db_mongo.book_db.books, landed as book_db_mongo_books). The
--   document id (an ObjectId as its hex string, or whatever id the document has) is the
--   book_id the front end logs. Documents without an id are left out.
-- input: book_db_mongo_books(_id, title, author, publisher, year, category)
SELECT
    CAST(_id AS VARCHAR) AS book_id,
    CAST(title AS VARCHAR) AS title,
    CAST(author AS VARCHAR) AS author,
    CAST(publisher AS VARCHAR) AS publisher,
    -- a year that is not a whole number (text, a float) is NULL rather than an error
    TRY_CAST(TRY_CAST(year AS DOUBLE) AS BIGINT) AS year,
    CAST(category AS VARCHAR) AS category
FROM book_db_mongo_books
WHERE _id IS NOT NULL
