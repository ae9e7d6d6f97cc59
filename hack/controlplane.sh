#!/usr/bin/env bash
# Builds the local Kubernetes control plane used by the e2e suite, from the Go
# module proxy only (no Docker, no release downloads):
#   etcd                     e2e/controlplane/etcd        (wrapper around etcdmain)
#   kube-apiserver           e2e/controlplane/kubernetes  (k8s.io/kubernetes, staging
#   kube-controller-manager                                modules replaced by v0.X.Y)
#   helm                     e2e/controlplane/helm        (helm.sh/helm/v4/cmd/helm)
#
# Binaries land in ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark/k8s-v${K8S_VERSION}/bin.
# Go's module and build caches live under .../bulwark/go so later runs are fast.
# When every binary is already there (built from the same inputs) it returns at
# once. Each binary is built under a temporary name and renamed into place, so an
# interrupted build never leaves a half-written binary.
#
# Logs go to stderr; the last line of stdout is the bin directory:
#   KUBEBUILDER_ASSETS="$(hack/controlplane.sh | tail -1)"
#
# Environment:
#   K8S_VERSION   Kubernetes version to build (default 1.35.4). A version other
#                 than the one pinned in e2e/controlplane/kubernetes/go.mod is
#                 resolved on the fly in a scratch copy of that module.
#   XDG_CACHE_HOME, GOPROXY, GOTOOLCHAIN are honoured as usual.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CP="$ROOT/e2e/controlplane"

PINNED_K8S="$(sed -n 's/^[[:space:]]*k8s\.io\/kubernetes v\([0-9][^[:space:]]*\).*/\1/p' "$CP/kubernetes/go.mod" | head -1)"
K8S_VERSION="${K8S_VERSION:-1.35.4}"
K8S_VERSION="${K8S_VERSION#v}"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/bulwark"
BIN_DIR="$CACHE_ROOT/k8s-v$K8S_VERSION/bin"
BINARIES=(etcd kube-apiserver kube-controller-manager helm)

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0

