use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Pod, PodSpec, PodStatus, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use super::report::Report;
use super::*;
use crate::api::{CertificateStatus, ManagedObject, SecurityPolicy};

const NS: &str = "traffic";

fn now() -> Timestamp {
    "2026-06-01T00:00:00Z".parse().unwrap()
}

fn days(n: i64) -> Timestamp {
    Timestamp::from_second(now().as_second() + n * DAY).unwrap()
}

/// The shipped example, Ready at its generation, with nothing in `status.certificates`.
fn example() -> SecurityPolicy {
    let mut policy: SecurityPolicy = serde_yaml::from_str(include_str!(
        "../../deploy/examples/traffic-prediction.yaml"
    ))
    .unwrap();
    policy.metadata.generation = Some(1);
    policy.status = Some(SecurityPolicyStatus {
        observed_generation: Some(1),
        conditions: vec![condition(READY, "True", "Reconciled")],
        ..SecurityPolicyStatus::default()
    });
    policy
}

fn condition(type_: &str, status: &str, reason: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: format!("{reason} message"),
        observed_generation: Some(1),
        last_transition_time: Time(now()),
    }
}

fn pod(name: &str, tier: Option<&str>) -> Pod {
    let labels = tier
        .map(|t| BTreeMap::from([("app.kubernetes.io/tier".to_string(), t.to_string())]))
        .unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                ports: Some(vec![ContainerPort {
                    name: Some("pg".into()),
                    container_port: 5432,
                    ..ContainerPort::default()
                }]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn tiered_pods() -> Vec<Pod> {
    vec![
        pod("web", Some("frontend")),
        pod("api", Some("backend")),
        pod("db-0", Some("data")),
    ]
}

fn service(name: &str, port: i32, target: Option<IntOrString>, headless: bool) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(
                "app.kubernetes.io/tier".to_string(),
                "data".to_string(),
            )])),
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(vec![ServicePort {
                port,
                target_port: target,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn snapshot(policy: SecurityPolicy, pods: Vec<Pod>) -> NamespaceSnapshot {
    NamespaceSnapshot {
        namespace: NS.into(),
        policies: vec![policy],
        pods,
        services: Vec::new(),
        produced: Vec::new(),
    }
}

/// (type, severity, object) of every finding, in report order.
fn findings(snap: &NamespaceSnapshot) -> Vec<(FindingType, Severity, String)> {
    audit(std::slice::from_ref(snap), now())
        .into_iter()
        .map(|f| (f.type_, f.severity, f.object))
        .collect()
}

#[test]
fn a_clean_namespace_has_no_findings() {
    assert_eq!(findings(&snapshot(example(), tiered_pods())), []);
}

#[test]
fn unselected_pod_is_low_under_default_deny_and_high_without() {
    let mut pods = tiered_pods();
    pods.push(pod("stray", None));
    let mut done = pod("finished", None);
    done.status = Some(PodStatus {
        phase: Some("Succeeded".into()),
        ..PodStatus::default()
    });
    pods.push(done);
    let mut own_job = pod("bulwark-job", None);
    own_job
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    pods.push(own_job);
    assert_eq!(
        findings(&snapshot(example(), pods.clone())),
        [(
            FindingType::UnisolatedPod,
            Severity::Low,
            "Pod/stray".into()
        )]
    );
    let mut open = example();
    open.spec.network.as_mut().unwrap().default_deny = false;
    let found = audit(&[snapshot(open, pods)], now());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].severity, Severity::High);
    assert_eq!(found[0].policy, None);
}

#[test]
fn a_tier_without_pods_names_its_selector() {
    let found = audit(&[snapshot(example(), tiered_pods()[..2].to_vec())], now());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].type_, FindingType::EmptyTier);
    assert_eq!(found[0].object, "SecurityPolicy/traffic");
    assert!(found[0].message.starts_with("spec.tiers.data.podSelector"));
}

