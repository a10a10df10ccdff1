# syntax=docker/dockerfile:1

# Build both binaries once; the final stages only copy them.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/worker ./cmd/worker
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/enqueuer ./cmd/enqueuer

# The enqueuer CLI alone: docker build --target enqueuer .
FROM gcr.io/distroless/static-debian12:nonroot AS enqueuer
COPY --from=build /out/enqueuer /enqueuer
ENTRYPOINT ["/enqueuer"]

# The worker (also the monitor with ROLE=monitor). Last, so it is the default target.
FROM gcr.io/distroless/static-debian12:nonroot AS worker
COPY --from=build /out/worker /worker
# Handy for operators: docker compose exec worker /enqueuer ...
COPY --from=build /out/enqueuer /enqueuer
EXPOSE 8080
ENV HTTP_ADDR=0.0.0.0:8080
HEALTHCHECK CMD ["/worker", "healthcheck"]
ENTRYPOINT ["/worker"]
