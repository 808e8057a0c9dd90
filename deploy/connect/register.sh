#!/bin/sh
# Registers (or updates) every connector of this folder with a Kafka Connect worker:
# PUT /connectors/<file name>/config, which creates or replaces, so running it again is
# harmless. CONNECT_URL (default http://connect:8083) names the worker; it is waited for.
set -eu
CONNECT_URL="${CONNECT_URL:-http://connect:8083}"
DIR="$(cd "$(dirname "$0")" && pwd)"
tries=0
until curl -fsS "$CONNECT_URL/connectors" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -ge 120 ] && { echo "no Kafka Connect worker at $CONNECT_URL" >&2; exit 1; }
  sleep 2
done
for f in "$DIR"/*.json; do
  name="$(basename "$f" .json)"
  curl -fsS -X PUT -H 'Content-Type: application/json' --data-binary "@$f" \
    "$CONNECT_URL/connectors/$name/config" >/dev/null
  echo "connector $name registered"
done
