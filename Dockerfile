# syntax=docker/dockerfile:1
# gru-serve, CPU image.
#
#   docker build -t gru-serve .
#   docker run --rm -p 50051:50051 gru-serve
#
# Stages: chef (Rust + cargo-chef) -> planner (dependency recipe) -> builder
# (dependencies cooked in their own layer, then the crate) -> runtime (slim
# Debian, the binary and the default model repository, non-root).
# Dockerfile.cuda mirrors this file: change both together.
# scripts/docker/verify.sh builds and runs this image with buildah.

FROM rust:1.95.0-slim-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --version "${CARGO_CHEF_VERSION}" --locked \
    && rm -rf "${CARGO_HOME}/registry"
WORKDIR /build

# The recipe lists only manifests and lock file, so the cooked layer below is
# rebuilt only when dependencies change, not on every source edit.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin gru-serve

FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN cargo chef cook --release --locked --bin gru-serve --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin gru-serve \
    && install -D -m 0755 target/release/gru-serve /out/gru-serve

FROM debian:bookworm-slim AS runtime
# A fixed uid/gid (10001), so volume ownership and Kubernetes' runAsUser can name it.
RUN groupadd --gid 10001 gru \
    && useradd --uid 10001 --gid gru --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gru
COPY --from=builder /out/gru-serve /usr/local/bin/gru-serve
# The built-in model repository, so the image serves out of the box. Owned by
# the server's uid: training writes new model versions into it.
COPY --chown=10001:10001 models/ /models/
# JSON log lines: what log collectors parse (GRU_LOG_FORMAT=text for people).
ENV GRU_MODEL_DIR=/models \
    GRU_LISTEN=0.0.0.0:50051 \
    GRU_METRICS_LISTEN=0.0.0.0:9090 \
    GRU_HTTP_LISTEN=0.0.0.0:8000 \
    GRU_TRITON_GRPC_LISTEN=0.0.0.0:8001 \
    GRU_LOG_FORMAT=json
VOLUME ["/models"]
USER 10001:10001
# gRPC (gru.v1, grpc.health.v1, reflection); Prometheus text format on
# http://<host>:9090/metrics, HTTP health on :9090/livez and /readyz. Triton's ports: the KServe v2
# HTTP/JSON protocol on 8000, and on 8001 the same gRPC services as 50051
# (Triton's examples and perf_analyzer default to 8000/8001).
EXPOSE 50051 9090 8000 8001
# The server drains in-flight requests on SIGTERM (GRU_DRAIN_TIMEOUT, 10 s
# by default): give `docker stop` a longer --time than that.
STOPSIGNAL SIGTERM
# Asks grpc.health.v1 on 127.0.0.1:50051 (the same answer as /readyz; the
# image has no curl, and the binary speaks gRPC); if GRU_LISTEN moves the
# port, set GRU_HEALTH_ADDR to match.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["gru-serve", "health"]
ENTRYPOINT ["gru-serve"]
