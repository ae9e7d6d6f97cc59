# Bulwark: `make demo` runs the operator on a local control plane; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# One variable picks the Kubernetes version of the local control plane.
K8S_VERSION ?= 1.35.4
CACHE_HOME := $(if $(XDG_CACHE_HOME),$(XDG_CACHE_HOME),$(HOME)/.cache)
KUBEBUILDER_ASSETS ?= $(CACHE_HOME)/bulwark/k8s-v$(K8S_VERSION)/bin
BULWARK_K8S_VERSION := $(K8S_VERSION)
export K8S_VERSION KUBEBUILDER_ASSETS BULWARK_K8S_VERSION

CLUSTER_DIR := .cluster
CRD_FILE := crds/securitypolicies.bulwark.dev.yaml

.PHONY: help controlplane build cluster-up cluster-down crds lint test test-deps unit demo demo-down kafka e2e e2e-kind chaos bench cert-manager

help:
	@echo "make demo          local control plane, operator, example policy, produced objects"
	@echo "make test          lint, unit and integration tests against a real control plane"
	@echo "make controlplane  build etcd, kube-apiserver, kube-controller-manager, helm (cached)"
	@echo "make cluster-up    start the local control plane; kubeconfig in $(CLUSTER_DIR)/kubeconfig"
	@echo "make cluster-down  stop it (and a demo operator) leaving no process behind"
	@echo "make lint          rustfmt, clippy, CRD freshness"
	@echo "make crds          regenerate $(CRD_FILE), the chart's copy, deploy/ and docs/api.md"
	@echo "make e2e           the e2e suite against the local control plane (part of make test)"
	@echo "make e2e-kind      the same suite on a kind cluster with the image and chart, plus live probes"
	@echo "make chaos         fault and bad-input scenarios at full size (docs/RELIABILITY.md)"
	@echo "make bench         performance benchmarks, side by side with cert-manager (docs/BENCHMARKS.md)"

controlplane:
	@hack/controlplane.sh >/dev/null

build:
	cargo build --workspace --bins

cluster-up: controlplane build
	target/debug/bulwark-testenv up --dir $(CLUSTER_DIR)

cluster-down: demo-down
	@if [ -x target/debug/bulwark-testenv ]; then target/debug/bulwark-testenv down --dir $(CLUSTER_DIR); \
	else cargo run -q -p bulwark-testenv -- down --dir $(CLUSTER_DIR); fi

crds:
	cargo run -q --bin bulwark -- crd > $(CRD_FILE)
	cargo run -q --bin bulwark -- crd --api-docs > docs/api.md
	hack/render-manifests.sh

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	hack/check-crd.sh
	hack/check-chart.sh

unit:
	cargo test --workspace --lib --bins

# Interoperability tests verify our tokens with a second ecosystem's library.
test-deps:
	python3 -m pip install --quiet --disable-pip-version-check 'PyJWT[crypto]==2.15.1'

# Kafka broker jars and the Java client tool of the Kafka tests, cached per version.
kafka:
	@hack/kafka.sh >/dev/null

# `cargo test --workspace` includes the e2e suite (target e2e) on its own local control plane.
test: lint controlplane kafka test-deps
	cargo test --workspace --no-fail-fast

# The e2e suite alone: local control plane, chart, operator with the chart's ServiceAccount.
e2e: controlplane
	cargo test --test e2e -- --nocapture

# Faults and bad input at full size (docs/RELIABILITY.md): restart storm, kill -9 during the first
# reconcile, API server outage, leader failover, a fighting writer, secret hygiene, the invalid
# corpus and longer fuzzing. The quick versions run in `make test`.
chaos: controlplane kafka
	BULWARK_CHAOS=full PROPTEST_CASES=$${PROPTEST_CASES:-4096} cargo test --test chaos --test contested \
	  --test hygiene --test invalid_policies --test fuzz -- --nocapture --test-threads=1

# Performance benchmarks at full size against the local control plane, cert-manager's controller
# side by side (built once, cached); rewrites the figures in docs/BENCHMARKS.md. A smoke version
# runs in `make test`.
cert-manager:
	@hack/cert-manager.sh >/dev/null

bench: controlplane cert-manager
	CERT_MANAGER_DIR="$$(hack/cert-manager.sh 2>/dev/null | tail -1)" cargo bench --bench bench

# The same suite on kind with the image and chart, plus live probes (needs a Docker engine).
e2e-kind:
	hack/e2e-kind.sh

demo:
	hack/demo.sh

demo-down:
	@hack/demo.sh stop

# Helm chart, plain manifests and image.
IMAGE ?= bulwark:0.1.0
.PHONY: manifests chart-check image

manifests: controlplane
	hack/render-manifests.sh

chart-check: controlplane
	hack/check-chart.sh

image:
	docker build -t $(IMAGE) .
