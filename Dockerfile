# syntax=docker/dockerfile:1
# claude-gateway: build the binary, install the pinned Claude Code CLI, then a slim runtime with
# bubblewrap (the per-run sandbox) and a non-root user.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
RUN cargo build --release --locked -p claude-gateway

# The CLI asks for node 22 (its install script picks the native binary).
FROM node:22-bookworm-slim AS cli
WORKDIR /opt/gateway
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
    && node_modules/.bin/claude --version

FROM debian:bookworm-slim
# bubblewrap: the sandbox; util-linux: prlimit and nice inside it; the rest is what a model's
# shell commands commonly expect. Versions follow the base image's suite (security updates).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        bubblewrap util-linux ca-certificates bash coreutils findutils grep sed python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/claude-gateway gateway
COPY --from=cli /opt/gateway/node_modules /opt/gateway/node_modules
# The CLI binary is execute-only for the gateway's user: a process that runs a file it cannot
# read is not dumpable, so the tools the CLI starts (same uid) cannot reach its descriptors or
# memory. Done here, the gateway needs no copy of its own in the data dir.
RUN chmod 0711 /opt/gateway/node_modules/@anthropic-ai/claude-code/bin/claude.exe
COPY --from=build /src/target/release/claude-gateway /usr/local/bin/claude-gateway
ENV PORT=8080 \
    CLAUDE_GATEWAY_DATA_DIR=/var/lib/claude-gateway/data \
    CLAUDE_GATEWAY_CLAUDE_BIN=/opt/gateway/node_modules/.bin/claude
USER 10001:10001
WORKDIR /var/lib/claude-gateway
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '200 OK' <&3"]
ENTRYPOINT ["/usr/local/bin/claude-gateway", "serve"]
