#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite (e2e/suite.rs) on a kind cluster. Creates the cluster (kindnet
# enforces NetworkPolicy), builds the image and loads it, installs the chart with it, then runs
# the same suite as `make e2e` against that cluster, plus live probes between tier pods.
# Needs a Docker engine. KIND_KEEP=1 keeps the cluster afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CLUSTER="${KIND_CLUSTER:-bulwark-e2e}"
TAG="${TAG:-e2e}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/bulwark"

# kind from the Go module proxy, cached per version like the control-plane binaries.
kind="$cache/kind-$KIND_VERSION/kind"
if [[ ! -x "$kind" ]]; then
  echo "== building kind $KIND_VERSION"
  GOBIN="$cache/kind-$KIND_VERSION" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" \
    go install "sigs.k8s.io/kind@$KIND_VERSION"
fi
# helm comes with the local control-plane binaries.
hack/controlplane.sh >/dev/null
helm="${KUBEBUILDER_ASSETS:-$cache/k8s-v${K8S_VERSION:-1.35.4}/bin}/helm"

if ! docker info >/dev/null 2>&1; then
  echo "make e2e-kind needs a Docker engine; 'make e2e' runs the same suite on a local control plane" >&2
  exit 1
fi

if ! "$kind" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  echo "== creating kind cluster $CLUSTER"
  "$kind" create cluster --name "$CLUSTER" --config e2e/kind.yaml --wait 180s
fi
mkdir -p .cluster
kubeconfig="$PWD/.cluster/kind-$CLUSTER.kubeconfig"
"$kind" get kubeconfig --name "$CLUSTER" > "$kubeconfig"
cleanup() {
  if [[ "${KIND_KEEP:-0}" != 1 ]]; then "$kind" delete cluster --name "$CLUSTER"; fi
}
trap cleanup EXIT

echo "== building and loading the image bulwark:$TAG"
docker build -t "bulwark:$TAG" .
"$kind" load docker-image "bulwark:$TAG" --name "$CLUSTER"

echo "== installing the chart"
"$helm" upgrade --install bulwark charts/bulwark --kubeconfig "$kubeconfig" \
  --namespace bulwark-system --create-namespace \
  --set image.repository=bulwark --set image.tag="$TAG" --set image.pullPolicy=Never \
  --wait --timeout 180s

echo "== running the e2e suite with live probes"
BULWARK_E2E_KUBECONFIG="$kubeconfig" BULWARK_E2E_PROBES=1 \
  cargo test --test e2e -- --nocapture
