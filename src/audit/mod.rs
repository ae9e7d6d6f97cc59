//! `bulwark audit`: the security posture of the namespaces that hold SecurityPolicies, as
//! findings computed from lists of objects. Everything here is pure (objects and a clock in,
//! findings out); [`cluster`] lists the objects and [`report`] prints them.
//!
//! Secret data never reaches a finding: the I/O layer keeps only metadata and the JWT
//! `rotated-at` time of each produced Secret.

pub mod cluster;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    CertificateStatus, GoDuration, PortSpec, Protocol, SecurityPolicy, SecurityPolicyStatus,
};
use crate::controller::consistency::{
    self, DATA_TIER, Inconsistency, WEAK_SSL_MODE, dns_name_covers,
};
use crate::controller::status::{CONSISTENT, READY};
use crate::facets::kafka::user_secret_name;
use crate::facets::postgres::role_secret_name;
use crate::kube_io::{LABEL_MANAGED_BY, LABEL_POLICY, MANAGED_BY_VALUE};

/// On Kafka user and PostgreSQL role Secrets: when the password in it was generated (RFC 3339).
pub const ANNOTATION_PASSWORD_SET_AT: &str = "bulwark.dev/password-set-at";

/// The [`ANNOTATION_PASSWORD_SET_AT`] value a credential Secret should carry: `now` when this
/// reconcile generated its password (first time or rotation), otherwise what the Secret already
/// records. A Secret from before the annotation existed keeps none: the audit then falls back to
/// its creation time and says so, rather than inventing a rotation.
pub fn password_set_at(generated: bool, observed: Option<&str>, now: Timestamp) -> Option<String> {
    if generated {
        // Whole seconds: the value is compared, not just displayed.
        let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
        return Some(now.to_string());
    }
    observed.map(str::to_string)
}

const DAY: i64 = 86_400;
/// Certificates closer to expiry than this are `medium`; the operator's status counts them.
pub const EXPIRY_MEDIUM_DAYS: i64 = 30;
/// Certificates closer to expiry than this are `high`.
pub const EXPIRY_HIGH_DAYS: i64 = 7;
/// Kafka and PostgreSQL passwords older than this are `low`.
pub const CREDENTIAL_LOW_DAYS: i64 = 90;
/// Kafka and PostgreSQL passwords older than this are `medium`.
pub const CREDENTIAL_MEDIUM_DAYS: i64 = 365;

/// How much a finding matters, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub const ALL: [Severity; 5] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
        Severity::Info,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FindingType {
    /// A pod no tier of any SecurityPolicy in its namespace selects.
    UnisolatedPod,
    /// A tier whose podSelector selects no pod.
    EmptyTier,
    /// A data-tier Service port that a flow reaches and no certificate names.
    UncoveredDataPort,
    /// A CA or certificate, by time to expiry.
    CertificateExpiry,
    /// A Kafka user, PostgreSQL role or JWT signing key, by age since its last rotation.
    CredentialAge,
    /// A produced object in conflict, contested by another writer, or missing.
    Drift,
    /// A policy that is not Ready, or whose status is missing or stale.
    NotReady,
    /// Sections of a spec that do not fit together (the `Consistent` condition's checks).
    Inconsistency,
}

impl FindingType {
    pub fn as_str(self) -> &'static str {
        match self {
            FindingType::UnisolatedPod => "UnisolatedPod",
            FindingType::EmptyTier => "EmptyTier",
            FindingType::UncoveredDataPort => "UncoveredDataPort",
            FindingType::CertificateExpiry => "CertificateExpiry",
            FindingType::CredentialAge => "CredentialAge",
            FindingType::Drift => "Drift",
            FindingType::NotReady => "NotReady",
            FindingType::Inconsistency => "Inconsistency",
        }
    }
}

/// One finding. Serialized as one element of the JSON report's `findings`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(rename = "type")]
    pub type_: FindingType,
    pub severity: Severity,
    pub namespace: String,
    /// The policy it concerns; null for a pod no policy selects.
    pub policy: Option<String>,
    /// `Kind/name` of the object it is about.
    pub object: String,
    pub message: String,
}