#[test]
fn a_data_service_port_reached_by_a_flow_needs_a_certificate_naming_the_service() {
    let mut snap = snapshot(example(), tiered_pods());
    snap.services = vec![
        // Reached by backend -> data on 5432, named only by a certificate it does not have.
        service("db", 5432, Some(IntOrString::String("pg".into())), false),
        // Named by the postgres certificate (postgres.traffic.svc).
        service("postgres", 5432, None, false),
        // Headless brokers: the kafka certificate's *.kafka-brokers.traffic.svc covers pods.
        service("kafka-brokers", 9093, None, true),
        // No flow reaches 8080 in the data tier.
        service("metrics", 8080, None, false),
    ];
    let found = audit(std::slice::from_ref(&snap), now());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].type_, FindingType::UncoveredDataPort);
    assert_eq!(found[0].severity, Severity::High);
    assert_eq!(found[0].object, "Service/db");
    assert!(
        found[0]
            .message
            .contains("reached by spec.network.flows[1] (from backend)"),
        "{}",
        found[0].message
    );

    let mut covered = snap.clone();
    covered.policies[0].spec.tls.as_mut().unwrap().certificates[1]
        .dns_names
        .push(crate::api::DnsName("db.traffic".into()));
    assert_eq!(audit(&[covered], now()), []);

    let mut no_tls = snap;
    no_tls.policies[0].spec.tls = None;
    no_tls.policies[0].spec.postgres = None;
    no_tls.policies[0].spec.kafka = None;
    let objects: Vec<String> = audit(&[no_tls], now())
        .into_iter()
        .map(|f| f.object)
        .collect();
    assert_eq!(
        objects,
        ["Service/db", "Service/kafka-brokers", "Service/postgres"]
    );
}

fn cert(name: &str, not_after: Timestamp, renewal: bool) -> CertificateStatus {
    CertificateStatus {
        name: name.into(),
        secret_name: format!("{name}-tls"),
        serial: "01".into(),
        not_after: not_after.to_string(),
        renewal_time: renewal.then(|| days(-1).to_string()),
    }
}

#[test]
fn certificates_are_graded_by_time_to_expiry() {
    let certs = [
        cert("ca", days(400), false),
        cert("a", days(29), true),
        cert("b", days(6), true),
        cert("c", days(-1), true),
    ];
    let found = certificate_findings(NS, "traffic", &certs, now());
    let grades: Vec<(&str, Severity)> = found
        .iter()
        .map(|f| (f.object.as_str(), f.severity))
        .collect();
    assert_eq!(
        grades,
        [
            ("Secret/ca-tls", Severity::Info),
            ("Secret/a-tls", Severity::Medium),
            ("Secret/b-tls", Severity::High),
            ("Secret/c-tls", Severity::Critical),
        ]
    );
    assert!(found[0].message.starts_with("CA expires in 400 days"));
    assert!(found[0].message.contains("not renewed by the operator"));
    assert!(
        found[3]
            .message
            .starts_with("certificate c expired 24h ago")
    );
}

#[test]
fn next_expiry_step_is_the_earliest_threshold_still_ahead() {
    let certs = [cert("a", days(40), true), cert("b", days(5), true)];
    assert_eq!(next_expiry_step(&certs, now()), Some(days(5)));
    assert_eq!(next_expiry_step(&certs[..1], now()), Some(days(10)));
    assert_eq!(next_expiry_step(&[cert("c", days(-1), true)], now()), None);
}

fn secret(name: &str, policy: &str, created: Timestamp) -> ProducedObject {
    ProducedObject {
        kind: "Secret".into(),
        name: name.into(),
        policy: Some(policy.into()),
        created: Some(created),
        ..ProducedObject::default()
    }
}

