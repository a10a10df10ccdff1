#!/usr/bin/env bash
# Builds the Kubernetes tools the deployment tests in deploy/ run against
# (internal/testkit/kubeapi): etcd, kube-apiserver and kubectl, at pinned
# versions, from Go modules only. No kubelet: the tests apply the manifests to
# a real API server, nothing runs the pods.
#
# Each tool lands in a directory named for its version under the user's
# cache dir, built in a temporary directory and moved into place only when
# complete, so an interrupted build leaves nothing half-made and a second run
# costs a few stat calls:
#
#   ${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs/kubernetes-v1.34.4/{kube-apiserver,kubectl}
#   ${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs/etcd-v3.6.16/etcd
#
# The CustomResourceDefinitions the manifests use (KEDA's ScaledObject, the
# Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule) are
# vendored in deploy/third_party, with their licenses; --update-crds copies
# them there again out of the upstream projects' Go modules at the versions
# pinned below, each checked against its sha256.
#
# scripts/test.sh runs this in its install phase. Run by hand:
#   ./scripts/kube-tools.sh               # build what is missing, print where it is
#   ./scripts/kube-tools.sh --print       # print the directories only (no build)
#   ./scripts/kube-tools.sh --update-crds # re-vendor the CRDs (after changing a pin)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBE_VERSION=v1.34.4  # k8s.io/kubernetes; its staging modules are k8s.io/* v0.34.4
ETCD_VERSION=v3.6.16  # go.etcd.io/etcd/server/v3
# CRD sources: Go module, version, path inside the module, sha256. Keep in
# step with deploy/third_party/*/ORIGIN.md (deploy's tests check the
# vendored files against the sums there).
KEDA_MODULE=github.com/kedacore/keda/v2@v2.17.0
PROMOP_MODULE=github.com/prometheus-operator/prometheus-operator@v0.86.1
CRDS=(
  "keda|$KEDA_MODULE|config/crd/bases/keda.sh_scaledobjects.yaml|e0975e421cc9ff171ffd374057afd1507d9355cf6de590844a843ab4ae664416"
  "prometheus-operator|$PROMOP_MODULE|example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml|a33ae32ff1227cd51d9e60c5d501d5ebbd2b249324e423c5edc58e5b95d9efce"
  "prometheus-operator|$PROMOP_MODULE|example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml|83018c89a96917ebb1e03bf4917b2562883ca493b641b8c37f6034d2137136d2"
  "prometheus-operator|$PROMOP_MODULE|example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml|dae50fd386c7228aba2ef994e87c0ee0800707c3067123150d0033f007aeef24"
)

cache=${XDG_CACHE_HOME:-$HOME/.cache}/stargazer-jobs
kube_dir=$cache/kubernetes-$KUBE_VERSION
etcd_dir=$cache/etcd-$ETCD_VERSION
crd_dir=deploy/third_party

if [ "${1:-}" = --print ]; then
  printf '%s\n' "$kube_dir" "$etcd_dir"
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

# retry CMD...: the module proxy can blip; try again before failing.
retry() {
  for attempt in 1 2 3; do
    "$@" && return 0
    [ "$attempt" -eq 3 ] && { echo "failed 3 times: $*" >&2; return 1; }
    sleep 10
  done
}

# timed NAME CMD...: runs CMD and says how long it took.
timed() {
  local name=$1 start=$SECONDS
  shift
  echo "kube-tools: building $name"
  "$@"
  echo "kube-tools: built $name in $((SECONDS - start))s"
}

mkdir -p "$cache"