impl Finding {
    /// Report order: namespace, most severe first, then type, policy, object, message.
    fn sort_key(&self) -> impl Ord + '_ {
        (
            &self.namespace,
            std::cmp::Reverse(self.severity),
            self.type_,
            &self.policy,
            &self.object,
            &self.message,
        )
    }
}

/// An object the operator produced, as the audit sees it: metadata only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducedObject {
    pub kind: String,
    pub name: String,
    /// Value of the `bulwark.dev/policy` label.
    pub policy: Option<String>,
    pub annotations: BTreeMap<String, String>,
    pub created: Option<Timestamp>,
    /// JWT signing Secrets: when the current key started signing (its `rotated-at` entry).
    pub rotated_at: Option<Timestamp>,
}

/// Everything the audit looks at in one namespace.
#[derive(Clone, Debug, Default)]
pub struct NamespaceSnapshot {
    pub namespace: String,
    pub policies: Vec<SecurityPolicy>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// Objects labelled `app.kubernetes.io/managed-by: bulwark`.
    pub produced: Vec<ProducedObject>,
}

/// Every finding of every namespace, in report order.
pub fn audit(snapshots: &[NamespaceSnapshot], now: Timestamp) -> Vec<Finding> {
    let mut out = Vec::new();
    for snap in snapshots {
        out.extend(unisolated_pods(snap));
        for policy in &snap.policies {
            out.extend(policy_findings(snap, policy, now));
        }
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out
}

fn policy_findings(
    snap: &NamespaceSnapshot,
    policy: &SecurityPolicy,
    now: Timestamp,
) -> Vec<Finding> {
    let ns = &snap.namespace;
    let name = policy.name_any();
    let status = policy.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    out.extend(empty_tiers(snap, policy));
    out.extend(uncovered_data_ports(snap, policy));
    out.extend(certificate_findings(ns, &name, &status.certificates, now));
    out.extend(credential_findings(snap, policy, now));
    out.extend(condition_drift(ns, &name, &status.conditions));
    out.extend(missing_objects(snap, policy, &status));
    out.extend(not_ready(ns, policy));
    out.extend(inconsistency_findings(
        ns,
        &name,
        &consistency::inconsistencies(&policy.spec),
    ));
    out
}

fn finding(
    type_: FindingType,
    severity: Severity,
    ns: &str,
    policy: Option<&str>,
    object: String,
    message: String,
) -> Finding {
    Finding {
        type_,
        severity,
        namespace: ns.to_string(),
        policy: policy.map(str::to_string),
        object,
        message,
    }
}

/// Pods that take part in the audit: running or pending, not the operator's own Job pods.
fn live_pods(snap: &NamespaceSnapshot) -> impl Iterator<Item = &Pod> {
    snap.pods.iter().filter(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        !matches!(phase, Some("Succeeded" | "Failed"))
            && p.metadata.deletion_timestamp.is_none()
            && p.labels().get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE)
    })
}

fn unisolated_pods(snap: &NamespaceSnapshot) -> Vec<Finding> {
    let default_deny = snap
        .policies
        .iter()
        .any(|p| p.spec.network.as_ref().is_some_and(|n| n.default_deny));
    live_pods(snap)
        .filter(|pod| {
            !snap.policies.iter().any(|p| {
                p.spec
                    .tiers
                    .values()
                    .any(|t| selector_matches(&t.pod_selector, pod.labels()))
            })
        })
        .map(|pod| {
            let (severity, consequence) = if default_deny {
                (
                    Severity::Low,
                    "a default-deny NetworkPolicy blocks all its traffic; add it to a tier if it needs any",
                )
            } else {
                (
                    Severity::High,
                    "no default-deny covers the namespace, so its traffic is not restricted",
                )
            };
            finding(
                FindingType::UnisolatedPod,
                severity,
                &snap.namespace,
                None,
                format!("Pod/{}", pod.name_any()),
                format!("no tier of any SecurityPolicy selects this pod; {consequence}"),
            )
        })
        .collect()
}

