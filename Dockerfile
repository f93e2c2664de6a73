# Multi-stage build: compile in the Rust image, run in a slim Debian as a
# non-root user. (Not built in CI: the CI machine has no Docker engine.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY web-client ./web-client
COPY benches ./benches
RUN cargo build --release --locked --bin webrtc-sip-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/gateway --create-home gateway
COPY --from=build /src/target/release/webrtc-sip-gateway /usr/local/bin/webrtc-sip-gateway
COPY config/gateway.toml /etc/webrtc-sip-gateway/gateway.toml
USER gateway
WORKDIR /var/lib/gateway
# HTTPS (web client, WebSocket), SIP, media.
EXPOSE 8443/tcp 5060/udp 20000-20999/udp
ENTRYPOINT ["webrtc-sip-gateway"]
CMD ["run", "--config", "/etc/webrtc-sip-gateway/gateway.toml"]
