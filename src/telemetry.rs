//! Tracing, Prometheus metrics and the health endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use tracing_subscriber::{EnvFilter, prelude::*};

/// Log output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global tracing subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(tracing_subscriber::fmt::layer()).init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json())
            .init(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FacetLabel {
    facet: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    namespace: String,
    policy: String,
    certificate: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FindingLabels {
    namespace: String,
    policy: String,
    r#type: String,
}

/// The operator's Prometheus metrics.
pub struct Metrics {
    findings: Family<FindingLabels, Gauge>,
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    unchanged: Counter,
    partial: Counter,
    facets: Family<FacetLabel, Counter>,
    reconcile_duration: Histogram,
    writes: Family<KindLabel, Counter>,
    managed: Family<KindLabel, Gauge>,
    not_after: Family<CertificateLabels, Gauge>,
    watch_errors: Counter,
    watches_failing: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("bulwark");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let reconcile_duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let writes = Family::<KindLabel, Counter>::default();
        let managed = Family::<KindLabel, Gauge>::default();
        registry.register(
            "reconciles",
            "Reconciliations by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconciliation",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes sent to the API server by object kind",
            writes.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects produced and kept by the operator, by kind (last reconciled policy counts)",
            managed.clone(),
        );
        let not_after = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_not_after_seconds",
            "Expiry of each CA and certificate, Unix seconds",
            not_after.clone(),
        );
        let watch_errors = Counter::default();
        registry.register(
            "watch_errors",
            "Failed watches of the API server (each is retried with backoff); a rising count means the API server is unreachable or refusing",
            watch_errors.clone(),
        );
        let watches_failing = Gauge::default();
        registry.register(
            "watches_failing",
            "Watches whose last attempt failed; above zero the API server is unreachable or refusing, and /readyz answers 503",
            watches_failing.clone(),
        );
        let unchanged = Counter::default();
        registry.register(
            "reconciles_unchanged",
            "Successful reconciliations answered from the watches: the policy and everything it produced were as the last complete reconciliation left them, so no request was sent",
            unchanged.clone(),
        );
        let partial = Counter::default();
        registry.register(
            "reconciles_partial",
            "Reconciliations that rebuilt only the facets whose produced objects changed; the other facets kept what the status says",
            partial.clone(),
        );
        let facets = Family::<FacetLabel, Counter>::default();
        registry.register(
            "facet_reconciles",
            "Facets rebuilt by reconciliations, per facet: every facet on a complete reconciliation, only the changed ones on a partial one",
            facets.clone(),
        );
        let findings = Family::<FindingLabels, Gauge>::default();
        registry.register(
            "policy_findings",
            "Findings of bulwark audit the operator knows while reconciling (status.findings), per policy and finding type",
            findings.clone(),
        );
        Self {
            findings,
            watch_errors,
            watches_failing,
            not_after,
            registry,
            reconciles,
            unchanged,
            partial,
            facets,
            reconcile_duration,
            writes,
            managed,
        }
    }
}

impl Metrics {
    pub fn record_reconcile(&self, result: &str, duration: Duration) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.into(),
            })
            .inc();
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// A successful reconcile that found nothing changed without asking the API server.
    pub fn record_unchanged(&self) {
        self.unchanged.inc();
    }

    /// A facet rebuilt by a reconcile.
    pub fn record_facet(&self, facet: crate::kube_io::Facet) {
        self.facets
            .get_or_create(&FacetLabel {
                facet: facet.label().into(),
            })
            .inc();
    }

    /// A reconcile that rebuilt only some facets.
    pub fn record_partial(&self) {
        self.partial.inc();
    }

    pub fn record_watch_error(&self) {
        self.watch_errors.inc();
    }

    /// One watch started (`true`) or stopped (`false`) failing.
    pub fn mark_watch_failing(&self, failing: bool) {
        if failing {
            self.watches_failing.inc();
        } else {
            self.watches_failing.dec();
        }
    }

    /// Watches whose last attempt failed.
    pub fn watches_failing(&self) -> i64 {
        self.watches_failing.get()
    }

    pub fn record_write(&self, kind: &str) {
        self.writes
            .get_or_create(&KindLabel { kind: kind.into() })
            .inc();
    }

    /// Total writes of one kind since start (used by tests and `bulwark` itself for logging).
    pub fn writes(&self, kind: &str) -> u64 {
        self.writes
            .get_or_create(&KindLabel { kind: kind.into() })
            .get()
    }

    pub fn set_managed(&self, kind: &str, count: i64) {
        self.managed
            .get_or_create(&KindLabel { kind: kind.into() })
            .set(count);
    }

    /// Replaces the expiry gauges of one policy's certificates (`certs` empty: the policy is gone).
    pub fn set_certificates(
        &self,
        namespace: &str,
        policy: &str,
        previous: &[String],
        certs: &[(String, i64)],
    ) {
        for name in previous {
            self.not_after.remove(&CertificateLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                certificate: name.clone(),
            });
        }
        for (name, not_after) in certs {
            let labels = CertificateLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                certificate: name.clone(),
            };
            self.not_after.get_or_create(&labels).set(*not_after);
        }
    }

    /// Publishes one policy's `status.findings`; every type it can count is exported, zero included.
    pub fn set_policy_findings(
        &self,
        namespace: &str,
        policy: &str,
        counts: &std::collections::BTreeMap<String, u32>,
    ) {
        for t in crate::audit::STATUS_SUMMARY_TYPES {
            let labels = finding_labels(namespace, policy, t.as_str());
            let n = counts.get(t.as_str()).copied().unwrap_or(0);
            self.findings.get_or_create(&labels).set(i64::from(n));
        }
    }

    /// Drops the finding gauges of a policy that went away.
    pub fn remove_policy_findings(&self, namespace: &str, policy: &str) {
        for t in crate::audit::STATUS_SUMMARY_TYPES {
            self.findings
                .remove(&finding_labels(namespace, policy, t.as_str()));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

fn finding_labels(namespace: &str, policy: &str, finding_type: &str) -> FindingLabels {
    FindingLabels {
        namespace: namespace.into(),
        policy: policy.into(),
        r#type: finding_type.into(),
    }
}

/// Shared state of the HTTP endpoints.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

async fn metrics_handler(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if !h.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    } else if h.metrics.watches_failing() > 0 {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "watches of the API server failing",
        )
    } else {
        (StatusCode::OK, "ok")
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, handle))
}
