//! Shared helpers of the integration tests: a real control plane per test binary, an operator
//! running in-process against it, one namespace per test.

#![allow(dead_code)]

pub mod chart;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use bulwark::controller::{self, Settings};
use bulwark::telemetry::Metrics;
use bulwark_testenv::ControlPlane;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use tokio::sync::{OnceCell, oneshot};

static CRDS: OnceCell<()> = OnceCell::const_new();

/// Admin client of this test binary's control plane, with the CRD installed.
pub async fn client() -> Client {
    let cp = ControlPlane::shared();
    CRDS.get_or_init(|| async {
        cp.install_crds(&[SecurityPolicy::crd()])
            .await
            .expect("install CRD");
    })
    .await;
    cp.client().await
}

/// Creates a fresh namespace named after the test.
pub async fn namespace(client: &Client, name: &str) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name.to_string()
}

/// An operator running in this process, watching one namespace.
pub struct Operator {
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub fn start(client: &Client, namespace: &str) -> Operator {
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let settings = Settings {
            namespaces: vec![namespace.to_string()],
            ..Settings::default()
        };
        let task = tokio::spawn(controller::run(
            client.clone(),
            settings,
            metrics.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Operator {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("operator stops within 30 s")
            .expect("operator task does not panic");
    }

    /// Waits until this operator has reconciled successfully at least once.
    pub async fn wait_reconciled(&self) {
        eventually(
            Duration::from_secs(30),
            "the operator to reconcile",
            || async { (self.reconciles("success") >= 1).then_some(()) },
        )
        .await;
    }

    /// How often `facet` (its label: tls, network ...) was rebuilt.
    pub fn facet_reconciles(&self, facet: &str) -> u64 {
        metric_value(
            &self.metrics.encode(),
            "bulwark_facet_reconciles_total",
            &format!("facet=\"{facet}\""),
        )
    }

    /// Reconciles that rebuilt only the facets whose objects changed.
    pub fn partial_reconciles(&self) -> u64 {
        metric_value(
            &self.metrics.encode(),
            "bulwark_reconciles_partial_total",
            "",
        )
    }

    /// Total reconciles that ended with `result`.
    pub fn reconciles(&self, result: &str) -> u64 {
        metric_value(
            &self.metrics.encode(),
            "bulwark_reconciles_total",
            &format!("result=\"{result}\""),
        )
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn metric_value(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// Reads the example policy, moved into `namespace`, without its PostgreSQL and Kafka sections:
/// their Jobs need a database or a broker and a stand-in kubelet, which `tests/postgres.rs` and
/// `tests/kafka.rs` provide.
pub fn example_policy(namespace: &str) -> SecurityPolicy {
    let mut policy = full_example_policy(namespace);
    policy.spec.postgres = None;
    policy.spec.kafka = None;
    policy
}

/// The example policy exactly as shipped, moved into `namespace`.
pub fn full_example_policy(namespace: &str) -> SecurityPolicy {
    let yaml = include_str!("../../deploy/examples/traffic-prediction.yaml");
    let mut policy: SecurityPolicy = serde_yaml::from_str(yaml).expect("example parses");
    policy.metadata.namespace = Some(namespace.to_string());
    policy
}

/// Adds a DNS name to the named certificate of the policy's TLS section.
pub fn add_dns_name(policy: &mut SecurityPolicy, certificate: &str, dns_name: &str) {
    let cert = policy
        .spec
        .tls
        .as_mut()
        .and_then(|t| t.certificates.iter_mut().find(|c| c.name == certificate))
        .unwrap_or_else(|| panic!("no certificate {certificate} in the policy"));
    cert.dns_names.push(bulwark::api::DnsName(dns_name.into()));
}

/// Data of a Secret, by key.
pub async fn secret_bytes(
    client: &Client,
    ns: &str,
    name: &str,
) -> std::collections::BTreeMap<String, Vec<u8>> {
    let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    api.get(name)
        .await
        .unwrap()
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect()
}

/// Applies `policy` with server-side apply, as `kubectl apply --server-side` would.
pub async fn apply_policy(
    client: &Client,
    policy: &SecurityPolicy,
) -> Result<SecurityPolicy, kube::Error> {
    let api: Api<SecurityPolicy> = Api::namespaced(
        client.clone(),
        policy.metadata.namespace.as_deref().unwrap(),
    );
    let mut body = serde_json::to_value(policy).unwrap();
    body["apiVersion"] = "bulwark.dev/v1alpha1".into();
    body["kind"] = "SecurityPolicy".into();
    body["metadata"] =
        serde_json::json!({"name": policy.metadata.name, "namespace": policy.metadata.namespace});
    if let Some(status) = body.as_object_mut() {
        status.remove("status");
    }
    api.patch(
        policy.metadata.name.as_deref().unwrap(),
        &PatchParams::apply("test-user").force(),
        &Patch::Apply(&body),
    )
    .await
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Condition `type_` of the named policy, as (status, reason, message).
pub async fn condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let policy = api.get_opt(name).await.ok()??;
    let status = policy.status?;
    if status.observed_generation != policy.metadata.generation {
        return None;
    }
    status
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status, c.reason, c.message))
}

/// Waits until the policy's condition has `status`; returns (reason, message).
pub async fn wait_condition(
    client: &Client,
    ns: &str,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    eventually(
        Duration::from_secs(60),
        &format!("{type_}={status} on {ns}/{name}"),
        || async {
            condition(client, ns, name, type_)
                .await
                .filter(|(s, _, _)| s == status)
                .map(|(_, r, m)| (r, m))
        },
    )
    .await
}

/// Write requests (create/update/patch/delete) the API server audited in `namespace` so far.
pub fn audited_writes(namespace: &str) -> Vec<String> {
    let log = std::fs::read_to_string(ControlPlane::shared().audit_log_path()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .map(|e| {
            format!(
                "{} {}/{} {}",
                e["verb"].as_str().unwrap_or_default(),
                e["objectRef"]["resource"].as_str().unwrap_or_default(),
                e["objectRef"]["name"].as_str().unwrap_or_default(),
                e["objectRef"]["subresource"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// A Secret's text entries as strings; binary ones (keystores) are left out, and no value ever
/// reaches a panic message.
pub async fn secret_data(client: &kube::Client, ns: &str, name: &str) -> BTreeMap<String, String> {
    secret_bytes(client, ns, name)
        .await
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
        .collect()
}

/// Runs the Job's container command here, as a kubelet would there, and finishes its pod.
/// Returns whether the command succeeded.
pub async fn play_kubelet(client: &kube::Client, ns: &str, job: &Job, scratch: &Path) -> bool {
    let spec = job.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let container = &spec.containers[0];
    let mut env: Vec<(String, String)> = Vec::new();
    // Volumes become directories under `scratch`; paths in env are rewritten to match.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .unwrap();
        let dir = scratch.join(mount.name.as_str());
        std::fs::create_dir_all(&dir).unwrap();
        let files: BTreeMap<String, String> = if let Some(s) = &volume.secret {
            secret_data(client, ns, s.secret_name.as_deref().unwrap()).await
        } else if let Some(c) = &volume.config_map {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            api.get(&c.name).await.unwrap().data.unwrap_or_default()
        } else {
            panic!("unexpected volume {:?}", volume.name)
        };
        for (k, v) in files {
            std::fs::write(dir.join(k), v).unwrap();
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            let mut v = v.clone();
            for (path, dir) in &mounts {
                if let Some(rest) = v.strip_prefix(path.as_str()) {
                    v = format!("{}{rest}", dir.display());
                }
            }
            v
        } else {
            let key_ref = var
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            secret_data(client, ns, &key_ref.name).await[&key_ref.key].clone()
        };
        env.push((var.name.clone(), value));
    }
    let mut args = container.command.clone().unwrap_or_default();
    args.extend(container.args.clone().unwrap_or_default());
    assert_eq!(args[0], "bulwark", "the Job runs the operator binary");
    // As the kubelet does with terminationMessagePath, the file becomes the termination message.
    let termination_log = scratch.join("termination-log");
    std::fs::write(&termination_log, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(&args[1..])
        .env_clear()
        .envs(env)
        .env("BULWARK_TERMINATION_LOG", &termination_log)
        .output()
        .unwrap();
    let termination_message = std::fs::read_to_string(&termination_log).unwrap();
    // What the pod's log would hold, kept for tests that scan logs.
    let mut log = out.stdout.clone();
    log.extend_from_slice(&out.stderr);
    std::fs::write(scratch.join("pod.log"), log).unwrap();
    let succeeded = out.status.success();
    if !succeeded {
        eprintln!(
            "job command failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("job-name={}", job.name_any());
    // After a failed attempt the Job controller makes a new pod (with backoff): take an unfinished one.
    let pod = eventually(
        Duration::from_secs(60),
        "an unfinished pod of the Job",
        || async {
            pods.list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| {
                    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                    !matches!(phase, Some("Succeeded" | "Failed"))
                        && p.metadata.deletion_timestamp.is_none()
                })
        },
    )
    .await;
    let now = jiff::Timestamp::now().to_string();
    let status = serde_json::json!({"status": {
        "phase": if succeeded { "Succeeded" } else { "Failed" },
        "containerStatuses": [{
            "name": container.name, "image": container.image, "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": if succeeded { 0 } else { 1 }, "reason": if succeeded { "Completed" } else { "Error" }, "message": termination_message,
                "startedAt": now, "finishedAt": now}}
        }]
    }});
    pods.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
    succeeded
}

/// The real servers behind the example's data tier, kept alive while the value lives.
pub struct DataTier {
    pub postgres: bulwark_testenv::Postgres,
    pub kafka: bulwark_testenv::kafka::Kafka,
}

/// Takes the full example (data tier included) to Ready in `ns`: a PostgreSQL and a Kafka broker
/// serving the policy's own certificates, the admin Secrets, and the role and user Jobs run here
/// as a kubelet would run them. An operator must be running.
pub async fn full_example_to_ready(client: &Client, ns: &str, scratch: &Path) -> DataTier {
    use bulwark_testenv::kafka::{Kafka, KafkaOptions, KafkaTls, free_port};
    use bulwark_testenv::{PgTls, Postgres};
    use k8s_openapi::api::core::v1::Secret;

    let kafka_port = free_port();
    let mut policy = full_example_policy(ns);
    add_dns_name(&mut policy, "postgres", "localhost");
    add_dns_name(&mut policy, "kafka", "localhost");
    policy.spec.kafka.as_mut().unwrap().bootstrap_servers = format!("localhost:{kafka_port}");
    apply_policy(client, &policy)
        .await
        .expect("the example is accepted");
    let pem = |data: &BTreeMap<String, Vec<u8>>, key: &str| {
        String::from_utf8(data[key].clone()).expect("PEM is text")
    };
    let tls_of = |name: &'static str| async move {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        eventually(Duration::from_secs(30), name, || async {
            let data = secrets.get_opt(name).await.ok()??.data?;
            data.contains_key("tls.key").then(|| {
                data.into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect::<BTreeMap<_, _>>()
            })
        })
        .await
    };
    let pg_tls = tls_of("postgres-tls").await;
    let postgres = Postgres::start(Some(PgTls {
        cert_pem: pem(&pg_tls, "tls.crt"),
        key_pem: pem(&pg_tls, "tls.key"),
        ca_pem: pem(&pg_tls, "ca.crt"),
    }))
    .expect("PostgreSQL starts");
    postgres
        .psql("postgres", "CREATE DATABASE traffic")
        .expect("create database");
    let kafka_tls = tls_of("kafka-tls").await;
    let kafka = Kafka::start(KafkaOptions {
        port: kafka_port,
        ..KafkaOptions::new(KafkaTls {
            cert_chain_pem: pem(&kafka_tls, "tls.crt"),
            key_pem: pem(&kafka_tls, "tls.key"),
            ca_pem: pem(&kafka_tls, "ca.crt"),
        })
    })
    .expect("Kafka starts");
    let pg = policy.spec.postgres.as_mut().unwrap();
    pg.host = "localhost".into();
    pg.port = i32::from(postgres.port());
    apply_policy(client, &policy).await.unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for (name, user, password) in [
        (
            "postgres-superuser",
            postgres.superuser(),
            postgres.superuser_password(),
        ),
        ("kafka-admin", kafka.admin_user(), kafka.admin_password()),
    ] {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([
                ("username".to_string(), user.to_string()),
                ("password".to_string(), password.to_string()),
            ])),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
    for facet in ["postgres", "kafka"] {
        let job = eventually(Duration::from_secs(60), &format!("the {facet} Job"), || {
            current_job(client, ns, facet)
        })
        .await;
        assert!(
            play_kubelet(client, ns, &job, &scratch.join(facet)).await,
            "the {facet} Job succeeds"
        );
    }
    let (reason, message) = wait_condition(client, ns, "traffic", "Ready", "True").await;
    assert_eq!(reason, "Reconciled", "{message}");
    DataTier { postgres, kafka }
}

/// The `facet` Job that the status of policy `traffic` names: the one of the current plan.
pub async fn current_job(client: &Client, ns: &str, facet: &str) -> Option<Job> {
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let status = policies.get("traffic").await.ok()?.status?;
    let current = status
        .managed_objects
        .iter()
        .find(|o| o.kind == "Job" && o.facet == facet)?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.get_opt(&current.name).await.ok()?
}

/// `openssl verify` of each leaf Secret of the full example against `bundle`, as a client
/// holding that bundle would; the error names the leaf that does not verify.
pub async fn leaves_verify_against(
    client: &kube::Client,
    ns: &str,
    bundle: &str,
    dir: &Path,
) -> Result<(), String> {
    let bundle_file = dir.join("bundle.pem");
    std::fs::write(&bundle_file, bundle).unwrap();
    for leaf in ["kafka-tls", "postgres-tls", "api-tls"] {
        let data = secret_bytes(client, ns, leaf).await;
        let leaf_file = dir.join(format!("{leaf}.pem"));
        std::fs::write(&leaf_file, &data["tls.crt"]).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(&bundle_file)
            .arg(&leaf_file)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!("{leaf}: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(())
}