fn empty_tiers(snap: &NamespaceSnapshot, policy: &SecurityPolicy) -> Vec<Finding> {
    let name = policy.name_any();
    policy
        .spec
        .tiers
        .iter()
        .filter(|(_, tier)| {
            !live_pods(snap).any(|pod| selector_matches(&tier.pod_selector, pod.labels()))
        })
        .map(|(tier, _)| {
            finding(
                FindingType::EmptyTier,
                Severity::Low,
                &snap.namespace,
                Some(&name),
                format!("SecurityPolicy/{name}"),
                format!(
                    "spec.tiers.{tier}.podSelector selects no pod in the namespace; check its labels"
                ),
            )
        })
        .collect()
}

/// Host names a client in the cluster can use for a Service.
fn service_hosts(service: &str, ns: &str) -> [String; 4] {
    [
        service.to_string(),
        format!("{service}.{ns}"),
        format!("{service}.{ns}.svc"),
        format!("{service}.{ns}.svc.cluster.local"),
    ]
}

fn service_covered(policy: &SecurityPolicy, svc: &Service, ns: &str) -> bool {
    let Some(tls) = &policy.spec.tls else {
        return false;
    };
    let name = svc.name_any();
    let hosts = service_hosts(&name, ns);
    let headless = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None");
    // A headless Service's pods are reached as `<pod>.<service>.<ns>.svc`.
    let pod_suffixes = [
        format!(".{name}.{ns}.svc"),
        format!(".{name}.{ns}.svc.cluster.local"),
    ];
    tls.certificates.iter().any(|c| {
        c.dns_names.iter().any(|san| {
            hosts.iter().any(|h| dns_name_covers(&san.0, h))
                || (headless
                    && pod_suffixes
                        .iter()
                        .any(|s| san.0.to_ascii_lowercase().ends_with(s)))
        })
    })
}

/// The pod ports a Service port sends to, resolving a named targetPort on the given pods.
fn target_ports(port: &k8s_openapi::api::core::v1::ServicePort, pods: &[&Pod]) -> Vec<i32> {
    match &port.target_port {
        None => vec![port.port],
        Some(IntOrString::Int(p)) => vec![*p],
        Some(IntOrString::String(named)) => {
            let mut found: BTreeSet<i32> = BTreeSet::new();
            for pod in pods {
                for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
                    for cp in c.ports.iter().flatten() {
                        if cp.name.as_deref() == Some(named.as_str()) {
                            found.insert(cp.container_port);
                        }
                    }
                }
            }
            found.into_iter().collect()
        }
    }
}

fn in_range(spec: &PortSpec, protocol: &str, port: i32) -> bool {
    spec.protocol.as_str() == protocol
        && port >= spec.port
        && port <= spec.end_port.unwrap_or(spec.port)
}

fn uncovered_data_ports(snap: &NamespaceSnapshot, policy: &SecurityPolicy) -> Vec<Finding> {
    let (Some(network), Some(data)) = (&policy.spec.network, policy.spec.tiers.get(DATA_TIER))
    else {
        return Vec::new();
    };
    let ns = &snap.namespace;
    let name = policy.name_any();
    let data_pods: Vec<&Pod> = live_pods(snap)
        .filter(|p| selector_matches(&data.pod_selector, p.labels()))
        .collect();
    let mut out = Vec::new();
    for svc in &snap.services {
        let Some(spec) = &svc.spec else { continue };
        let selector = spec.selector.clone().unwrap_or_default();
        if selector.is_empty() {
            continue;
        }
        let selected: Vec<&Pod> = data_pods
            .iter()
            .copied()
            .filter(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .collect();
        // With no pod running, a Service whose selector the tier would select still fronts it.
        if selected.is_empty() && !selector_matches(&data.pod_selector, &selector) {
            continue;
        }
        if service_covered(policy, svc, ns) {
            continue;
        }
        for port in spec.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or(Protocol::Tcp.as_str());
            let targets = target_ports(port, &selected);
            let flows: Vec<String> = network
                .flows
                .iter()
                .enumerate()
                .filter(|(_, f)| f.to == DATA_TIER)
                .filter(|(_, f)| {
                    f.ports
                        .iter()
                        .any(|p| targets.iter().any(|t| in_range(p, protocol, *t)))
                })
                .map(|(i, f)| format!("spec.network.flows[{i}] (from {})", f.from))
                .collect();
            if flows.is_empty() {
                continue;
            }
            let svc_name = svc.name_any();
            out.push(finding(
                FindingType::UncoveredDataPort,
                Severity::High,
                ns,
                Some(&name),
                format!("Service/{svc_name}"),
                format!(
                    "port {} of this data-tier Service is reached by {} but no certificate in spec.tls.certificates names {svc_name}, {svc_name}.{ns}, {svc_name}.{ns}.svc or {svc_name}.{ns}.svc.cluster.local; clients cannot verify what answers there",
                    port.port,
                    flows.join(", ")
                ),
            ));
        }
    }
    out
}

