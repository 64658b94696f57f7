# One image, two entry points: `savestream-api` and `savestream-worker`
# (compose.yaml picks one per service with `command`).
# /var/lib/savestream/session is made here, owned by the savestream user,
# because a named volume mounted there starts as a copy of it: made by
# Docker instead, it would be root's, and `savestream-worker login` could
# not write the user session into it.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/savestream-api target/release/savestream-worker /out/ \
 && (cp target/release/savestream /out/ 2>/dev/null || true)

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/savestream savestream \
 && mkdir -p /downloads /var/lib/savestream/session \
 && chown savestream /downloads /var/lib/savestream /var/lib/savestream/session
COPY --from=build /out/ /usr/local/bin/
USER savestream
WORKDIR /var/lib/savestream
ENV SAVESTREAM_API_HOST=0.0.0.0
EXPOSE 8080
CMD ["savestream-api", "--config", "/etc/savestream/config.toml"]
