//! The Kafka facet end to end: the operator produces user Secrets, salted credentials and a
//! registration Job; the test plays the kubelet (runs the Job's command locally with the env and
//! mounts resolved from the API, then finishes its pod) against a real Kafka 4 KRaft broker that
//! serves the policy's own `kafka` certificate. Clients are Kafka's own Java clients, configured
//! with nothing but a user Secret's `client.properties`.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark::api::{SaslMechanism, SecurityPolicy};
use bulwark_testenv::kafka::{self, ClientOutcome, Kafka, KafkaOptions, KafkaTls};
use bulwark_testenv::tls::test_pki;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use support::*;

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "admin-secret";

async fn user_jobs(client: &kube::Client, ns: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("bulwark.dev/facet=kafka"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .collect()
}

async fn new_job(client: &kube::Client, ns: &str, not: &[String]) -> Job {
    eventually(Duration::from_secs(30), "a new user Job", || async {
        user_jobs(client, ns)
            .await
            .into_iter()
            .find(|j| !not.contains(&j.name_any()))
    })
    .await
}

async fn create_admin_secret(client: &kube::Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("kafka-admin".into()),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([
            ("username".to_string(), ADMIN_USER.to_string()),
            ("password".to_string(), ADMIN_PASSWORD.to_string()),
        ])),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The example policy (no PostgreSQL) with its brokers at `localhost:<port>`, which the `kafka`
/// certificate then covers.
fn policy_for(ns: &str, port: u16, mechanism: SaslMechanism) -> SecurityPolicy {
    let mut policy = full_example_policy(ns);
    policy.spec.postgres = None;
    add_dns_name(&mut policy, "kafka", "localhost");
    let kafka = policy.spec.kafka.as_mut().unwrap();
    kafka.bootstrap_servers = format!("localhost:{port}");
    kafka.mechanism = mechanism;
    policy
}

/// The policy's own `kafka` certificate, as the broker loads it.
async fn broker_tls(client: &kube::Client, ns: &str) -> KafkaTls {
    let tls = eventually(Duration::from_secs(30), "the kafka-tls Secret", || async {
        let data = secret_bytes(client, ns, "kafka-tls").await;
        data.contains_key("tls.key").then_some(data)
    })
    .await;
    let pem = |key: &str| String::from_utf8(tls[key].clone()).expect("PEM is text");
    KafkaTls {
        cert_chain_pem: pem("tls.crt"),
        key_pem: pem("tls.key"),
        ca_pem: pem("ca.crt"),
    }
}

/// Writes a user Secret's `client.properties` to a file, exactly as stored.
fn properties_file(dir: &Path, name: &str, secret: &BTreeMap<String, String>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(format!("{name}.properties"));
    std::fs::write(&path, &secret["client.properties"]).unwrap();
    path
}

fn roundtrip(props: &Path, topic: &str, overrides: &[(&str, &str)]) -> ClientOutcome {
    kafka::roundtrip(props, topic, overrides).expect("the Java client runs")
}

fn assert_ok(outcome: ClientOutcome, what: &str) {
    assert!(matches!(outcome, ClientOutcome::Ok), "{what}: {outcome:?}");
}

fn assert_auth_failed(outcome: ClientOutcome, what: &str) {
    assert!(
        matches!(outcome, ClientOutcome::AuthFailed(_)),
        "{what}: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_registered_by_the_job_and_rotate_on_request() {
    let client = client().await;
    let ns = namespace(&client, "kafka-scram").await;
    let scratch = tempdir("kafka-scram");
    let operator = Operator::start(&client, &ns);
    let port = kafka::free_port();
    let mut policy = policy_for(&ns, port, SaslMechanism::ScramSha512);
    apply_policy(&client, &policy).await.unwrap();

    // No admin Secret yet: a clear condition, no Job, and the user Secrets already exist.
    let (reason, message) = wait_condition(&client, &ns, "traffic", "KafkaReady", "False").await;
    assert_eq!(reason, "AdminSecretMissing", "{message}");
    assert!(message.contains("spec.kafka.adminSecretRef"), "{message}");
    assert!(user_jobs(&client, &ns).await.is_empty());
    let backend = secret_data(&client, &ns, "traffic-kafka-backend").await;
    let stream = secret_data(&client, &ns, "stream-processor-kafka").await;
    for key in [
        "username",
        "password",
        "sasl.mechanism",
        "sasl.jaas.config",
        "bootstrap.servers",
        "ca.crt",
        "client.properties",
    ] {
        assert!(backend.contains_key(key), "user Secret lacks {key}");
    }
    let scram = secret_data(&client, &ns, "traffic-kafka-scram").await;
    assert!(!scram["credentials.json"].contains(&backend["password"]));

    // With the admin Secret, the Job appears; run before the broker exists it cannot connect.
    create_admin_secret(&client, &ns).await;
    let job = new_job(&client, &ns, &[]).await;
    let job_text = serde_json::to_string(&job).unwrap();
    for secret in [&backend, &stream] {
        assert!(
            !job_text.contains(&secret["password"]),
            "no plaintext in the Job"
        );
    }
    assert!(!play_kubelet(&client, &ns, &job, &scratch.join("unreachable")).await);
    let (reason, message) = wait_condition(&client, &ns, "traffic", "KafkaReady", "False").await;
    let (reason, message) = if reason == "ConnectFailed" {
        (reason, message)
    } else {
        eventually(
            Duration::from_secs(30),
            "KafkaReady ConnectFailed",
            || async {
                condition(&client, &ns, "traffic", "KafkaReady")
                    .await
                    .filter(|(_, r, _)| r == "ConnectFailed")
                    .map(|(_, r, m)| (r, m))
            },
        )
        .await
    };
    assert_eq!(reason, "ConnectFailed", "{message}");
    assert!(!message.contains(&backend["password"]));

    // The broker comes up with the policy's certificate; the Job controller's retry succeeds.
    let broker = Kafka::start(KafkaOptions {
        port,
        admin_user: ADMIN_USER.into(),
        admin_password: ADMIN_PASSWORD.into(),
        ..KafkaOptions::new(broker_tls(&client, &ns).await)
    })
    .unwrap();
    assert!(play_kubelet(&client, &ns, &job, &scratch.join("run1")).await);
    let (reason, message) = wait_condition(&client, &ns, "traffic", "KafkaReady", "True").await;
    assert_eq!(reason, "UsersRegistered", "{message}");
    assert_eq!(user_jobs(&client, &ns).await.len(), 1);

    // Each user produces and consumes with nothing but its client.properties.
    let props = scratch.join("props");
    let backend_props = properties_file(&props, "backend-1", &backend);
    let stream_props = properties_file(&props, "stream-1", &stream);
    assert_ok(roundtrip(&backend_props, "speeds", &[]), "backend");
    assert_ok(roundtrip(&stream_props, "speeds", &[]), "stream-processor");

    // A wrong password, a client trusting another CA, a plaintext client: all refused.
    let wrong_jaas = backend["sasl.jaas.config"].replace(&backend["password"], "wrong-password");
    assert_auth_failed(
        roundtrip(
            &backend_props,
            "speeds",
            &[("sasl.jaas.config", &wrong_jaas)],
        ),
        "wrong password",
    );
    let other = test_pki(&["localhost"], &[]);
    let outcome = roundtrip(
        &backend_props,
        "speeds",
        &[("ssl.truststore.certificates", &other.ca_pem)],
    );
    assert!(
        matches!(outcome, ClientOutcome::TlsFailed(_)),
        "other CA: {outcome:?}"
    );
    let outcome = roundtrip(
        &backend_props,
        "speeds",
        &[("security.protocol", "PLAINTEXT")],
    );
    assert!(
        !matches!(outcome, ClientOutcome::Ok),
        "plaintext on the SASL_SSL port: {outcome:?}"
    );

    // Restart: no new Job, no credential changed.
    let before_scram = secret_bytes(&client, &ns, "traffic-kafka-scram").await;
    operator.stop().await;
    let operator = Operator::start(&client, &ns);
    operator.wait_reconciled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let jobs = user_jobs(&client, &ns).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].name_any(), job.name_any(), "same plan, same Job");
    assert_eq!(
        secret_bytes(&client, &ns, "traffic-kafka-scram").await,
        before_scram
    );
    assert_eq!(
        secret_data(&client, &ns, "traffic-kafka-backend").await,
        backend
    );

    // Rotate: a new Job; the new password works, the old one is refused.
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "kafka-1"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rotated = new_job(&client, &ns, &[job.name_any()]).await;
    assert!(play_kubelet(&client, &ns, &rotated, &scratch.join("run2")).await);
    wait_condition(&client, &ns, "traffic", "KafkaReady", "True").await;
    let new_backend = secret_data(&client, &ns, "traffic-kafka-backend").await;
    assert_ne!(new_backend["password"], backend["password"]);
    let new_props = properties_file(&props, "backend-2", &new_backend);
    assert_ok(roundtrip(&new_props, "speeds", &[]), "rotated password");
    assert_auth_failed(
        roundtrip(&backend_props, "speeds", &[]),
        "password before rotation",
    );
    eventually(
        Duration::from_secs(30),
        "the old Job to be cleaned up",
        || async { (user_jobs(&client, &ns).await.len() == 1).then_some(()) },
    )
    .await;

    // A user leaves the spec: its credential is deleted on the broker, its Secret is retained.
    let stream_now = secret_data(&client, &ns, "stream-processor-kafka").await;
    let stream_props = properties_file(&props, "stream-2", &stream_now);
    assert_ok(roundtrip(&stream_props, "speeds", &[]), "stream-processor");
    policy.metadata.annotations = Some(BTreeMap::from([(
        "bulwark.dev/rotate".to_string(),
        "kafka-1".to_string(),
    )]));
    policy
        .spec
        .kafka
        .as_mut()
        .unwrap()
        .users
        .retain(|u| u.name != "stream-processor");
    apply_policy(&client, &policy).await.unwrap();
    let current = user_jobs(&client, &ns).await[0].name_any();
    let removal = new_job(&client, &ns, &[current]).await;
    assert!(play_kubelet(&client, &ns, &removal, &scratch.join("run3")).await);
    let (_, message) = wait_condition(&client, &ns, "traffic", "KafkaReady", "True").await;
    assert!(message.contains("1 removed credential"), "{message}");
    assert_auth_failed(roundtrip(&stream_props, "speeds", &[]), "removed user");
    assert_ok(roundtrip(&new_props, "speeds", &[]), "remaining user");
    assert_eq!(
        secret_data(&client, &ns, "stream-processor-kafka").await,
        stream_now,
        "deletionPolicy Retain keeps the Secret"
    );
    assert_eq!(
        secret_data(&client, &ns, "traffic-kafka-backend").await,
        new_backend
    );

    // A wrong admin password: the attempt fails, the condition says why, no password shown.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"stringData": {"password": "not-the-admin-password"}});
    secrets
        .patch(
            "kafka-admin",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let patch = serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "kafka-2"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let current = user_jobs(&client, &ns).await[0].name_any();
    let refused = new_job(&client, &ns, &[current]).await;
    assert!(!play_kubelet(&client, &ns, &refused, &scratch.join("run4")).await);
    let (reason, message) = eventually(
        Duration::from_secs(30),
        "KafkaReady AdminLoginFailed",
        || async {
            condition(&client, &ns, "traffic", "KafkaReady")
                .await
                .filter(|(_, r, _)| r == "AdminLoginFailed")
                .map(|(_, r, m)| (r, m))
        },
    )
    .await;
    assert_eq!(reason, "AdminLoginFailed");
    assert!(!message.contains("not-the-admin-password"), "{message}");
    let newest = secret_data(&client, &ns, "traffic-kafka-backend").await;
    assert_eq!(
        secret_data(&client, &ns, "traffic-kafka-backend").await["password"],
        newest["password"],
        "a failed registration regenerates nothing"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        user_jobs(&client, &ns).await.len(),
        1,
        "the operator does not retry on its own"
    );
    drop(broker);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_users_log_in_with_the_published_broker_jaas() {
    let client = client().await;
    let ns = namespace(&client, "kafka-plain").await;
    let scratch = tempdir("kafka-plain");
    let operator = Operator::start(&client, &ns);
    let port = kafka::free_port();
    let policy = policy_for(&ns, port, SaslMechanism::Plain);
    apply_policy(&client, &policy).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "KafkaReady", "True").await;
    assert_eq!(reason, "JaasPublished", "{message}");
    assert!(
        user_jobs(&client, &ns).await.is_empty(),
        "PLAIN needs no Job"
    );

    let jaas = secret_data(&client, &ns, "traffic-kafka-jaas").await;
    let broker = Kafka::start(KafkaOptions {
        port,
        sasl_mechanisms: vec!["PLAIN".into()],
        extra_properties: vec![(
            "listener.name.sasl_ssl.plain.sasl.jaas.config".into(),
            jaas["sasl.jaas.config"].clone(),
        )],
        ..KafkaOptions::new(broker_tls(&client, &ns).await)
    })
    .unwrap();
    let backend = secret_data(&client, &ns, "traffic-kafka-backend").await;
    let stream = secret_data(&client, &ns, "stream-processor-kafka").await;
    let props = scratch.join("props");
    assert_ok(
        roundtrip(&properties_file(&props, "backend", &backend), "plain", &[]),
        "backend",
    );
    assert_ok(
        roundtrip(&properties_file(&props, "stream", &stream), "plain", &[]),
        "stream-processor",
    );
    let wrong_jaas = backend["sasl.jaas.config"].replace(&backend["password"], "wrong-password");
    assert_auth_failed(
        roundtrip(
            &properties_file(&props, "backend", &backend),
            "plain",
            &[("sasl.jaas.config", &wrong_jaas)],
        ),
        "wrong password",
    );
    drop(broker);
    operator.stop().await;
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
