#!/usr/bin/env bash
# Installs what the container tests in deploy/stack need, and what a
# developer needs to run the stack the way they do:
#
#   - podman, runc, debootstrap, jq and systemd-journal-remote from the
#     distribution's packages;
#   - when a plain `podman run` fails here (no systemd, cgroups v1, no
#     CAP_SYS_RESOURCE for the rlimits podman always sets), the settings that
#     make it work: runc with --cgroup-manager=cgroupfs and, if still needed,
#     an OCI runtime wrapper (named runc, as podman looks at the name) that
#     drops process.rlimits from the container's spec;
#   - every image the Dockerfile (FROM) and docker-compose.yml (image:) name:
#     pulled where a registry answers, otherwise built here as a stand-in
#     from deploy/standins/ and labelled as one
#     (org.stargazer-jobs.stand-in-for); see deploy/standins/README.md;
#   - Docker Compose (the Go module github.com/docker/compose/v5, the CLI
#     users run as `docker compose`) built once as a standalone
#     docker-compose binary, to run against podman's Docker-compatible API.
#
# Everything is cached by version under $CACHE (below): a second run checks
# and reuses. It writes $CACHE/env, which the tests read:
#   PODMAN_FLAGS  global podman flags this machine needs (may be empty)
#   COMPOSE       the docker-compose binary
#   STANDINS      the images that are stand-ins here (space-separated)
#   NO_IMAGE      images with neither a registry nor a stand-in here
#
#   scripts/container-tools.sh                 # install, then print the env file
#   scripts/container-tools.sh --install-only  # install only (scripts/test.sh's install phase)
#
# STANDINS_FORCE=1 builds every stand-in even where a registry answers (to
# test the recipes); FALKORDB_MODULE is the falkordb.so scripts/test.sh
# installed.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPOSE_VERSION=v5.6.0
CACHE=${STARGAZER_CONTAINERS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs/containers}
FALKORDB_MODULE=${FALKORDB_MODULE:-${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs/falkordb-4.16.3/falkordb.so}
PULL_TIMEOUT=${PULL_TIMEOUT:-30}
STANDIN_PREFIX=localhost/stargazer-standins

mkdir -p "$CACHE"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

say() { echo "container-tools: $*"; }
# phase NAME CMD...: runs CMD and reports how long it took (the cold costs
# the README and docs/operations.md quote come from these lines).
phase() {
  local name=$1 start=$SECONDS
  shift
  "$@"
  say "$name: $((SECONDS - start)) s"
}
retry() {
  for attempt in 1 2 3; do
    "$@" && return 0
    [ "$attempt" -eq 3 ] && { echo "failed 3 times: $*" >&2; return 1; }
    sleep 10
  done
}

# --- packages ---------------------------------------------------------------
install_packages() {
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v jq >/dev/null 2>&1 || need+=(jq)
  [ -x /lib/systemd/systemd-journal-remote ] || need+=(systemd-journal-remote)
  ((${#need[@]})) || return 0
  say "installing: ${need[*]}"
  apt_install() {
    $SUDO apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  }
  retry apt_install
}

# --- Docker Compose ---------------------------------------------------------
COMPOSE=$CACHE/compose-$COMPOSE_VERSION/docker-compose
# build_compose builds the module as its own main module (its go.mod has
# exclude directives, so `go install module@version` refuses it), with the
# version stamped as upstream's Makefile does.
build_compose() {
  [ -x "$COMPOSE" ] && return 0
  local dir src
  dir=$(go mod download -json "github.com/docker/compose/v5@$COMPOSE_VERSION" | jq -r .Dir)
  src=$(mktemp -d "$CACHE/.compose-src.XXXXXX")
  cp -r "$dir/." "$src"
  chmod -R u+w "$src"
  mkdir -p "$(dirname "$COMPOSE")"
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath \
    -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$COMPOSE_VERSION" \
    -o "$COMPOSE.tmp" ./cmd)
  rm -rf "$src"
  mv "$COMPOSE.tmp" "$COMPOSE"
}

# --- podman settings --------------------------------------------------------
PODMAN_FLAGS=""
pm() { # shellcheck disable=SC2086 # PODMAN_FLAGS is a word list without spaces in its words
  podman $PODMAN_FLAGS "$@"
}

write_wrapper() {
  local wrapper=$CACHE/runtime/runc real
  real=$(command -v runc)
  mkdir -p "$CACHE/runtime"
  cat >"$wrapper.tmp" <<EOF
#!/bin/sh
# OCI runtime wrapper written by scripts/container-tools.sh: podman always
# puts process.rlimits in a container's spec, and here the container's init
# may not set them (no CAP_SYS_RESOURCE). It deletes them from the bundle's
# config.json (create/run) or the exec process file, then runs the real runc.
real=$real
prev=
for a in "\$@"; do
  f=
  case "\$prev" in
  --bundle|-b) f="\$a/config.json"; q='del(.process.rlimits)' ;;
  --process) f="\$a"; q='del(.rlimits)' ;;
  esac
  case "\$a" in
  --bundle=*) f="\${a#--bundle=}/config.json"; q='del(.process.rlimits)' ;;
  --process=*) f="\${a#--process=}"; q='del(.rlimits)' ;;
  esac
  if [ -n "\$f" ] && [ -f "\$f" ]; then
    jq "\$q" "\$f" >"\$f.norlimits" && mv "\$f.norlimits" "\$f"
  fi
  prev=\$a
done
exec "\$real" "\$@"
EOF
  chmod +x "$wrapper.tmp"
  mv "$wrapper.tmp" "$wrapper"
  echo "$wrapper"
}