#[test]
fn credentials_are_graded_by_age_since_rotation() {
    let mut snap = snapshot(example(), tiered_pods());
    let mut backend = secret("traffic-kafka-backend", "traffic", days(-400));
    backend
        .annotations
        .insert(ANNOTATION_PASSWORD_SET_AT.into(), days(-100).to_string());
    let mut jwt = secret("api-jwt", "traffic", days(-400));
    jwt.rotated_at = Some(days(-40));
    snap.produced = vec![
        backend,
        secret("stream-processor-kafka", "traffic", days(-400)),
        secret("traffic-pg-traffic-admin", "traffic", days(-3)),
        // Same name, another policy: not this policy's credential.
        secret("traffic-pg-traffic-app", "other", days(-900)),
        jwt,
    ];
    let found: Vec<(String, Severity, String)> = audit(&[snap], now())
        .into_iter()
        .map(|f| (f.object, f.severity, f.message))
        .collect();
    let by_object: BTreeMap<&str, (Severity, &str)> = found
        .iter()
        .map(|(o, s, m)| (o.as_str(), (*s, m.as_str())))
        .collect();
    assert_eq!(by_object.len(), 4, "{found:#?}");
    let (sev, msg) = by_object["Secret/traffic-kafka-backend"];
    assert_eq!(sev, Severity::Low);
    assert!(msg.starts_with("Kafka user backend: password set 100 days ago"));
    let (sev, msg) = by_object["Secret/stream-processor-kafka"];
    assert_eq!(sev, Severity::Medium);
    assert!(msg.contains("Secret created (no password change recorded since) 400 days ago"));
    assert_eq!(
        by_object["Secret/traffic-pg-traffic-admin"].0,
        Severity::Info
    );
    let (sev, msg) = by_object["Secret/api-jwt"];
    assert_eq!(sev, Severity::High, "rotateEvery 720h, 40 days old");
    assert!(msg.contains("overdue"));
}

#[test]
fn conflicts_contests_and_missing_objects_are_drift_ready_is_not_double_counted() {
    let mut policy = example();
    let status = policy.status.as_mut().unwrap();
    status.conditions = vec![
        condition(READY, "False", "Conflict"),
        condition("TLSReady", "False", "Conflict"),
        condition("NetworkReady", "False", "Contested"),
        condition("KafkaReady", "False", "AdminSecretMissing"),
    ];
    status.managed_objects = vec![
        ManagedObject {
            kind: "NetworkPolicy".into(),
            name: "traffic-tier-data".into(),
            facet: "network".into(),
        },
        ManagedObject {
            kind: "Job".into(),
            name: "traffic-pg-roles-abc".into(),
            facet: "postgres".into(),
        },
        ManagedObject {
            kind: "ConfigMap".into(),
            name: "traffic-trust-bundle".into(),
            facet: "tls".into(),
        },
    ];
    let mut snap = snapshot(policy, tiered_pods());
    snap.produced = vec![ProducedObject {
        kind: "ConfigMap".into(),
        name: "traffic-trust-bundle".into(),
        policy: Some("traffic".into()),
        ..ProducedObject::default()
    }];
    let found: Vec<(FindingType, Severity, String)> = findings(&snap);
    assert_eq!(
        found,
        [
            (
                FindingType::Drift,
                Severity::High,
                "NetworkPolicy/traffic-tier-data".into()
            ),
            (
                FindingType::Drift,
                Severity::High,
                "SecurityPolicy/traffic".into()
            ),
            (
                FindingType::NotReady,
                Severity::High,
                "SecurityPolicy/traffic".into()
            ),
            (
                FindingType::Drift,
                Severity::Medium,
                "SecurityPolicy/traffic".into()
            ),
        ]
    );
}

#[test]
fn missing_or_stale_status_is_not_ready() {
    let mut policy = example();
    policy.status = None;
    let found = audit(&[snapshot(policy.clone(), tiered_pods())], now());
    assert_eq!(found[0].type_, FindingType::NotReady);
    assert!(found[0].message.starts_with("no status yet"));
    policy.status = example().status;
    policy.metadata.generation = Some(2);
    let found = audit(&[snapshot(policy, tiered_pods())], now());
    assert!(
        found[0]
            .message
            .starts_with("status describes generation 1 but the spec is at generation 2")
    );
}

