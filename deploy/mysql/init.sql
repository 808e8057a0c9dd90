-- MySQL of the platform: auth_db (the users Debezium captures) and recommendation_db
-- (bookrec's store). Run once by the image on an empty data directory.
CREATE DATABASE IF NOT EXISTS auth_db;
CREATE DATABASE IF NOT EXISTS recommendation_db;

CREATE TABLE auth_db.users (
    id BIGINT PRIMARY KEY AUTO_INCREMENT,
    username VARCHAR(64) NOT NULL UNIQUE,
    email VARCHAR(255) NULL,
    password_hash VARCHAR(255) NOT NULL,
    gender VARCHAR(16) NULL,
    birth_date DATE NULL,
    region VARCHAR(64) NULL,
    created_at DATETIME(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
);
INSERT INTO auth_db.users (username, email, password_hash, gender, birth_date, region) VALUES
    ('ann', 'ann@example.org', 'x', 'f', '1990-02-03', 'eu'),
    ('bob', NULL, 'x', 'm', '1985-07-20', 'na'),
    ('cy', 'cy@example.org', 'x', NULL, NULL, 'apac');

-- bookrec's store (migrations run on connect) and Debezium's reader of auth_db
CREATE USER IF NOT EXISTS 'bookrec'@'%' IDENTIFIED BY 'BOOKREC_DB_PASSWORD';
GRANT ALL PRIVILEGES ON recommendation_db.* TO 'bookrec'@'%';
CREATE USER IF NOT EXISTS 'debezium'@'%' IDENTIFIED BY 'DEBEZIUM_DB_PASSWORD';
GRANT SELECT, RELOAD, SHOW DATABASES, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'debezium'@'%';
FLUSH PRIVILEGES;