# build_kubernetes: the k8s.io/kubernetes module points its k8s.io/* modules
# at ./staging through replace directives (and a go.work); the module zip has
# no staging/, so each is pointed at the published module of the same
# release instead. The version goes in through -ldflags: kubectl rejects a
# server reporting v0.0.0-master.
build_kubernetes() (
  tmp=$(mktemp -d "$cache/.build-kubernetes.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mod=$(retry go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  [ -n "$mod" ] || { echo "kube-tools: go mod download k8s.io/kubernetes@$KUBE_VERSION gave no directory" >&2; return 1; }
  src=$tmp/src
  cp -r "$mod" "$src"
  chmod -R u+w "$src"
  rm -f "$src/go.work" "$src/go.work.sum"
  rm -rf "$src/vendor"
  minor=${KUBE_VERSION#v1.}
  local staging_version="v0.$minor" edits=() path
  for path in $(cd "$src" && go mod edit -json | sed -n 's|.*"Path": "\./staging/src/\(k8s\.io/[^"]*\)".*|\1|p'); do
    edits+=("-dropreplace=$path" "-require=$path@$staging_version")
  done
  ((${#edits[@]})) || { echo "kube-tools: no staging replace directives found in k8s.io/kubernetes go.mod" >&2; return 1; }
  (cd "$src" && go mod edit "${edits[@]}")
  # Resolve and download every module the two commands need (network), then
  # build (no network).
  (cd "$src" && retry go list -deps ./cmd/kube-apiserver ./cmd/kubectl >/dev/null)
  ldflags="-s -w"
  local v
  for v in "k8s.io/component-base/version" "k8s.io/client-go/pkg/version"; do
    ldflags+=" -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=${minor%%.*}"
    ldflags+=" -X $v.gitTreeState=clean -X $v.buildDate=1970-01-01T00:00:00Z"
  done
  mkdir -p "$tmp/out"
  (cd "$src" && go build -trimpath -ldflags "$ldflags" -o "$tmp/out/" ./cmd/kube-apiserver ./cmd/kubectl)
  "$tmp/out/kubectl" version --client >/dev/null
  rm -rf "$kube_dir"
  mv "$tmp/out" "$kube_dir"
)

# build_etcd: etcd's main module has replace directives, so go install
# refuses it; a three-line module around etcdmain.Main builds the same server.
build_etcd() (
  tmp=$(mktemp -d "$cache/.build-etcd.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/src" "$tmp/out"
  cat >"$tmp/src/main.go" <<'EOF'
// Command etcd is etcd's server, built from its Go module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  printf 'module stargazer.local/etcd\n\ngo 1.24\n' >"$tmp/src/go.mod"
  (cd "$tmp/src" && retry go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" && retry go mod tidy)
  (cd "$tmp/src" && go build -trimpath -ldflags "-s -w" -o "$tmp/out/etcd" .)
  "$tmp/out/etcd" --version >/dev/null
  rm -rf "$etcd_dir"
  mv "$tmp/out" "$etcd_dir"
)

# update_crds: copies each CRD and its module's LICENSE out of the module
# cache into deploy/third_party/<project>/, after checking the CRD's sha256
# against the pin.
update_crds() {
  local entry name module path sum dir
  for entry in "${CRDS[@]}"; do
    IFS='|' read -r name module path sum <<<"$entry"
    dir=$(retry go mod download -json "$module" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -n "$dir" ] || { echo "kube-tools: go mod download $module gave no directory" >&2; return 1; }
    echo "$sum  $dir/$path" | sha256sum -c --quiet ||
      { echo "kube-tools: $module $path does not match its pinned sha256" >&2; return 1; }
    mkdir -p "$crd_dir/$name"
    install -m 644 "$dir/$path" "$crd_dir/$name/"
    install -m 644 "$dir/LICENSE" "$crd_dir/$name/LICENSE"
  done
}
if [ "${1:-}" = --update-crds ]; then
  update_crds
  echo "kube-tools: CRDs vendored in $crd_dir; update the ORIGIN.md files if a pin changed"
  exit 0
fi

total=$SECONDS
# Not `test || build`: errexit does not apply on the left of ||.
if [ ! -x "$etcd_dir/etcd" ]; then
  timed "etcd $ETCD_VERSION" build_etcd
fi
if [ ! -x "$kube_dir/kube-apiserver" ] || [ ! -x "$kube_dir/kubectl" ]; then
  timed "kube-apiserver and kubectl $KUBE_VERSION" build_kubernetes
fi
echo "kube-tools: ready in $((SECONDS - total))s: $kube_dir $etcd_dir"