fn expiry_severity(not_after: Timestamp, now: Timestamp) -> Severity {
    let left = not_after.as_second() - now.as_second();
    if left <= 0 {
        Severity::Critical
    } else if left < EXPIRY_HIGH_DAYS * DAY {
        Severity::High
    } else if left < EXPIRY_MEDIUM_DAYS * DAY {
        Severity::Medium
    } else {
        Severity::Info
    }
}

fn span_text(seconds: i64) -> String {
    let seconds = seconds.abs();
    if seconds < 3 * DAY {
        format!("{}h", seconds / 3600)
    } else {
        format!("{} days", seconds / DAY)
    }
}

/// One finding per CA and certificate of `status.certificates`, by time to expiry.
pub fn certificate_findings(
    ns: &str,
    policy: &str,
    certificates: &[CertificateStatus],
    now: Timestamp,
) -> Vec<Finding> {
    certificates
        .iter()
        .filter_map(|c| {
            let not_after: Timestamp = c.not_after.parse().ok()?;
            let left = not_after.as_second() - now.as_second();
            let what = if c.name == "ca" {
                "CA".to_string()
            } else {
                format!("certificate {}", c.name)
            };
            let when = if left <= 0 {
                format!("expired {} ago ({})", span_text(left), c.not_after)
            } else {
                format!("expires in {} ({})", span_text(left), c.not_after)
            };
            let renewal = match &c.renewal_time {
                Some(r) => format!("; the operator renews it at {r}"),
                None => "; it is not renewed by the operator (your own CA)".to_string(),
            };
            Some(finding(
                FindingType::CertificateExpiry,
                expiry_severity(not_after, now),
                ns,
                Some(policy),
                format!("Secret/{}", c.secret_name),
                format!("{what} {when}{renewal}"),
            ))
        })
        .collect()
}

/// The next time a certificate crosses an expiry threshold: when the operator's status count
/// of [`FindingType::CertificateExpiry`] may change next.
pub fn next_expiry_step(certificates: &[CertificateStatus], now: Timestamp) -> Option<Timestamp> {
    certificates
        .iter()
        .filter_map(|c| c.not_after.parse::<Timestamp>().ok())
        .flat_map(|at| {
            [EXPIRY_MEDIUM_DAYS, EXPIRY_HIGH_DAYS, 0]
                .map(|days| Timestamp::from_second(at.as_second() - days * DAY).ok())
        })
        .flatten()
        .filter(|t| *t > now)
        .min()
}

