# bookrec: one image for every service (collect, land, stream, schedule, serve, batch).
#   docker build -t bookrec .        docker run --rm bookrec --help
# Expected size: ~110 MB (debian:bookworm-slim ~75 MB + the release binary ~35 MB + queries/).
FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka and zstd build from source with the image's gcc and make
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY examples ./examples
# optional cargo features, e.g. --build-arg FEATURES=hdfs for hdfs:// lakes
ARG FEATURES=""
RUN cargo build --release --locked --bin bookrec --features "$FEATURES" \
    && strip target/release/bookrec

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates=20230311* \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 bookrec \
    && useradd --system --uid 10001 --gid bookrec --home-dir /var/lib/bookrec --create-home bookrec
COPY --from=build /src/target/release/bookrec /usr/local/bin/bookrec
# the analysts' SQL at the default relative paths (batch.queries_dir, stream.queries_dir,
# lake.sources_dir) and the documented defaults beside it
COPY --chown=bookrec:bookrec queries /var/lib/bookrec/queries
COPY --chown=bookrec:bookrec config /etc/bookrec
WORKDIR /var/lib/bookrec
USER 10001:10001
# every long-running service answers /healthz on its HTTP or ops port; compose sets the
# port per service (BOOKREC_HEALTH_URL), 8080 is the API's
ENV BOOKREC_HEALTH_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/sh", "-c", "bookrec probe \"$BOOKREC_HEALTH_URL\""]
ENTRYPOINT ["bookrec"]
CMD ["--help"]
