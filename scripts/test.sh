#!/usr/bin/env bash
# Runs the whole test suite. On a fresh machine it first installs what the
# tests need from the distribution's and npm's packages: a real redis-server,
# Chromium for the dashboard test, FalkorDB for the graph tests (valkey-server
# plus the FalkorDB module, see internal/testkit/falkortest), and Prometheus
# for the alerting test in deploy/ (it scrapes a real worker and evaluates
# deploy/prometheus/alerts.yml); podman, Docker Compose and the images the
# compose file names for the stack test in deploy/stack
# (scripts/container-tools.sh); etcd, kube-apiserver and kubectl for the
# API server tests in deploy/ (scripts/kube-tools.sh). The tools and images
# are cached by version under ~/.cache/stargazer-jobs: a second run builds
# none of them.
#
#   ./scripts/test.sh                 # install what is missing, then gofmt, vet, test
#   ./scripts/test.sh --install-only  # only the installs
set -euo pipefail
cd "$(dirname "$0")/.."

# FalkorDB module: the npm package that ships falkordb.so, pinned by version
# and by the library's checksum. internal/testkit/falkortest loads it from
# $FALKORDB_MODULE or from this path (its DefaultModulePath).
FALKORDB_VERSION=4.16.3
FALKORDB_NPM_PACKAGE=@falkordblite/linux-x64@8.2.3-falkordb.$FALKORDB_VERSION
FALKORDB_SHA256=7e9e39ce69780fbae2cf7a31c28e05a51b4e9177b73e755384de0c3cf9f812e5
falkordb_module=${FALKORDB_MODULE:-${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs/falkordb-$FALKORDB_VERSION/falkordb.so}

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

# retry CMD...: package mirrors and registries can blip; try again before failing.
retry() {
  for attempt in 1 2 3; do
    "$@" && return 0
    [ "$attempt" -eq 3 ] && { echo "failed 3 times: $*" >&2; return 1; }
    sleep 10
  done
}

# The Kubernetes tools need only Go and the module proxy, and their cold
# build is the longest step (about 10.5 min cold on 2 cores): it runs in the
# background while the packages and images below are installed.
kube_log=$(mktemp "${TMPDIR:-/tmp}/kube-tools.XXXXXX.log")
./scripts/kube-tools.sh >"$kube_log" 2>&1 &
kube_pid=$!
wait_kube_tools() {
  local status=0
  wait "$kube_pid" || status=$?
  cat "$kube_log"
  rm -f "$kube_log"
  [ "$status" -eq 0 ] || { echo "scripts/kube-tools.sh failed ($status)" >&2; exit 1; }
}

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

need_install=()
command -v redis-server >/dev/null 2>&1 || need_install+=(redis-server)
command -v chromium >/dev/null 2>&1 || need_install+=(chromium)
command -v prometheus >/dev/null 2>&1 || need_install+=(prometheus)
# The node agent's tests run the real journalctl on journal files that
# systemd-journal-remote writes (internal/testkit/journaltest).
command -v journalctl >/dev/null 2>&1 || need_install+=(systemd)
[ -x /lib/systemd/systemd-journal-remote ] || need_install+=(systemd-journal-remote)
# The module links OpenMP dynamically; the Go image has it, a slim one may not.
/sbin/ldconfig -p | grep -q 'libgomp\.so\.1' || need_install+=(libgomp1)
if [ -z "${FALKORDB_SERVER:-}" ] && ! command -v valkey-server >/dev/null 2>&1; then
  # FalkorDB needs a server reporting redis_version >= 7.2. Bookworm's own
  # redis-server is 7.0; its backports have valkey 8 (later releases have it
  # in main). The backports entry is derived from the machine's own Debian
  # source, so it uses the same mirror.
  valkey=valkey-server
  if [ "$codename" = bookworm ]; then
    valkey=valkey-server/bookworm-backports # with its dependencies from there
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        awk 'BEGIN{RS="";ORS="\n"} NR==1' /etc/apt/sources.list.d/debian.sources |
          sed 's/^Suites: .*/Suites: bookworm-backports/' |
          $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
      else
        grep -m1 -E '^deb .* bookworm main' /etc/apt/sources.list |
          sed 's/ bookworm main/ bookworm-backports main/' |
          $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
      fi
    fi
  fi
  need_install+=("$valkey")
fi
command -v npm >/dev/null 2>&1 || [ -f "$falkordb_module" ] || need_install+=(npm)

if ((${#need_install[@]})); then
  echo "installing: ${need_install[*]}"
  # The valkey-server and prometheus packages would start system-wide servers
  # (ports 6379 and 9090); the tests start their own. Where nothing forbids service starts yet,
  # forbid them for this install (the Debian policy-rc.d mechanism).
  policy=/usr/sbin/policy-rc.d
  made_policy=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    made_policy=1
  fi
  apt_install() {
    $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_install[@]}" >/dev/null
  }
  status=0
  retry apt_install || status=$?
  [ -z "$made_policy" ] || $SUDO rm -f "$policy"
  [ "$status" -eq 0 ] || { echo "could not install ${need_install[*]}" >&2; exit 1; }
  # ...and keep it from starting at the next boot.
  if command -v systemctl >/dev/null 2>&1; then
    [[ " ${need_install[*]} " != *" valkey-server"* ]] ||
      $SUDO systemctl disable --quiet valkey-server.service >/dev/null 2>&1 || true
    [[ " ${need_install[*]} " != *" prometheus "* ]] ||
      $SUDO systemctl disable --quiet prometheus.service prometheus-node-exporter.service >/dev/null 2>&1 || true
  fi
fi

# install_falkordb_module: npm pack downloads the package tarball (npm checks
# its integrity); only falkordb.so is kept. The redis-server beside it in the
# package is not used: it needs a newer glibc than Debian 12's.
install_falkordb_module() {
  local dir tmp
  dir=$(dirname "$falkordb_module")
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/.download.XXXXXX")
  if (cd "$tmp" && npm pack --silent "$FALKORDB_NPM_PACKAGE" >/dev/null) &&
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/bin/falkordb.so &&
    echo "$FALKORDB_SHA256  $tmp/package/bin/falkordb.so" | sha256sum -c --quiet; then
    mv "$tmp/package/bin/falkordb.so" "$falkordb_module"
    rm -rf "$tmp"
    return 0
  fi
  rm -rf "$tmp"
  return 1
}
if [ ! -f "$falkordb_module" ]; then
  echo "installing: FalkorDB $FALKORDB_VERSION module ($FALKORDB_NPM_PACKAGE) -> $falkordb_module"
  retry install_falkordb_module || { echo "could not install the FalkorDB module" >&2; exit 1; }
fi

FALKORDB_MODULE="$falkordb_module" ./scripts/container-tools.sh --install-only
wait_kube_tools

if [ "${1:-}" = --install-only ]; then
  exit 0
fi

echo "== gofmt ($SECONDS s since the start)"
unformatted=$(gofmt -l .)
if [ -n "$unformatted" ]; then
  echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi
echo "== go vet ($SECONDS s since the start)"
go vet ./...
# -timeout: go test's default (10 min per package binary) is about what
# internal/e2e's multi-process scenarios take on a slow CI machine.
# The deployment tests go first, on their own: building the images (a cold
# Go build inside a container) loads both cores for minutes, and the
# multi-process scenarios of internal/e2e measure time.
echo "== go test -race ./deploy/... (images, the compose stack, the API server) ($SECONDS s since the start)"
go test -race -count=1 -timeout 30m ./deploy/...
echo "== go test -race (everything else) ($SECONDS s since the start)"
go test -race -count=1 -timeout 30m $(go list ./... | grep -v '/deploy\(/\|$\)')
echo "== passed in $SECONDS s"