# detect_runtime finds the podman flags under which a container runs here,
# trying the plain defaults first so a normal machine keeps them.
detect_runtime() {
  local image=$1 out cached=""
  # What worked last time first, so a second run starts one container.
  [ ! -f "$CACHE/env" ] || cached=$(sed -n 's/^PODMAN_FLAGS="\(.*\)"$/\1/p' "$CACHE/env")
  for flags in ${cached:+"$cached"} "" "--cgroup-manager=cgroupfs" "--runtime=$(command -v runc) --cgroup-manager=cgroupfs" "wrapper"; do
    if [ "$flags" = wrapper ] || [[ $flags == *"--runtime=$CACHE/runtime/runc"* ]]; then
      flags="--runtime=$(write_wrapper) --cgroup-manager=cgroupfs"
    fi
    # shellcheck disable=SC2086
    if out=$(podman $flags run --rm --network=none "$image" true 2>&1); then
      PODMAN_FLAGS=$flags
      say "podman runs containers with flags: ${flags:-(none)}"
      return 0
    fi
    say "podman ${flags:-(defaults)}: $(echo "$out" | tail -1)"
  done
  echo "container-tools: podman cannot run a container on this machine" >&2
  return 1
}

# --- images -----------------------------------------------------------------
# normalize NAME: the fully qualified name a pull gives (redis:7.4 ->
# docker.io/library/redis:7.4), which is also what compose's API calls ask for.
normalize() {
  local n=$1 first=${1%%/*}
  if [[ $n != */* ]]; then
    n=docker.io/library/$n
  elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
    n=docker.io/$n
  fi
  echo "$n"
}

# images_used lists the images the Dockerfile and the compose file name,
# except the project's own (built from the Dockerfile).
images_used() {
  {
    awk 'toupper($1)=="FROM" {print $2}' Dockerfile
    sed -n 's/^[[:space:]]*image:[[:space:]]*["'\'']\{0,1\}\([^"'\''[:space:]]*\).*/\1/p' docker-compose.yml
  } | grep -v '^stargazer-jobs/' | sort -u
}

# recipe_of IMAGE: the deploy/standins directory that stands in for IMAGE.
recipe_of() {
  case "${1%:*}" in
  docker.io/library/debian) echo debian ;;
  docker.io/library/golang) echo golang ;;
  gcr.io/distroless/static-debian12) echo distroless-static ;;
  docker.io/library/redis) echo redis ;;
  docker.io/falkordb/falkordb) echo falkordb ;;
  docker.io/prom/prometheus) echo prometheus ;;
  *) echo "" ;;
  esac
}

label() { # label IMAGE KEY: a label of a local image, empty when absent
  { pm image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; } | sed 's/^<no value>$//'
}

# recipe_key NAME INPUTS...: a hash of the recipe's files and other inputs;
# a stand-in is rebuilt when it changes.
recipe_key() {
  local name=$1
  shift
  { (cd deploy/standins/"$name" && find . -type f -print0 | sort -z | xargs -0 sha256sum)
    printf '%s\n' "$@"; } | sha256sum | cut -c1-16
}

STANDINS=()
NO_IMAGE=()
# Registries that did not answer in this run: their other images are not
# tried again, so a machine without any costs one timeout per registry.
UNREACHABLE=" "

