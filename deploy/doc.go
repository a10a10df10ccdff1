// Package deploy holds the tests of the deployment files at the repository root (docker-compose.yml, deploy/prometheus/prometheus.yml, Dockerfile).
package deploy
