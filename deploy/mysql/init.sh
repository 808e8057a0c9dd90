#!/bin/sh
# Runs init.sql with the passwords of the environment (MYSQL_BOOKREC_PASSWORD,
# MYSQL_DEBEZIUM_PASSWORD) in place of its placeholders; the image runs this once.
set -eu
sed -e "s/BOOKREC_DB_PASSWORD/${MYSQL_BOOKREC_PASSWORD}/" \
    -e "s/DEBEZIUM_DB_PASSWORD/${MYSQL_DEBEZIUM_PASSWORD}/" /deploy/mysql/init.sql \
  | mysql -uroot -p"${MYSQL_ROOT_PASSWORD}"