# ensure IMAGE: a pulled image, a current stand-in, or a new stand-in.
ensure() {
  local image=$1 recipe key have start=$SECONDS
  recipe=$(recipe_of "$image")
  if [ -z "${STANDINS_FORCE:-}" ]; then
    if [ -n "$(pm image ls -q "$image" 2>/dev/null)" ] && [ -z "$(label "$image" org.stargazer-jobs.stand-in-for)" ]; then
      say "$image: present (not a stand-in)"
      return 0
    fi
    local registry=${image%%/*}
    if [[ $UNREACHABLE == *" $registry "* ]]; then
      say "$image: not pulled ($registry did not answer)"
    elif timeout "$PULL_TIMEOUT" podman pull -q "$image" >/dev/null 2>"$CACHE/pull.err"; then
      say "$image: pulled ($((SECONDS - start)) s)"
      return 0
    else
      local status=$?
      say "$image: pull failed ($( ( [ "$status" -eq 124 ] && echo "no answer in $PULL_TIMEOUT s") || tail -1 "$CACHE/pull.err" | cut -c1-160))"
      if [ "$status" -eq 124 ] || grep -qE 'dial tcp|no such host|i/o timeout|connection refused|network is unreachable|TLS handshake timeout' "$CACHE/pull.err"; then
        UNREACHABLE+="$registry "
      fi
    fi
  fi
  if [ -z "$recipe" ]; then
    say "$image: no registry and no stand-in recipe here; services using it cannot run on this machine"
    NO_IMAGE+=("$image")
    return 0
  fi
  key=$(stand_in_key "$image" "$recipe")
  have=$(label "$image" org.stargazer-jobs.stand-in.recipe)
  if [ "$have" = "$key" ]; then
    say "$image: stand-in current (recipe $key)"
  else
    build_"${recipe//-/_}" "$image" "$key"
    say "$image: stand-in built from deploy/standins/$recipe ($((SECONDS - start)) s)"
  fi
  STANDINS+=("$image")
}

DEBIAN_IMAGE=$(normalize debian:bookworm-slim)
GOROOT_HOST=""
# stand_in_key IMAGE RECIPE: the recipe's hash plus what else goes in.
stand_in_key() {
  local image=$1 recipe=$2 base_id=""
  [ "$recipe" = debian ] || base_id=$(pm image inspect --format '{{.Id}}' "$DEBIAN_IMAGE")
  case "$recipe" in
  debian) recipe_key debian "$image" "$(debian_mirror)" ;;
  golang) recipe_key golang "$image" "$base_id" "$(go version)" "$(go env GOPROXY GOSUMDB)" "$(sha256sum </etc/ssl/certs/ca-certificates.crt)" ;;
  falkordb) recipe_key falkordb "$image" "$base_id" "$(sha256sum <"$FALKORDB_MODULE")" ;;
  *) recipe_key "$recipe" "$image" "$base_id" ;;
  esac
}

# debian_mirror: the machine's Debian mirror (the first URIs of its apt
# sources), so the stand-ins' apt-get reaches what the machine reaches.
debian_mirror() {
  local m=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '$1=="URIs:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  elif [ -f /etc/apt/sources.list ]; then
    m=$(awk '$1=="deb" && $0 ~ / bookworm main/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

standin_build() { # standin_build IMAGE KEY RECIPE CONTEXT [podman build args...]
  local image=$1 key=$2 recipe=$3 context=$4
  shift 4
  BUILDAH_FORMAT=docker pm build -q --pull=never -f "deploy/standins/$recipe/Containerfile" \
    --build-arg "STANDIN_FOR=$image" --build-arg "RECIPE=$key" \
    --build-arg "BASE=$DEBIAN_IMAGE" "$@" -t "$image" "$context" >/dev/null
}

build_debian() {
  local image=$1 key=$2 suite tar rootfs mirror
  suite=${image##*:}
  suite=${suite%-slim}
  mirror=$(debian_mirror)
  tar=$CACHE/rootfs-$suite-minbase-$key.tar
  if [ ! -f "$tar" ]; then
    rootfs=$(mktemp -d "$CACHE/.rootfs.XXXXXX")
    phase "debootstrap $suite ($mirror)" $SUDO debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/dev/null
    # apt sources as the upstream image has them, on this machine's mirrors.
    rm -f "$rootfs/etc/apt/sources.list"
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      grep -v '^#' /etc/apt/sources.list.d/debian.sources >"$rootfs/etc/apt/sources.list.d/debian.sources"
    else
      printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$mirror" "$suite" "$suite" >"$rootfs/etc/apt/sources.list.d/debian.sources"
    fi
    chroot "$rootfs" apt-get clean
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/cache/apt/*.bin
    tar -C "$rootfs" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -cf "$tar.tmp" .
    mv "$tar.tmp" "$tar"
    rm -rf "$rootfs"
    find "$CACHE" -maxdepth 1 -name "rootfs-$suite-minbase-*.tar" ! -name "$(basename "$tar")" -delete
  fi
  local rootfs_image=$STANDIN_PREFIX/$suite-minbase:$key
  podman image exists "$rootfs_image" || pm import -q "$tar" "$rootfs_image" >/dev/null
  BUILDAH_FORMAT=docker pm build -q --pull=never -f deploy/standins/debian/Containerfile \
    --build-arg "ROOTFS=$rootfs_image" --build-arg "STANDIN_FOR=$image" --build-arg "RECIPE=$key" \
    -t "$image" deploy/standins/debian >/dev/null
}

build_golang() {
  local image=$1 key=$2 want have goroot
  want=${image##*:}
  want=${want%%-*}
  have=$(go env GOVERSION)
  have=${have#go}
  if [[ $have != "$want" && $have != "$want".* ]]; then
    echo "container-tools: $image: this machine's Go is $have, not $want; the stand-in is made from it" >&2
    return 1
  fi
  goroot=$(go env GOROOT)
  standin_build "$image" "$key" golang deploy/standins/golang \
    --build-arg "GOLANG_VERSION=$have" --build-arg "GOPROXY=$(go env GOPROXY)" --build-arg "GOSUMDB=$(go env GOSUMDB)" \
    -v "$goroot:/host/go:ro" -v /etc/ssl/certs/ca-certificates.crt:/host/ca-certificates.crt:ro
}

build_distroless_static() { standin_build "$1" "$2" distroless-static deploy/standins/distroless-static; }
build_redis() { standin_build "$1" "$2" redis deploy/standins/redis; }
build_prometheus() { standin_build "$1" "$2" prometheus deploy/standins/prometheus; }

build_falkordb() {
  local image=$1 key=$2 version ctx
  version=${image##*:v}
  case "$FALKORDB_MODULE" in
  *"falkordb-$version/"*) ;;
  *)
    echo "container-tools: $image: the FalkorDB module at $FALKORDB_MODULE is not version $version (scripts/test.sh installs the module)" >&2
    return 1
    ;;
  esac
  [ -f "$FALKORDB_MODULE" ] || { echo "container-tools: $FALKORDB_MODULE missing: run ./scripts/test.sh --install-only" >&2; return 1; }
  ctx=$(mktemp -d "$CACHE/.falkordb-context.XXXXXX")
  cp deploy/standins/falkordb/run.sh "$ctx/"
  cp "$FALKORDB_MODULE" "$ctx/falkordb.so"
  standin_build "$image" "$key" falkordb "$ctx" || { rm -rf "$ctx"; return 1; }
  rm -rf "$ctx"
}

# --- main -------------------------------------------------------------------
main() {
  local start=$SECONDS
  phase packages install_packages

  # The longest step and independent of the rest: in the background.
  local compose_log=$CACHE/compose-build.log compose_pid=""
  if [ ! -x "$COMPOSE" ]; then
    say "building docker-compose $COMPOSE_VERSION in the background (log: $compose_log)"
    (phase "docker-compose $COMPOSE_VERSION build" build_compose) >"$compose_log" 2>&1 &
    compose_pid=$!
  fi

  # Debian first: it is the base of every other stand-in, and the image
  # podman is tried with.
  ensure "$DEBIAN_IMAGE"
  detect_runtime "$DEBIAN_IMAGE"
  local image
  for image in $(images_used); do
    image=$(normalize "$image")
    [ "$image" = "$DEBIAN_IMAGE" ] || ensure "$image"
  done

  if [ -n "$compose_pid" ]; then
    if ! wait "$compose_pid"; then
      cat "$compose_log" >&2
      echo "container-tools: building docker-compose failed" >&2
      return 1
    fi
    tail -1 "$compose_log"
  fi
  "$COMPOSE" version >/dev/null

  cat >"$CACHE/env.tmp" <<EOF
# Written by scripts/container-tools.sh; read by the tests in deploy/stack.
# A shell may source it: podman \$PODMAN_FLAGS ..., "\$COMPOSE" ...
PODMAN_FLAGS="$PODMAN_FLAGS"
COMPOSE="$COMPOSE"
STANDINS="${STANDINS[*]}"
NO_IMAGE="${NO_IMAGE[*]}"
EOF
  mv "$CACHE/env.tmp" "$CACHE/env"
  say "ready in $((SECONDS - start)) s: $CACHE/env"
}

main
if [ "${1:-}" != --install-only ]; then
  cat "$CACHE/env"
fi
