#!/bin/sh
# Creates the lake's bucket (idempotent). Run by the compose service minio-init with mc.
set -eu
tries=0
until mc alias set lake "${S3_ENDPOINT:-http://minio:9000}" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -ge 60 ] && { echo "no S3 server at ${S3_ENDPOINT:-http://minio:9000}" >&2; exit 1; }
  sleep 1
done
mc mb --ignore-existing "lake/${LAKE_BUCKET:-bookrec-lake}"
echo "bucket ${LAKE_BUCKET:-bookrec-lake} ready"
