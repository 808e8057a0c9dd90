#!/bin/sh
# Runs init.sql with the passwords of the environment (MYSQL_BOOKREC_PASSWORD,
# MYSQL_DEBEZIUM_PASSWORD) in place of its placeholders; the image runs this once.
# INIT_SQL names another copy of init.sql (tests/it/compose_run.rs runs this script against
# a private MariaDB, with MYSQL_HOST and MYSQL_TCP_PORT pointing the client at it).
set -eu
sed -e "s/BOOKREC_DB_PASSWORD/${MYSQL_BOOKREC_PASSWORD}/" \
    -e "s/DEBEZIUM_DB_PASSWORD/${MYSQL_DEBEZIUM_PASSWORD}/" "${INIT_SQL:-/deploy/mysql/init.sql}" \
  | mysql -uroot -p"${MYSQL_ROOT_PASSWORD}"
