# syntax=docker/dockerfile:1
#
# Multi-stage build: compile in the official Rust image, run in debian-slim
# as a non-root user. TLS is rustls with bundled roots, so the runtime image
# needs neither OpenSSL nor a CA bundle.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a change to src/ does not rebuild
# them. The placeholder sources are replaced right after.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin email-service \
    && rm -rf src

COPY src ./src
COPY sql ./sql
# Newer mtimes than the placeholder build, so cargo rebuilds our crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin email-service \
    && strip target/release/email-service

FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 email \
    && useradd --system --uid 10001 --gid email --no-create-home --shell /usr/sbin/nologin email \
    && mkdir -p /app/sent_emails \
    && chown email:email /app/sent_emails
WORKDIR /app
COPY --from=build /src/target/release/email-service /usr/local/bin/email-service
USER email:email

ENV HOST=0.0.0.0 \
    PORT=8002 \
    LOG_FORMAT=json \
    EMAIL_FILE_PATH=/app/sent_emails
EXPOSE 8002
STOPSIGNAL SIGTERM
# The binary probes its own /livez, so the image needs no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["email-service", "healthcheck"]
ENTRYPOINT ["email-service"]
