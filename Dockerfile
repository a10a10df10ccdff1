# syntax=docker/dockerfile:1

# Build both binaries once; the final stages only copy them. The module and
# build caches are cache mounts: kept by the engine between builds, never in
# an image, so a rebuild after a change compiles only what changed.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker \
 && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/enqueuer ./cmd/enqueuer

# The enqueuer CLI alone: docker build --target enqueuer .
FROM gcr.io/distroless/static-debian12:nonroot AS enqueuer
COPY --from=build /out/enqueuer /enqueuer
ENTRYPOINT ["/enqueuer"]

# The node agent (ROLE=node): the worker binary plus journalctl, from Debian's
# systemd package, to read the host's journal mounted read-only.
# docker build --target node .
FROM debian:bookworm-slim AS node
RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/worker /worker
# The nonroot user of the distroless images; group adm (4) reads the journal
# through its ACLs (compose: group_add, Kubernetes: supplementalGroups).
USER 65532:65532
# 8080: HTTP_ADDR (the node agent serves only the probes and metrics there);
# 8081: PROBE_ADDR, the probe listener the healthcheck, the kubelet and
# Prometheus use.
EXPOSE 8080 8081
ENV HTTP_ADDR=0.0.0.0:8080 PROBE_ADDR=0.0.0.0:8081
HEALTHCHECK CMD ["/worker", "healthcheck"]
ENTRYPOINT ["/worker"]

# The worker (also the monitor with ROLE=monitor). Last, so it is the default target.
FROM gcr.io/distroless/static-debian12:nonroot AS worker
COPY --from=build /out/worker /worker
# Handy for operators: docker compose exec worker /enqueuer ...
COPY --from=build /out/enqueuer /enqueuer
# 8080: HTTP_ADDR (dashboard, API); 8081: PROBE_ADDR (probes and metrics,
# on a connection budget of their own).
EXPOSE 8080 8081
ENV HTTP_ADDR=0.0.0.0:8080 PROBE_ADDR=0.0.0.0:8081
HEALTHCHECK CMD ["/worker", "healthcheck"]
ENTRYPOINT ["/worker"]
