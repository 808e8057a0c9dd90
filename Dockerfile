# Build: docker build -t bookrec .   Run: docker run bookrec --help
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin bookrec

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/bookrec /usr/local/bin/bookrec
# the analysts' SQL (batch features, realtime features, source views) at the default paths
COPY --from=build /src/queries /var/lib/bookrec/queries
WORKDIR /var/lib/bookrec
ENTRYPOINT ["bookrec"]