log() { printf '[controlplane] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go 1.26 or newer is needed)"
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is needed"

# A stamp next to each binary records what it was built from (module files,
# flags, platform); a binary whose stamp differs is rebuilt. The Go version is
# left out on purpose: a Go patch update should not force a rebuild.
GO_ID="$(go env GOOS GOARCH | tr '\n' ' ')"
input_hash() { # name module_dir extra...
  local name="$1" dir="$2"
  shift 2
  { printf '%s\n' "$name" "$GO_ID" "$@"; cat "$dir/go.mod" "$dir/go.sum"; find "$dir" -name '*.go' -type f -exec cat {} +; } |
    sha256sum | cut -d' ' -f1
}

K8S_MAJOR="${K8S_VERSION%%.*}"
K8S_MINOR="${K8S_VERSION#*.}"
K8S_MINOR="${K8S_MINOR%%.*}"
STAGING_VERSION="v0.${K8S_VERSION#*.}"
BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
kube_ldflags() {
  local pkg flags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=v$K8S_VERSION -X $pkg.gitMajor=$K8S_MAJOR -X $pkg.gitMinor=$K8S_MINOR"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$1"
  done
  printf '%s' "$flags"
}
HELM_VERSION="$(sed -n 's/^[[:space:]]*helm\.sh\/helm\/v4 \(v[0-9][^[:space:]]*\).*/\1/p' "$CP/helm/go.mod" | head -1)"
HELM_LDFLAGS="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

declare -A STAMP
STAMP[etcd]="$(input_hash etcd "$CP/etcd" "-s -w")"
# The date is left out of the stamp: it changes on every run.
STAMP[kube-apiserver]="$(input_hash kube-apiserver "$CP/kubernetes" "$K8S_VERSION" "$(kube_ldflags -)")"
STAMP[kube-controller-manager]="$(input_hash kube-controller-manager "$CP/kubernetes" "$K8S_VERSION" "$(kube_ldflags -)")"
STAMP[helm]="$(input_hash helm "$CP/helm" "$HELM_LDFLAGS")"

up_to_date() { # name
  [[ -x "$BIN_DIR/$1" && -f "$BIN_DIR/.$1.stamp" && "$(cat "$BIN_DIR/.$1.stamp")" == "${STAMP[$1]}" ]]
}

all_up_to_date() {
  local b
  for b in "${BINARIES[@]}"; do up_to_date "$b" || return 1; done
}

if all_up_to_date; then
  log "all binaries for Kubernetes v$K8S_VERSION are cached"
  echo "$BIN_DIR"
  exit 0
fi

mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

# One build at a time per cache directory (another run may be building too).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$BIN_DIR/.lock"
  if ! flock -n 9; then
    log "waiting for another build in $BIN_DIR"
    flock 9
  fi
  # Holding the lock, no other run is building: drop leftovers of killed runs.
  rm -f "$BIN_DIR"/.*.tmp.* 2>/dev/null || true
fi

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-controlplane.XXXXXX")"
cleanup() {
  rm -rf "$SCRATCH"
  rm -f "$BIN_DIR"/.*.tmp.$$ 2>/dev/null || true
}
trap cleanup EXIT

# Kubernetes module directory: the pinned one, or a scratch copy retargeted at
# K8S_VERSION (needs the module proxy: go mod tidy resolves the new graph).
KUBE_MOD="$CP/kubernetes"
prepare_kube_module() {
  [[ "$K8S_VERSION" == "$PINNED_K8S" ]] && return 0
  log "K8S_VERSION=$K8S_VERSION differs from the pinned $PINNED_K8S: resolving in a scratch module"
  KUBE_MOD="$SCRATCH/kubernetes"
  cp -R "$CP/kubernetes" "$KUBE_MOD"
  local upstream_mod
  upstream_mod="$(cd "$KUBE_MOD" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" |
    sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -f "$upstream_mod" ]] || die "k8s.io/kubernetes v$K8S_VERSION is not available"
  local args=() m
  while read -r m; do args+=("-dropreplace=$m"); done < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\) => .*/\1/p' "$KUBE_MOD/go.mod")
  while read -r m; do args+=("-replace=$m=$m@$STAGING_VERSION"); done < <(sed -n 's/^[[:space:]]*\(k8s\.io\/[^[:space:]]*\) => \.\/staging\/.*/\1/p' "$upstream_mod")
  (cd "$KUBE_MOD" && go mod edit "${args[@]}" "-require=k8s.io/kubernetes@v$K8S_VERSION" && go mod tidy) >&2
}

build() { # name module_dir package ldflags
  local name="$1" dir="$2" pkg="$3" ldflags="$4"
  if up_to_date "$name"; then
    log "$name: cached"
    return 0
  fi
  local tmp="$BIN_DIR/.$name.tmp.$$" start=$SECONDS
  log "$name: building $pkg"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$tmp" "$pkg") >&2
  mv -f "$tmp" "$BIN_DIR/$name"
  printf '%s\n' "${STAMP[$name]}" >"$BIN_DIR/.$name.stamp"
  log "$name: built in $((SECONDS - start))s"
}

TOTAL_START=$SECONDS
build etcd "$CP/etcd" . "-s -w"
if ! up_to_date kube-apiserver || ! up_to_date kube-controller-manager; then
  prepare_kube_module
fi
build kube-apiserver "$KUBE_MOD" ./cmd/kube-apiserver "$(kube_ldflags "$BUILD_DATE")"
build kube-controller-manager "$KUBE_MOD" ./cmd/kube-controller-manager "$(kube_ldflags "$BUILD_DATE")"
build helm "$CP/helm" helm.sh/helm/v4/cmd/helm "$HELM_LDFLAGS"
log "control plane for Kubernetes v$K8S_VERSION ready in $((SECONDS - TOTAL_START))s"

echo "$BIN_DIR"
