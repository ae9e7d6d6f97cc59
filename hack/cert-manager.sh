#!/usr/bin/env bash
# Builds cert-manager's controller for the side-by-side benchmark (make bench), from the Go
# module proxy only: e2e/bench/cert-manager wraps the controllers of the published
# github.com/cert-manager/cert-manager module (its own controller binary lives in a module the
# proxy does not serve). The CRDs come from the same module version.
#
# Binary and CRDs land in ${XDG_CACHE_HOME:-$HOME/.cache}/bulwark/cert-manager-<version>/;
# Go's caches are the control plane's (.../bulwark/go). A cached build whose stamp matches the
# wrapper's inputs returns at once. Logs go to stderr; the last line of stdout is that directory:
#   CERT_MANAGER_DIR="$(hack/cert-manager.sh | tail -1)"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOD="$ROOT/e2e/bench/cert-manager"
VERSION="$(sed -n 's/^[[:space:]]*require github\.com\/cert-manager\/cert-manager \(v[0-9][^[:space:]]*\).*/\1/p' "$MOD/go.mod" | head -1)"
[[ -n "$VERSION" ]] || VERSION="$(sed -n 's/^[[:space:]]*github\.com\/cert-manager\/cert-manager \(v[0-9][^[:space:]]*\).*/\1/p' "$MOD/go.mod" | head -1)"

CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/bulwark"
OUT="$CACHE_ROOT/cert-manager-$VERSION"
export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS="-buildvcs=false"
export CGO_ENABLED=0

log() { printf '[cert-manager] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null 2>&1 || die "go is not on PATH (Go 1.26 or newer is needed)"
[[ -n "$VERSION" ]] || die "no cert-manager version in $MOD/go.mod"

STAMP="$({ go env GOOS GOARCH; cat "$MOD/go.mod" "$MOD/go.sum" "$MOD"/*.go; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$OUT/cert-manager-controller" && -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$STAMP" ]]; then
  log "cert-manager $VERSION is cached"
  echo "$OUT"
  exit 0
fi

mkdir -p "$OUT" "$GOMODCACHE" "$GOCACHE"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.lock"
  flock 9
fi

start=$SECONDS
log "building the controller of cert-manager $VERSION"
tmp="$OUT/.cert-manager-controller.tmp.$$"
trap 'rm -f "$tmp"' EXIT
(cd "$MOD" && go build -trimpath -ldflags "-s -w" -o "$tmp" .) >&2
mv -f "$tmp" "$OUT/cert-manager-controller"

# The CRDs of the same version, one file each.
src="$(cd "$MOD" && go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)"
rm -rf "$OUT/crds"
mkdir -p "$OUT/crds"
cp "$src"/deploy/crds/*.yaml "$OUT/crds/"
chmod -R u+w "$OUT/crds"
printf '%s\n' "$STAMP" >"$OUT/.stamp"
log "built in $((SECONDS - start))s"
echo "$OUT"