#[test]
fn inconsistencies_are_findings_with_their_reason() {
    let mut policy = example();
    policy.spec.postgres.as_mut().unwrap().ssl_mode = crate::api::SslMode::Require;
    let found = audit(&[snapshot(policy, tiered_pods())], now());
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].type_, FindingType::Inconsistency);
    assert_eq!(found[0].severity, Severity::Medium);
    assert!(
        found[0]
            .message
            .starts_with("WeakSslMode: spec.postgres.sslMode:")
    );
}

#[test]
fn status_summary_counts_low_and_above_and_ignores_time_between_thresholds() {
    let mut policy = example();
    let network = policy.spec.network.as_mut().unwrap();
    let mut flow = network.flows[0].clone();
    flow.to = "data".into();
    network.flows.push(flow);
    let found = consistency::inconsistencies(&policy.spec);
    let status = SecurityPolicyStatus {
        certificates: vec![cert("ca", days(400), false), cert("a", days(20), true)],
        conditions: vec![
            condition(READY, "False", "Conflict"),
            condition("JWTReady", "False", "Conflict"),
        ],
        ..SecurityPolicyStatus::default()
    };
    let summary = status_summary(NS, "traffic", &status, &found, now());
    assert_eq!(
        summary,
        BTreeMap::from([
            ("CertificateExpiry".to_string(), 1),
            ("Drift".to_string(), 1),
            ("Inconsistency".to_string(), 1),
        ])
    );
    let an_hour_later = Timestamp::from_second(now().as_second() + 3600).unwrap();
    assert_eq!(
        status_summary(NS, "traffic", &status, &found, an_hour_later),
        summary
    );
    assert!(status_summary(NS, "traffic", &SecurityPolicyStatus::default(), &[], now()).is_empty());
}

#[test]
fn json_report_has_the_documented_shape_and_gates_on_fail_on() {
    let mut pods = tiered_pods();
    pods.push(pod("stray", None));
    let mut policy = example();
    policy.status.as_mut().unwrap().certificates = vec![cert("ca", days(3), false)];
    let findings = audit(&[snapshot(policy, pods)], now());
    let report = Report::new(
        vec![NS.into(), "empty".into()],
        findings.clone(),
        Severity::High,
    );
    assert!(report.failed());
    assert!(!Report::new(vec![NS.into()], findings.clone(), Severity::Critical).failed());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "schemaVersion": 1,
            "namespaces": ["empty", "traffic"],
            "failOn": "high",
            "summary": {"total": 2, "critical": 0, "high": 1, "medium": 0, "low": 1, "info": 0, "atOrAboveFailOn": 1},
            "findings": [
                {"type": "CertificateExpiry", "severity": "high", "namespace": "traffic", "policy": "traffic",
                 "object": "Secret/ca-tls", "message": findings[0].message},
                {"type": "UnisolatedPod", "severity": "low", "namespace": "traffic", "policy": null,
                 "object": "Pod/stray", "message": findings[1].message},
            ]
        })
    );
    let text = report.to_text();
    assert!(text.starts_with("Namespace empty: no findings\n"), "{text}");
    assert!(text.contains("Namespace traffic: 2 finding(s)"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with("low       UnisolatedPod")
                && l.contains("Pod/stray")),
        "{text}"
    );
    assert!(text.ends_with(
        "2 finding(s): 0 critical, 1 high, 0 medium, 1 low, 0 info; 1 at or above --fail-on high\n"
    ));
}

#[test]
fn password_set_at_moves_only_when_a_password_is_generated() {
    let later = days(3);
    assert_eq!(
        password_set_at(true, None, now()).as_deref(),
        Some("2026-06-01T00:00:00Z")
    );
    assert_eq!(
        password_set_at(false, Some("2026-06-01T00:00:00Z"), later).as_deref(),
        Some("2026-06-01T00:00:00Z"),
        "a reconcile that generates nothing keeps the recorded time"
    );
    assert_eq!(
        password_set_at(false, None, later),
        None,
        "nothing invented"
    );
    assert_eq!(
        password_set_at(true, Some("2026-06-01T00:00:00Z"), later).as_deref(),
        Some("2026-06-04T00:00:00Z")
    );
}
