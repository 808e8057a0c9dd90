-- user_engagement_db: what users save server-side. Debezium reads it through pgoutput
-- (wal_level=logical is set on the server's command line).
CREATE TABLE favorites (
    user_id BIGINT NOT NULL,
    book_id TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, book_id)
);
CREATE TABLE ratings (
    user_id BIGINT NOT NULL,
    book_id TEXT NOT NULL,
    rating NUMERIC(3, 1) NOT NULL CHECK (rating BETWEEN 0 AND 10),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, book_id)
);
CREATE TABLE reading_progress (
    user_id BIGINT NOT NULL,
    book_id TEXT NOT NULL,
    progress NUMERIC(5, 4) CHECK (progress BETWEEN 0 AND 1),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, book_id)
);
-- the book ids are the MongoDB documents' (deploy/mongo/init.js)
INSERT INTO favorites VALUES (1, '000000000000000000000001', now()), (2, '000000000000000000000003', now());
INSERT INTO ratings VALUES (1, '000000000000000000000002', 8.5, now()), (3, '000000000000000000000001', 6.0, now());
INSERT INTO reading_progress VALUES (1, '000000000000000000000001', 0.4200, now());
