#!/usr/bin/env bash
# Fails when the chart's CRD differs from crds/, when deploy/bulwark.yaml is stale against
# `helm template`, or when `helm lint --strict` reports a problem.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HELM="${HELM:-$(hack/controlplane.sh | tail -1)/helm}"
status=0

crd=crds/securitypolicies.bulwark.dev.yaml
chart_crd=charts/bulwark/crds/securitypolicies.bulwark.dev.yaml
if ! diff -u "$crd" "$chart_crd"; then
  echo "$chart_crd differs from $crd: run hack/render-manifests.sh" >&2
  status=1
fi

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
hack/render-manifests.sh - > "$rendered"
if ! diff -u deploy/bulwark.yaml "$rendered"; then
  echo "deploy/bulwark.yaml is stale: run hack/render-manifests.sh" >&2
  status=1
fi

"$HELM" lint --strict charts/bulwark >/dev/null || { echo "helm lint failed" >&2; status=1; }
"$HELM" lint --strict charts/bulwark --set 'watchNamespaces={a,b}' >/dev/null \
  || { echo "helm lint (watchNamespaces) failed" >&2; status=1; }

[[ $status -eq 0 ]] && echo "chart and deploy/bulwark.yaml are up to date"
exit $status
