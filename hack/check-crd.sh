#!/usr/bin/env bash
# Fails when the checked-in CRD or API reference differs from what `bulwark crd` generates.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
crd=crds/securitypolicies.bulwark.dev.yaml
api=docs/api.md
generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
cargo run -q --bin bulwark -- crd > "$generated"
if ! diff -u "$crd" "$generated"; then
  echo "$crd is stale: run 'make crds' and commit the result" >&2
  exit 1
fi
cargo run -q --bin bulwark -- crd --api-docs > "$generated"
if ! diff -u "$api" "$generated"; then
  echo "$api is stale: run 'make crds' and commit the result" >&2
  exit 1
fi
echo "CRD and API reference are up to date"
