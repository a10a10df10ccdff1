#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine it first installs what the
# tests need (a real redis-server, Chromium for the dashboard test) from the
# distribution's packages.
set -euo pipefail
cd "$(dirname "$0")/.."

need_install=()
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
command -v chromium >/dev/null 2>&1 || need_install+=(chromium)
if ((${#need_install[@]})); then
  echo "installing: ${need_install[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  for attempt in 1 2 3; do  # the package mirror can blip; try again before failing
    if $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_install[@]}" >/dev/null; then
      break
    fi
    [ "$attempt" -eq 3 ] && { echo "could not install ${need_install[*]}" >&2; exit 1; }
    sleep 10
  done
fi

echo "== gofmt"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== go test -race"
go test -race -count=1 ./...
