// Package deploy holds the tests of the deployment files at the repository root (docker-compose.yml, prometheus.yml, Dockerfile).
package deploy