fn credential_findings(
    snap: &NamespaceSnapshot,
    policy: &SecurityPolicy,
    now: Timestamp,
) -> Vec<Finding> {
    let name = policy.name_any();
    let secret = |secret_name: &str| {
        snap.produced.iter().find(|o| {
            o.kind == "Secret" && o.name == secret_name && o.policy.as_deref() == Some(&name)
        })
    };
    let mut out = Vec::new();
    let mut password = |what: String, secret_name: String| {
        let Some(obj) = secret(&secret_name) else {
            return;
        };
        let recorded = obj
            .annotations
            .get(ANNOTATION_PASSWORD_SET_AT)
            .and_then(|v| v.parse::<Timestamp>().ok());
        let (at, how) = match (recorded, obj.created) {
            (Some(at), _) => (at, "password set"),
            (None, Some(at)) => (at, "Secret created (no password change recorded since)"),
            (None, None) => return,
        };
        let age = now.as_second() - at.as_second();
        let severity = if age >= CREDENTIAL_MEDIUM_DAYS * DAY {
            Severity::Medium
        } else if age >= CREDENTIAL_LOW_DAYS * DAY {
            Severity::Low
        } else {
            Severity::Info
        };
        out.push(finding(
            FindingType::CredentialAge,
            severity,
            &snap.namespace,
            Some(&name),
            format!("Secret/{secret_name}"),
            format!(
                "{what}: {how} {} ago ({at}); rotate with the bulwark.dev/rotate annotation",
                span_text(age)
            ),
        ));
    };
    if let Some(kafka) = &policy.spec.kafka {
        for user in &kafka.users {
            password(
                format!("Kafka user {}", user.name),
                user_secret_name(&name, user),
            );
        }
    }
    if let Some(pg) = &policy.spec.postgres {
        for role in &pg.roles {
            password(
                format!("PostgreSQL role {}", role.name),
                role_secret_name(&name, role),
            );
        }
    }
    for key in policy.spec.jwt.iter().flatten() {
        let Some(obj) = secret(&key.secret_name) else {
            continue;
        };
        let Some(at) = obj.rotated_at.or(obj.created) else {
            continue;
        };
        let age = now.as_second() - at.as_second();
        let every = key
            .rotate_every
            .as_deref()
            .and_then(|v| v.parse::<GoDuration>().ok())
            .map(|d| d.0.as_secs() as i64);
        let (severity, note) = match every {
            Some(every) if age > every + DAY => (
                Severity::High,
                format!(
                    "; overdue: rotateEvery is {}, is the operator running?",
                    key.rotate_every.as_deref().unwrap_or_default()
                ),
            ),
            Some(_) => (
                Severity::Info,
                format!(
                    "; rotates every {}",
                    key.rotate_every.as_deref().unwrap_or_default()
                ),
            ),
            None => (
                if age >= CREDENTIAL_MEDIUM_DAYS * DAY {
                    Severity::Medium
                } else if age >= CREDENTIAL_LOW_DAYS * DAY {
                    Severity::Low
                } else {
                    Severity::Info
                },
                "; no rotateEvery: rotate with the bulwark.dev/rotate annotation".to_string(),
            ),
        };
        out.push(finding(
            FindingType::CredentialAge,
            severity,
            &snap.namespace,
            Some(&name),
            format!("Secret/{}", key.secret_name),
            format!(
                "JWT signing key {}: current key signing since {} ago ({at}){note}",
                key.name,
                span_text(age)
            ),
        ));
    }
    out
}

/// Facet conditions whose reason says another writer holds or fights over a produced object.
pub fn condition_drift(ns: &str, policy: &str, conditions: &[Condition]) -> Vec<Finding> {
    conditions
        .iter()
        .filter(|c| c.type_ != READY && c.type_ != CONSISTENT && c.status != "True")
        .filter_map(|c| {
            let severity = match c.reason.as_str() {
                "Conflict" => Severity::High,
                "Contested" => Severity::Medium,
                _ => return None,
            };
            Some(finding(
                FindingType::Drift,
                severity,
                ns,
                Some(policy),
                format!("SecurityPolicy/{policy}"),
                format!("{} is {}: {}", c.type_, c.reason, c.message),
            ))
        })
        .collect()
}

