#!/bin/sh
# Creates bookrec's topics (idempotent). Run by the compose service kafka-init with the
# broker's own tools; KAFKA_BOOTSTRAP and the partition counts come from its environment.
set -eu
BOOTSTRAP="${KAFKA_BOOTSTRAP:-kafka:9092}"
TOPICS_BIN="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"
EVENTS_PARTITIONS="${EVENTS_PARTITIONS:-6}"
CDC_PARTITIONS="${CDC_PARTITIONS:-1}"
create() { # topic partitions [extra config…]
  topic="$1"; partitions="$2"; shift 2
  "$TOPICS_BIN" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$topic" --partitions "$partitions" --replication-factor 1 "$@"
}
# behaviour events and the collector's dead letters (keyed by user: order per user)
create user_behavior_logs "$EVENTS_PARTITIONS"
create user_behavior_logs.dlq 1
# Debezium's topics: one partition per table keeps a table's changes in order; compacted,
# as Kafka Connect expects of CDC topics it does not create itself
for t in auth_db.auth_db.users book_db_mongo.book_db.books \
         user_engagement_db.public.favorites user_engagement_db.public.ratings \
         user_engagement_db.public.reading_progress; do
  create "$t" "$CDC_PARTITIONS" --config cleanup.policy=compact
done
echo "topics ready"
