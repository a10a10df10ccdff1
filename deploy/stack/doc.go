// Package stack holds the tests that run the deployment as it ships: the
// Dockerfile's images built by a real container engine (podman) and
// docker-compose.yml brought up by Docker Compose against podman's
// Docker-compatible API, with the images the files name (pulled, or built
// locally as labelled stand-ins where no registry answers; see
// deploy/standins/README.md). scripts/container-tools.sh installs the tools;
// go test -short skips these tests, and without the tools they fail.
package stack