fn missing_objects(
    snap: &NamespaceSnapshot,
    policy: &SecurityPolicy,
    status: &SecurityPolicyStatus,
) -> Vec<Finding> {
    let name = policy.name_any();
    let present: BTreeSet<(&str, &str)> = snap
        .produced
        .iter()
        .filter(|o| o.policy.as_deref() == Some(&name))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    status
        .managed_objects
        .iter()
        // Finished Jobs are garbage-collected after their TTL: their absence is expected.
        .filter(|m| m.kind != "Job")
        .filter(|m| !present.contains(&(m.kind.as_str(), m.name.as_str())))
        .map(|m| {
            finding(
                FindingType::Drift,
                Severity::High,
                &snap.namespace,
                Some(&name),
                format!("{}/{}", m.kind, m.name),
                format!(
                    "listed in status.managedObjects ({} facet) but missing or without Bulwark's labels; the operator restores produced objects within seconds, so check that it is running",
                    m.facet
                ),
            )
        })
        .collect()
}

fn not_ready(ns: &str, policy: &SecurityPolicy) -> Option<Finding> {
    let name = policy.name_any();
    let object = format!("SecurityPolicy/{name}");
    let Some(status) = &policy.status else {
        return Some(finding(
            FindingType::NotReady,
            Severity::Medium,
            ns,
            Some(&name),
            object,
            "no status yet: no operator has reconciled this policy; check that one runs and watches this namespace".into(),
        ));
    };
    if status.observed_generation != policy.metadata.generation {
        return Some(finding(
            FindingType::NotReady,
            Severity::Medium,
            ns,
            Some(&name),
            object,
            format!(
                "status describes generation {} but the spec is at generation {}: the operator has not caught up",
                status
                    .observed_generation
                    .map_or("none".to_string(), |g| g.to_string()),
                policy
                    .metadata
                    .generation
                    .map_or("none".to_string(), |g| g.to_string()),
            ),
        ));
    }
    match status.conditions.iter().find(|c| c.type_ == READY) {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(finding(
            FindingType::NotReady,
            Severity::High,
            ns,
            Some(&name),
            object,
            format!("Ready is {} ({}): {}", c.status, c.reason, c.message),
        )),
        None => Some(finding(
            FindingType::NotReady,
            Severity::Medium,
            ns,
            Some(&name),
            object,
            "status has no Ready condition".into(),
        )),
    }
}

/// Severity of one consistency check's finding.
pub fn inconsistency_severity(reason: &str) -> Severity {
    if reason == WEAK_SSL_MODE {
        Severity::Medium
    } else {
        Severity::High
    }
}

pub fn inconsistency_findings(ns: &str, policy: &str, found: &[Inconsistency]) -> Vec<Finding> {
    found
        .iter()
        .map(|i| {
            finding(
                FindingType::Inconsistency,
                inconsistency_severity(i.reason),
                ns,
                Some(policy),
                format!("SecurityPolicy/{policy}"),
                format!("{}: {}", i.reason, i.message),
            )
        })
        .collect()
}

/// The summary the operator keeps in `status.findings`: counts by finding type of the findings
/// it can judge while reconciling (Inconsistency, CertificateExpiry, Drift from its own
/// conditions), at severity low or above. Time enters only through certificate expiry
/// thresholds, so the counts change rarely; a zero count is left out.
pub fn status_summary(
    ns: &str,
    policy: &str,
    status: &SecurityPolicyStatus,
    found: &[Inconsistency],
    now: Timestamp,
) -> BTreeMap<String, u32> {
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let findings = inconsistency_findings(ns, policy, found)
        .into_iter()
        .chain(certificate_findings(ns, policy, &status.certificates, now))
        .chain(condition_drift(ns, policy, &status.conditions));
    for f in findings.filter(|f| f.severity >= Severity::Low) {
        *counts.entry(f.type_.as_str().to_string()).or_default() += 1;
    }
    counts
}

/// Finding types [`status_summary`] counts (the metric exports each, zero included).
pub const STATUS_SUMMARY_TYPES: [FindingType; 3] = [
    FindingType::CertificateExpiry,
    FindingType::Drift,
    FindingType::Inconsistency,
];

fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    crate::facets::network::selector_matches(Some(selector), labels)
}

/// The policy label of a produced object.
pub fn policy_label(labels: &BTreeMap<String, String>) -> Option<String> {
    labels.get(LABEL_POLICY).cloned()
}

#[cfg(test)]
mod tests;
