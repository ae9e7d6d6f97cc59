#!/usr/bin/env bash
# The main job: a cluster (the one KUBECONFIG names, else a local control plane), the CRD, the
# operator, the traffic-prediction example, and what it produced.
#   hack/demo.sh        run it (the operator keeps running in the background)
#   hack/demo.sh stop   stop the demo operator
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir=.cluster
pidfile="$dir/operator.pid"
example=deploy/examples/traffic-prediction.yaml

stop_operator() {
  if [[ -f "$pidfile" ]]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  fi
}

if [[ "${1:-}" == "stop" ]]; then
  stop_operator
  exit 0
fi

if [[ -n "${KUBECONFIG:-}" ]] && kubectl cluster-info >/dev/null 2>&1; then
  echo "== using the cluster KUBECONFIG names"
else
  echo "== no cluster configured: starting the local control plane"
  make --no-print-directory cluster-up
  export KUBECONFIG="$PWD/$dir/kubeconfig"
fi
mkdir -p "$dir"

echo "== installing the CRD"
kubectl apply --server-side -f crds/securitypolicies.bulwark.dev.yaml
kubectl wait --for=condition=Established crd/securitypolicies.bulwark.dev --timeout=60s

echo "== starting the operator (log: $dir/operator.log)"
cargo build -q --bin bulwark
stop_operator
target/debug/bulwark run --metrics-addr 127.0.0.1:0 >"$dir/operator.log" 2>&1 &
echo $! > "$pidfile"

echo "== applying $example"
kubectl create namespace traffic --dry-run=client -o yaml | kubectl apply -f -
# The database and broker admins the role and user Jobs log in as; a real deployment brings its own.
kubectl -n traffic create secret generic postgres-superuser --from-literal=username=postgres \
  --from-literal=password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n traffic create secret generic kafka-admin --from-literal=username=admin \
  --from-literal=password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f "$example"
# Without a kubelet the role and user Jobs never run here, so PostgresReady, KafkaReady (and
# Ready) stay False with reason JobRunning; the facets that need no pod must be Ready.
for condition in NetworkReady TLSReady JWTReady; do
  if ! kubectl -n traffic wait --for=condition=$condition securitypolicy/traffic --timeout=90s; then
    echo "$condition did not become True; operator log:" >&2
    tail -n 40 "$dir/operator.log" >&2
    exit 1
  fi
done

echo "== the policy"
kubectl -n traffic get securitypolicy traffic
kubectl -n traffic get securitypolicy traffic -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{"\n"}{end}'
echo "== what it produced"
kubectl -n traffic get networkpolicies,secrets,configmaps,jobs -l app.kubernetes.io/managed-by=bulwark
kubectl -n traffic get securitypolicy traffic -o jsonpath='{range .status.certificates[*]}{.name}: Secret {.secretName}, expires {.notAfter}, renews {.renewalTime}{"\n"}{end}'
kubectl -n traffic get securitypolicy traffic -o jsonpath='{range .status.jwt[*]}JWT {.name}: kid {.kid}, next rotation {.nextRotation}{"\n"}{end}' 
echo "== reachability the NetworkPolicies allow"
target/debug/bulwark explain -f "$example"
echo "The operator keeps running (pid $(cat "$pidfile")); 'make cluster-down' stops it and the cluster."
