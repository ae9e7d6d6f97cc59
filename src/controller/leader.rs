//! Lease-based leader election: only the holder of the Lease runs the controller and writes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};

/// Lease settings; the defaults follow kube-controller-manager (15 s lease, 2 s retry).
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: "bulwark-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Blocks until this process holds the Lease.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    loop {
        match try_acquire_or_renew(client, cfg).await {
            Ok(true) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "acquired leadership");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Renews the Lease until renewal has failed for a whole lease duration; returns when leadership is lost.
pub async fn hold(client: &Client, cfg: &LeaseConfig) {
    let mut last_renewal = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.retry_period).await;
        match try_acquire_or_renew(client, cfg).await {
            Ok(true) => last_renewal = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %cfg.name, "another instance took the lease");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "lease renewal failed"),
        }
        if last_renewal.elapsed() >= cfg.lease_duration {
            tracing::error!(lease = %cfg.name, "could not renew the lease in time");
            return;
        }
    }
}

/// One round of the election: true when we hold the Lease afterwards.
async fn try_acquire_or_renew(client: &Client, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let now = jiff::Timestamp::now();
    let secs = i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&cfg.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(cfg.name.clone()),
                namespace: Some(cfg.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(cfg.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let expired = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(renewed), Some(d)) => renewed.0 + jiff::SignedDuration::from_secs(i64::from(d)) < now,
        _ => true,
    };
    if !ours && !expired {
        return Ok(false);
    }
    if !ours {
        spec.holder_identity = Some(cfg.identity.clone());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    // replace carries the resourceVersion we read, so two contenders cannot both win.
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
