//! Chaos scenarios against the real `bulwark run` binary: a restart storm, SIGKILL during the
//! first reconcile, an API server outage, leader failover and namespace deletion.
//!
//! Quick by default; `BULWARK_CHAOS=full` runs the restart storm and the kill trials at full size
//! (`BULWARK_CHAOS_SEED=<n>` replays a run). Every scenario prints its figures to stderr as
//! `CHAOS <scenario> <key>=<value> ...` lines. Operator logs (JSON, `RUST_LOG=info` unless
//! `BULWARK_CHAOS_RUST_LOG` says otherwise) stay in `target/tmp/chaos-<scenario>.log`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header::USER_AGENT};
use bulwark::api::SecurityPolicy;
use bulwark::kube_io::{LABEL_FACET, LABEL_POLICY, managed_selector};
use bulwark_testenv::ControlPlane;
use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::KubeConfigOptions;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use sha2::{Digest, Sha256};
use support::{apply_policy, example_policy, full_example_policy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener as TokioListener, TcpStream};
use tokio::sync::RwLock;

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
/// User agent of this test's own requests, so the audit log tells them from the operator's.
const TEST_AGENT: &str = "bulwark-chaos-test";
/// The operator's Lease (see `controller::leader`): 15 s, renewed every 2 s.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const LEASE_RETRY: Duration = Duration::from_secs(2);

/// The outage scenario stops the shared API server: it runs alone, the others side by side.
static API_SERVER: RwLock<()> = RwLock::const_new(());

fn full() -> bool {
    std::env::var("BULWARK_CHAOS").is_ok_and(|v| v == "full")
}

fn report(scenario: &str, figures: &[(&str, String)]) {
    let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
    eprintln!("CHAOS {scenario} {}", figures.join(" "));
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

/// xorshift64*: enough randomness for timings, and a seed that can be replayed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("BULWARK_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        Rng(seed.max(1))
    }

    fn seed(&self) -> u64 {
        self.0
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Admin client of the shared control plane (CRD installed) whose requests carry [`TEST_AGENT`].
async fn test_client() -> Client {
    support::client().await;
    let cp = ControlPlane::shared();
    let mut config =
        kube::Config::from_custom_kubeconfig(cp.kubeconfig(), &KubeConfigOptions::default())
            .await
            .unwrap();
    config
        .headers
        .push((USER_AGENT, HeaderValue::from_static(TEST_AGENT)));
    Client::try_from(config).unwrap()
}

/// Where an operator's log goes; kept after the run (`target/tmp`).
fn log_path(scenario: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{scenario}.log"));
    File::create(&path).unwrap();
    path
}

/// A scratch file that goes away with the control plane (it may hold credentials).
fn scratch_file(name: &str) -> PathBuf {
    let dir = ControlPlane::shared().state_dir().join("chaos");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `bulwark run` as a child process, logging JSON lines to a file; SIGKILLed when dropped.
struct OperatorProcess {
    child: Child,
    metrics_port: u16,
}

impl OperatorProcess {
    /// Watches `ns`; with `leader` (the POD_NAME), takes part in leader election in `ns`.
    fn start(kubeconfig: &Path, ns: &str, log: &Path, leader: Option<&str>) -> OperatorProcess {
        let metrics_port = free_port();
        let log = File::options().append(true).open(log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--namespace", ns, "--log-format", "json"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics_port}"));
        if let Some(pod) = leader {
            cmd.args(["--leader-elect", "--leader-election-namespace", ns])
                .env("POD_NAME", pod);
        }
        cmd.env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("BULWARK_CHAOS_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("BULWARK_NAMESPACES")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = bulwark_testenv::spawn_with_parent(&mut cmd).unwrap();
        OperatorProcess {
            child,
            metrics_port,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes stops a pod; SIGKILL if it has not exited after 30 s.
    async fn terminate(&mut self) {
        // Once reaped, the pid may belong to someone else.
        if !self.running() {
            return;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.running() {
            if Instant::now() >= deadline {
                eprintln!("operator {} ignored SIGTERM for 30 s", self.pid());
                self.kill();
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    }

    async fn metrics(&self) -> Option<String> {
        match self.get("/metrics").await? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    async fn successful_reconciles(&self) -> u64 {
        let body = self.metrics().await.unwrap_or_default();
        metric_sum(&body, "bulwark_reconciles_total", "result=\"success\"")
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `example_policy` (network, TLS, JWT) named `p-<i>`, with the PostgreSQL and Kafka sections
/// of the full example when `data_tier`. Secret and JWT key names get the policy name as prefix:
/// the example names them for one policy per namespace, and a second policy would find them
/// taken (Conflict).
fn chaos_policy(ns: &str, i: usize, data_tier: bool) -> SecurityPolicy {
    let name = format!("p-{i}");
    let mut policy = if data_tier {
        full_example_policy(ns)
    } else {
        example_policy(ns)
    };
    policy.metadata.name = Some(name.clone());
    let prefixed = |s: &str| format!("{name}-{s}");
    if let Some(tls) = policy.spec.tls.as_mut() {
        if let Some(ca) = tls.ca.as_mut() {
            ca.secret_name = ca.secret_name.as_deref().map(prefixed);
        }
        for cert in &mut tls.certificates {
            cert.secret_name = prefixed(&cert.secret_name);
        }
    }
    if let Some(kafka) = policy.spec.kafka.as_mut() {
        for user in &mut kafka.users {
            user.secret_name = user.secret_name.as_deref().map(prefixed);
        }
    }
    if let Some(pg) = policy.spec.postgres.as_mut() {
        for role in &mut pg.roles {
            role.secret_name = role.secret_name.as_deref().map(prefixed);
        }
    }
    for key in policy.spec.jwt.iter_mut().flatten() {
        key.name = prefixed(&key.name);
        key.secret_name = prefixed(&key.secret_name);
    }
    policy
}

async fn create_namespace(client: &Client, name: &str) -> String {
    support::namespace(client, name).await
}

async fn apply_policies(client: &Client, ns: &str, n: usize, data_tier: bool) {
    for i in 0..n {
        apply_policy(client, &chaos_policy(ns, i, data_tier))
            .await
            .unwrap_or_else(|e| panic!("apply p-{i}: {e}"));
    }
}

/// The admin Secrets the data tier's Jobs would log in with; dummy values, as no database runs.
async fn create_admin_secrets(client: &Client, ns: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    for name in ["kafka-admin", "postgres-superuser"] {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            string_data: Some(BTreeMap::from([
                ("username".to_string(), "admin".to_string()),
                ("password".to_string(), "not-a-real-password".to_string()),
            ])),
            ..Secret::default()
        };
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
    }
}

/// Aborts the task when dropped.
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stands in for the kubelet of the data tier's Jobs: marks every pod of a Job labelled with a
/// facet as Succeeded, without running anything (there is no database or broker here; what is
/// tested is the operator, not the Job).
fn finish_provisioning_jobs(client: &Client, ns: &str) -> Background {
    let client = client.clone();
    let ns = ns.to_string();
    Background(tokio::spawn(async move {
        loop {
            if let Err(e) = finish_job_pods(&client, &ns).await {
                eprintln!("job finisher in {ns}: {e}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }))
}

async fn finish_job_pods(client: &Client, ns: &str) -> Result<(), kube::Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let facet_jobs: BTreeSet<String> = jobs
        .list_metadata(&ListParams::default().labels(LABEL_FACET))
        .await?
        .items
        .iter()
        .map(|j| j.name_any())
        .collect();
    if facet_jobs.is_empty() {
        return Ok(());
    }
    for pod in pods
        .list(&ListParams::default().labels("batch.kubernetes.io/job-name"))
        .await?
        .items
    {
        let job = pod
            .labels()
            .get("batch.kubernetes.io/job-name")
            .cloned()
            .unwrap_or_default();
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if !facet_jobs.contains(&job)
            || matches!(phase, Some("Succeeded" | "Failed"))
            || pod.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let now = jiff::Timestamp::now().to_string();
        let statuses: Vec<serde_json::Value> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .map(|c| {
                json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}
                })
            })
            .collect();
        let status = json!({"status": {"phase": "Succeeded", "containerStatuses": statuses}});
        pods.patch_status(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await?;
    }
    Ok(())
}

fn is_ready(policy: &SecurityPolicy) -> bool {
    let Some(status) = &policy.status else {
        return false;
    };
    status.observed_generation == policy.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn not_ready_summary(policy: &SecurityPolicy) -> String {
    let conditions: Vec<String> = policy
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .filter(|c| c.status != "True")
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect();
    format!("{}: {}", policy.name_any(), conditions.join("; "))
}

/// Waits until `n` policies exist in `ns` and all are Ready for their current generation.
async fn wait_all_ready(client: &Client, ns: &str, n: usize, timeout: Duration) -> Duration {
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let pending = match api.list(&ListParams::default()).await {
            Ok(list) => {
                let pending: Vec<String> = list
                    .items
                    .iter()
                    .filter(|p| !is_ready(p))
                    .map(not_ready_summary)
                    .collect();
                if list.items.len() == n && pending.is_empty() {
                    return started.elapsed();
                }
                pending
            }
            Err(e) => vec![format!("list: {e}")],
        };
        assert!(
            started.elapsed() < timeout,
            "not all {n} policies in {ns} Ready after {timeout:?}; not ready:\n{}",
            pending.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ready_timeout(policies: usize) -> Duration {
    Duration::from_secs(90 + 6 * policies as u64)
}

/// sha256 of a Secret's data, keys sorted (a BTreeMap), each part length-prefixed.
fn data_hash(secret: &Secret) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in secret.data.iter().flatten() {
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.0.len() as u64).to_be_bytes());
        hasher.update(&value.0);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Name to data hash of every Secret Bulwark manages in `ns`.
async fn secret_hashes(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(&managed_selector()))
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| (s.name_any(), data_hash(s)))
        .collect()
}

/// A produced Job as (policy, facet, uid).
type JobId = (String, String, String);

/// Every Job produced in `ns`, by name.
async fn produced_jobs(client: &Client, ns: &str) -> BTreeMap<String, JobId> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.list_metadata(&ListParams::default().labels(LABEL_POLICY))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|j| {
            let label = |k: &str| j.labels().get(k).cloned().unwrap_or_default();
            let id = (label(LABEL_POLICY), label(LABEL_FACET), j.uid().unwrap());
            (j.name_any(), id)
        })
        .collect()
}

/// (policy, facet) pairs with more than one Job, and pairs of `expected` with none.
fn job_count_problems(
    jobs: &BTreeMap<String, JobId>,
    expected: &BTreeSet<(String, String)>,
) -> Vec<String> {
    let mut per_pair: BTreeMap<(String, String), Vec<&str>> = BTreeMap::new();
    for (name, (policy, facet, _)) in jobs {
        per_pair
            .entry((policy.clone(), facet.clone()))
            .or_default()
            .push(name);
    }
    let mut problems: Vec<String> = per_pair
        .iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|((p, f), names)| format!("{p}/{f}: {} Jobs {names:?}", names.len()))
        .collect();
    for (p, f) in expected {
        if !per_pair.contains_key(&(p.clone(), f.clone())) {
            problems.push(format!("{p}/{f}: no Job"));
        }
    }
    problems
}

fn expected_jobs(policies: usize) -> BTreeSet<(String, String)> {
    (0..policies)
        .flat_map(|i| ["postgres", "kafka"].map(|f| (format!("p-{i}"), f.to_string())))
        .collect()
}

/// (policy label, name) of every object of kind `K` in `ns` labelled with a policy.
async fn labelled<K>(client: &Client, ns: &str) -> Vec<(String, String)>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.list_metadata(&ListParams::default().labels(LABEL_POLICY))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| (o.labels()[LABEL_POLICY].clone(), o.name_any()))
        .collect()
}

/// `Kind/name` of every labelled object in `ns`, for the kinds Bulwark produces.
async fn labelled_objects(client: &Client, ns: &str) -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    let tag = |kind: &str, list: Vec<(String, String)>| {
        list.into_iter()
            .map(|(p, n)| (kind.to_string(), p, n))
            .collect::<Vec<_>>()
    };
    all.extend(tag(
        "NetworkPolicy",
        labelled::<NetworkPolicy>(client, ns).await,
    ));
    all.extend(tag("Secret", labelled::<Secret>(client, ns).await));
    all.extend(tag("ConfigMap", labelled::<ConfigMap>(client, ns).await));
    all.extend(tag("Job", labelled::<Job>(client, ns).await));
    all
}

/// Labelled objects that their policy's `status.managedObjects` does not list.
async fn orphans(client: &Client, ns: &str) -> Vec<String> {
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let listed: BTreeMap<String, BTreeSet<(String, String)>> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| {
            let managed = p
                .status
                .iter()
                .flat_map(|s| s.managed_objects.iter())
                .map(|o| (o.kind.clone(), o.name.clone()))
                .collect();
            (p.name_any(), managed)
        })
        .collect();
    labelled_objects(client, ns)
        .await
        .into_iter()
        .filter(|(kind, policy, name)| {
            !listed
                .get(policy)
                .is_some_and(|m| m.contains(&(kind.clone(), name.clone())))
        })
        .map(|(kind, policy, name)| format!("{kind}/{name} (policy {policy})"))
        .collect()
}

/// One write request from the audit log.
#[derive(Debug, Clone)]
struct Audited {
    user: String,
    agent: String,
    verb: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
    at: jiff::Timestamp,
}

impl Audited {
    fn describe(&self) -> String {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!("{} {}{sub}/{}", self.verb, self.resource, self.name)
    }

    /// Requests of an operator run with the admin kubeconfig: neither this test's nor the
    /// controller-manager's (which uses the same credentials).
    fn by_admin_operator(&self) -> bool {
        self.user == "bulwark-admin"
            && self.agent != TEST_AGENT
            && !self.agent.starts_with("kube-controller-manager")
    }
}

/// Every write the API server audited so far.
fn audited_writes() -> Vec<Audited> {
    let log = std::fs::read_to_string(ControlPlane::shared().audit_log_path()).unwrap_or_default();
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .filter_map(|e| {
            Some(Audited {
                user: text(&e["user"]["username"]),
                agent: text(&e["userAgent"]),
                verb: text(&e["verb"]),
                resource: text(&e["objectRef"]["resource"]),
                subresource: text(&e["objectRef"]["subresource"]),
                namespace: text(&e["objectRef"]["namespace"]),
                name: text(&e["objectRef"]["name"]),
                at: e["requestReceivedTimestamp"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

/// Writes of the admin-credential operator in `ns` within `[from, to)`.
fn operator_writes(ns: &str, from: jiff::Timestamp, to: jiff::Timestamp) -> Vec<Audited> {
    audited_writes()
        .into_iter()
        .filter(|w| w.namespace == ns && w.at >= from && w.at < to && w.by_admin_operator())
        .collect()
}

fn count_by(writes: &[Audited]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for w in writes {
        let sub = if w.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", w.subresource)
        };
        *counts
            .entry(format!("{}:{}{sub}", w.verb, w.resource))
            .or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// WARN and ERROR lines of a JSON log from byte `from` on, as `LEVEL message`.
fn log_problems(log: &Path, from: u64) -> Vec<String> {
    let mut file = File::open(log).unwrap();
    file.seek(SeekFrom::Start(from)).unwrap();
    let mut text = String::new();
    file.read_to_string(&mut text).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| matches!(e["level"].as_str(), Some("WARN" | "ERROR")))
        .map(|e| {
            let mut fields = e["fields"].clone();
            let message = fields["message"].as_str().unwrap_or_default().to_string();
            if let Some(f) = fields.as_object_mut() {
                f.remove("message");
            }
            format!(
                "{} {message} {fields}",
                e["level"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Restart storm: the operator is restarted every 2-5 s (SIGTERM or SIGKILL) while everything is
/// already converged; nothing it produced may change, and nothing may be created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_storm_changes_nothing() {
    let _shared = API_SERVER.read().await;
    let (policies, storm) = if full() {
        (50, Duration::from_secs(300))
    } else {
        (8, Duration::from_secs(40))
    };
    let mut rng = Rng::new();
    let seed = rng.seed();
    let client = test_client().await;
    let created = jiff::Timestamp::now();
    let ns = create_namespace(&client, "chaos-storm").await;
    let kubeconfig = ControlPlane::shared().kubeconfig_path().to_path_buf();
    let log = log_path("restart-storm");
    eprintln!("restart storm: operator log {}", log.display());
    create_admin_secrets(&client, &ns).await;
    let _kubelet = finish_provisioning_jobs(&client, &ns);
    apply_policies(&client, &ns, policies, true).await;
    let mut operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
    let first_ready = wait_all_ready(&client, &ns, policies, ready_timeout(policies)).await;
    // Let the last status writes and Job completions settle before taking the snapshot.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secrets_before = secret_hashes(&client, &ns).await;
    let jobs_before = produced_jobs(&client, &ns).await;
    let problems = job_count_problems(&jobs_before, &expected_jobs(policies));
    assert!(problems.is_empty(), "before the storm: {problems:#?}");

    let storm_start = jiff::Timestamp::now();
    let started = Instant::now();
    let (mut restarts, mut sigterms, mut sigkills) = (0u32, 0u32, 0u32);
    let mut last_restart = Instant::now();
    while started.elapsed() < storm {
        let wait = Duration::from_millis(rng.between(2000, 5000));
        tokio::time::sleep(wait.min(storm.saturating_sub(started.elapsed()))).await;
        if started.elapsed() >= storm {
            break;
        }
        assert!(operator.running(), "the operator died on its own");
        if rng.next().is_multiple_of(2) {
            operator.terminate().await;
            sigterms += 1;
        } else {
            operator.kill();
            sigkills += 1;
        }
        operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
        last_restart = Instant::now();
        restarts += 1;
    }
    let storm_end = jiff::Timestamp::now();
    // The filter that finds the operator's writes finds those of the first convergence.
    let writes_initial = operator_writes(&ns, created, storm_start);
    assert!(
        !writes_initial.is_empty(),
        "no write of the operator found in the audit log"
    );

    let ready_after = wait_all_ready(&client, &ns, policies, ready_timeout(policies)).await;
    let reconciled_after = {
        let deadline = Instant::now() + ready_timeout(policies);
        while operator.successful_reconciles().await < policies as u64 {
            assert!(
                Instant::now() < deadline,
                "the last operator did not reconcile all {policies} policies"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        last_restart.elapsed()
    };
    // Writes the last operator makes while settling count too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let writes_storm = operator_writes(&ns, storm_start, storm_end);
    let writes_after = operator_writes(&ns, storm_end, jiff::Timestamp::now());

    let secrets_after = secret_hashes(&client, &ns).await;
    let jobs_after = produced_jobs(&client, &ns).await;
    report(
        "restart-storm",
        &[
            ("seed", seed.to_string()),
            ("policies", policies.to_string()),
            ("secrets", secrets_before.len().to_string()),
            ("jobs", jobs_before.len().to_string()),
            ("first_ready_s", secs(first_ready)),
            ("writes_first_convergence", writes_initial.len().to_string()),
            ("storm_s", secs(storm)),
            ("restarts", restarts.to_string()),
            ("sigterm", sigterms.to_string()),
            ("sigkill", sigkills.to_string()),
            ("ready_after_last_restart_s", secs(ready_after)),
            (
                "reconciled_all_after_last_restart_s",
                secs(reconciled_after),
            ),
            ("writes_during_storm", writes_storm.len().to_string()),
            ("writes_during_storm_by_kind", count_by(&writes_storm)),
            ("writes_after_storm", writes_after.len().to_string()),
        ],
    );
    let changed: Vec<&String> = secrets_before
        .iter()
        .filter(|(name, hash)| secrets_after.get(*name) != Some(hash))
        .map(|(name, _)| name)
        .collect();
    let added: Vec<&String> = secrets_after
        .keys()
        .filter(|n| !secrets_before.contains_key(*n))
        .collect();
    assert!(
        changed.is_empty() && added.is_empty(),
        "Secrets changed or went away: {changed:?}; new Secrets: {added:?}"
    );
    assert_eq!(
        jobs_after, jobs_before,
        "Jobs were created or replaced during the storm"
    );
    let rewritten: Vec<String> = writes_storm
        .iter()
        .chain(&writes_after)
        .filter(|w| matches!(w.resource.as_str(), "secrets" | "jobs"))
        .map(Audited::describe)
        .collect();
    assert!(
        rewritten.is_empty(),
        "restarts wrote Secrets or Jobs: {rewritten:#?}"
    );
    let all: Vec<String> = writes_storm
        .iter()
        .chain(&writes_after)
        .map(Audited::describe)
        .collect();
    assert!(
        all.is_empty(),
        "restarting a converged operator must write nothing: {all:#?}"
    );

    // Deleting every policy with the operator running: finalizers cleared, produced objects gone
    // except the Secrets, which deletionPolicy Retain keeps.
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    for i in 0..policies {
        api.delete(&format!("p-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    let deleting = Instant::now();
    let mut left = Vec::new();
    while deleting.elapsed() < Duration::from_secs(60) {
        let policies_left = api.list_metadata(&ListParams::default()).await.unwrap();
        left = labelled_objects(&client, &ns)
            .await
            .into_iter()
            .filter(|(kind, _, _)| kind != "Secret")
            .map(|(kind, policy, name)| format!("{kind}/{name} (policy {policy})"))
            .chain(
                policies_left
                    .items
                    .iter()
                    .map(|p| format!("SecurityPolicy/{}", p.name_any())),
            )
            .collect();
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deleted_in = deleting.elapsed();
    report("restart-storm", &[("all_deleted_s", secs(deleted_in))]);
    assert!(left.is_empty(), "left 60 s after deletion: {left:#?}");
    assert!(operator.running());
    let retained = secret_hashes(&client, &ns).await;
    assert_eq!(
        retained, secrets_before,
        "deletionPolicy Retain keeps every Secret as it was"
    );
    operator.terminate().await;
}

/// Watches the managed Secrets of `ns` and collects, per name, every distinct data hash seen.
async fn watch_secret_values(
    client: &Client,
    ns: &str,
) -> (Arc<Mutex<BTreeMap<String, Vec<String>>>>, Background) {
    let seen: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let (listed, mut listed_rx) = tokio::sync::watch::channel(false);
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut events =
                watcher(api, watcher::Config::default().labels(&managed_selector())).boxed();
            while let Some(event) = events.next().await {
                let secret = match event {
                    Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => s,
                    Ok(watcher::Event::InitDone) => {
                        let _ = listed.send(true);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("Secret watch: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                let hash = data_hash(&secret);
                let mut seen = seen.lock().unwrap();
                let values = seen.entry(secret.name_any()).or_default();
                if !values.contains(&hash) {
                    values.push(hash);
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(30), listed_rx.wait_for(|l| *l))
        .await
        .expect("the Secret watch lists within 30 s")
        .unwrap();
    (seen, Background(task))
}

/// SIGKILL during the first reconcile, 1-3 times, then a run to convergence: every Secret keeps
/// the one value it was first written with, and nothing is orphaned or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_first_reconcile_keeps_first_values() {
    let _shared = API_SERVER.read().await;
    let (policies, trials) = if full() { (50, 20) } else { (10, 3) };
    let mut rng = Rng::new();
    let seed = rng.seed();
    let client = test_client().await;
    let kubeconfig = ControlPlane::shared().kubeconfig_path().to_path_buf();
    let log = log_path("kill-first-reconcile");
    eprintln!(
        "kill during first reconcile: operator log {}",
        log.display()
    );
    let mut converge = Vec::new();
    let mut kills_total = 0;
    for trial in 0..trials {
        let ns = create_namespace(&client, &format!("chaos-kill-{trial}")).await;
        create_admin_secrets(&client, &ns).await;
        let _kubelet = finish_provisioning_jobs(&client, &ns);
        let (seen, _watch) = watch_secret_values(&client, &ns).await;
        apply_policies(&client, &ns, policies, true).await;
        let kills = rng.between(1, 3);
        let mut after = Vec::new();
        for _ in 0..kills {
            let mut operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
            let lived = rng.between(100, 3000);
            tokio::time::sleep(Duration::from_millis(lived)).await;
            operator.kill();
            after.push(lived.to_string());
        }
        kills_total += kills;
        let operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
        let took = wait_all_ready(&client, &ns, policies, ready_timeout(policies)).await;
        converge.push(took);
        report(
            "kill-first-reconcile",
            &[
                ("trial", trial.to_string()),
                ("policies", policies.to_string()),
                ("killed_after_ms", after.join(",")),
                ("converge_s", secs(took)),
            ],
        );

        // The watch has seen the current value of every Secret before its history is judged.
        let current = secret_hashes(&client, &ns).await;
        support::eventually(
            Duration::from_secs(10),
            "the Secret watch to catch up",
            || async {
                let seen = seen.lock().unwrap();
                current
                    .iter()
                    .all(|(n, h)| seen.get(n).is_some_and(|v| v.contains(h)))
                    .then_some(())
            },
        )
        .await;
        let changed: Vec<String> = seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, values)| values.len() > 1)
            .map(|(name, values)| format!("{name}: {} values", values.len()))
            .collect();
        assert!(
            changed.is_empty(),
            "trial {trial} (seed {seed}): Secrets whose data changed after first written: {changed:#?}"
        );
        let orphaned = orphans(&client, &ns).await;
        assert!(
            orphaned.is_empty(),
            "trial {trial} (seed {seed}): objects not in their policy's status.managedObjects: {orphaned:#?}"
        );
        let problems =
            job_count_problems(&produced_jobs(&client, &ns).await, &expected_jobs(policies));
        assert!(
            problems.is_empty(),
            "trial {trial} (seed {seed}): {problems:#?}"
        );
        drop(operator);
    }
    let max = converge.iter().max().copied().unwrap_or_default();
    report(
        "kill-first-reconcile",
        &[
            ("seed", seed.to_string()),
            ("policies", policies.to_string()),
            ("trials", trials.to_string()),
            ("kills", kills_total.to_string()),
            ("converge_median_s", secs(median(&mut converge))),
            ("converge_max_s", secs(max)),
        ],
    );
}

/// A TCP proxy in front of the API server that counts connections and bytes; TLS passes through.
struct Proxy {
    port: u16,
    accepted: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// When each connection that reached the API server was made.
    relayed: Arc<Mutex<Vec<Instant>>>,
    _task: Background,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TokioListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let relayed: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let task = {
            let (accepted, bytes, relayed) = (accepted.clone(), bytes.clone(), relayed.clone());
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (bytes, relayed) = (bytes.clone(), relayed.clone());
                    tokio::spawn(async move {
                        // No API server: the connection just closes, as a refused one would.
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        relayed.lock().unwrap().push(Instant::now());
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::select! {
                            _ = pump(client_read, server_write, &bytes) => {}
                            _ = pump(server_read, client_write, &bytes) => {}
                        }
                    });
                }
            })
        };
        Proxy {
            port,
            accepted,
            bytes,
            relayed,
            _task: Background(task),
        }
    }

    /// The first connection relayed to the API server at or after `since`.
    fn first_relayed_since(&self, since: Instant) -> Option<Instant> {
        self.relayed
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|t| *t >= since)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    bytes: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// The admin kubeconfig pointed at `port` on 127.0.0.1 (the serving cert has 127.0.0.1 as an IP
/// SAN, so TLS verification still passes through the proxy).
fn proxied_kubeconfig(port: u16) -> PathBuf {
    let cp = ControlPlane::shared();
    let text = std::fs::read_to_string(cp.kubeconfig_path()).unwrap();
    let server = cp.server_url();
    assert!(text.contains(&server), "kubeconfig names {server}");
    let path = scratch_file("outage.kubeconfig");
    std::fs::write(
        &path,
        text.replace(&server, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    path
}

/// Blocking control-plane calls go to a blocking thread so the proxy and watches keep running.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// The API server goes away for 30 s: the operator survives, says so, keeps its reconnects
/// bounded, and afterwards repairs drift at once without rewriting anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_outage_is_survived_quietly() {
    const POLICIES: usize = 8;
    const OUTAGE: Duration = Duration::from_secs(30);
    let client = test_client().await;
    let _alone = API_SERVER.write().await;
    let ns = create_namespace(&client, "chaos-outage").await;
    let cp = ControlPlane::shared();
    let upstream: SocketAddr = cp
        .server_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let log = log_path("apiserver-outage");
    eprintln!("API server outage: operator log {}", log.display());
    let proxied = proxied_kubeconfig(proxy.port);
    let mut operator = OperatorProcess::start(&proxied, &ns, &log, None);
    apply_policies(&client, &ns, POLICIES, false).await;
    wait_all_ready(&client, &ns, POLICIES, ready_timeout(POLICIES)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics_before = operator
        .metrics()
        .await
        .expect("/metrics before the outage");

    let (conns_before, bytes_before) = (proxy.accepted(), proxy.bytes());
    let log_from = file_len(&log);
    let stopping = Instant::now();
    blocking(|| ControlPlane::shared().stop_apiserver()).await;
    let stopped_in = stopping.elapsed();
    let (mut served, mut probes) = (0, 0);
    let mut metrics_during = String::new();
    let mut readyz_during = BTreeSet::new();
    let stopped = Instant::now();
    while stopped.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        probes += 1;
        if let Some(body) = operator.metrics().await {
            served += 1;
            metrics_during = body;
        }
        if let Some((code, _)) = operator.get("/readyz").await {
            readyz_during.insert(code);
        }
    }
    let conns_outage = proxy.accepted() - conns_before;
    let bytes_outage = proxy.bytes() - bytes_before;
    let restarting = Instant::now();
    blocking(|| ControlPlane::shared().start_apiserver())
        .await
        .expect("the API server starts again");
    let back = Instant::now();
    let back_at = jiff::Timestamp::now();
    let restart_took = restarting.elapsed();
    let alive = operator.running();
    let problems = log_problems(&log, log_from);
    let changed_metrics: Vec<&str> = metrics_during
        .lines()
        .filter(|l| !l.starts_with('#') && !metrics_before.lines().any(|b| b == *l))
        .collect();

    // Drift right after the return: one produced NetworkPolicy deleted by hand.
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let victim = "p-0-default-deny";
    support::eventually(
        Duration::from_secs(5),
        "deleting a NetworkPolicy",
        || async { nps.delete(victim, &DeleteParams::default()).await.ok() },
    )
    .await;
    let restored = {
        // Waits past the 10 s asserted below, to tell a late repair from none.
        let deadline = back + Duration::from_secs(40);
        loop {
            if matches!(nps.get_opt(victim).await, Ok(Some(np)) if np.metadata.deletion_timestamp.is_none())
            {
                break Some(back.elapsed());
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let writes_after: Vec<Audited> = operator_writes(&ns, back_at, jiff::Timestamp::now());
    let conns_after = proxy.accepted() - conns_before - conns_outage;
    // The path through the proxy works again: whatever the operator does is its own doing.
    let through_proxy = {
        let kubeconfig = kube::config::Kubeconfig::read_from(&proxied).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        Client::try_from(config).unwrap().apiserver_version().await
    };
    report(
        "apiserver-outage",
        &[
            ("policies", POLICIES.to_string()),
            ("outage_s", secs(back - stopped)),
            ("stop_took_s", secs(stopped_in)),
            ("restart_took_s", secs(restart_took)),
            ("operator_alive", alive.to_string()),
            ("connections_before", conns_before.to_string()),
            ("connections_during_outage", conns_outage.to_string()),
            ("bytes_during_outage", bytes_outage.to_string()),
            ("connections_after_return", conns_after.to_string()),
            (
                "first_new_connection_after_return_s",
                proxy
                    .first_relayed_since(back)
                    .map_or("never".into(), |t| secs(t - back)),
            ),
            ("log_warn_error_lines", problems.len().to_string()),
            ("metrics_served", format!("{served}/{probes}")),
            (
                "readyz_during_outage",
                format!("{readyz_during:?}").replace(' ', ""),
            ),
            ("metric_lines_changed", changed_metrics.len().to_string()),
            (
                "restored_after_return_s",
                restored.map_or("never".into(), secs),
            ),
            ("writes_after_return", writes_after.len().to_string()),
            ("writes_after_return_by_kind", count_by(&writes_after)),
        ],
    );
    for line in problems.iter().take(10) {
        eprintln!("CHAOS apiserver-outage log: {line}");
    }
    for line in &changed_metrics {
        eprintln!("CHAOS apiserver-outage metric changed: {line}");
    }
    if let Err(e) = &through_proxy {
        panic!("the proxy does not reach the API server after its return: {e}");
    }
    assert!(alive, "the operator exited during the outage");
    assert_eq!(served, probes, "/metrics answers throughout the outage");
    assert!(
        readyz_during.contains(&503),
        "/readyz never reported the outage: {readyz_during:?}"
    );
    assert!(
        metrics_during
            .lines()
            .any(|l| l.starts_with("bulwark_watches_failing ") && !l.ends_with(" 0")),
        "bulwark_watches_failing stayed 0 during the outage"
    );
    assert!(
        !problems.is_empty(),
        "the operator logged no WARN or ERROR line while the API server was gone"
    );
    // Each of the five watches retries on its own backoff (0.5 s doubling to 4 s, about eight
    // attempts in 30 s), plus reconciles that come due. 200 leaves room for more watches; a
    // retry loop without backoff opens thousands.
    assert!(
        conns_outage < 200,
        "{conns_outage} connections in a {OUTAGE:?} outage"
    );
    match restored {
        Some(after) => assert!(
            after <= Duration::from_secs(10),
            "the deleted NetworkPolicy came back {after:?} after the API server, not within 10 s"
        ),
        None => panic!(
            "the deleted NetworkPolicy was not restored within 40 s of the API server's return \
             (expected within 10 s)"
        ),
    }
    let writes: Vec<String> = writes_after.iter().map(Audited::describe).collect();
    assert!(
        writes.len() == 1 && writes[0].ends_with(&format!("networkpolicies/{victim}")),
        "after the return the operator writes only the repair of {victim}: {writes:#?}"
    );
    let ready_again = operator.get("/readyz").await.map(|(code, _)| code);
    assert_eq!(
        ready_again,
        Some(200),
        "/readyz after the API server's return"
    );
    operator.terminate().await;
}

async fn lease(client: &Client, ns: &str) -> Option<Lease> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt("bulwark-leader").await.ok()?
}

fn holder(lease: &Lease) -> String {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default()
}

/// A ServiceAccount bound to cluster-admin, and a kubeconfig with its token: the audit log then
/// names each replica.
async fn replica_identity(client: &Client, ns: &str, name: &str) -> (PathBuf, String) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(format!("{ns}-{name}")),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "cluster-admin".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: Some(ns.into()),
            ..Subject::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let token = support::chart::service_account_token(client, ns, name).await;
    let path = scratch_file(&format!("{ns}-{name}.kubeconfig"));
    support::chart::token_kubeconfig(&path, &token);
    (path, format!("system:serviceaccount:{ns}:{name}"))
}

/// Two replicas; the leader is SIGKILLed. The standby takes over once the lease expires, and
/// the audit log shows the two never writing in overlapping intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_never_has_two_writers() {
    const POLICIES: usize = 8;
    let _shared = API_SERVER.read().await;
    let client = test_client().await;
    let ns = create_namespace(&client, "chaos-leader").await;
    let (kubeconfig_a, user_a) = replica_identity(&client, &ns, "replica-a").await;
    let (kubeconfig_b, user_b) = replica_identity(&client, &ns, "replica-b").await;
    let log = log_path("leader-failover");
    eprintln!("leader failover: operator log {}", log.display());

    let mut first = OperatorProcess::start(&kubeconfig_a, &ns, &log, Some("replica-a"));
    support::eventually(Duration::from_secs(30), "replica-a to lead", || async {
        lease(&client, &ns)
            .await
            .filter(|l| holder(l) == format!("replica-a-{}", first.pid()))
    })
    .await;
    let second = OperatorProcess::start(&kubeconfig_b, &ns, &log, Some("replica-b"));
    let b_identity = format!("replica-b-{}", second.pid());
    apply_policies(&client, &ns, POLICIES, false).await;
    wait_all_ready(&client, &ns, POLICIES, ready_timeout(POLICIES)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed_at = jiff::Timestamp::now();
    let killed = Instant::now();
    first.kill();
    // Work for whoever leads next: every policy stops allowing DNS.
    for i in 0..POLICIES {
        let mut changed = chaos_policy(&ns, i, false);
        changed.spec.network.as_mut().unwrap().allow_dns = false;
        apply_policy(&client, &changed).await.unwrap();
    }
    let taken = support::eventually(
        LEASE_DURATION + LEASE_RETRY + Duration::from_secs(20),
        "replica-b to lead",
        || async {
            lease(&client, &ns)
                .await
                .filter(|l| holder(l) == b_identity)
        },
    )
    .await;
    let observed_takeover = killed.elapsed();
    let acquired: jiff::Timestamp = taken
        .spec
        .as_ref()
        .and_then(|s| s.acquire_time.as_ref())
        .map(|t| t.0)
        .expect("the lease records when replica-b acquired it");
    let takeover = Duration::try_from(acquired.duration_since(killed_at)).unwrap_or_default();
    wait_all_ready(&client, &ns, POLICIES, ready_timeout(POLICIES)).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    for i in 0..POLICIES {
        let name = format!("p-{i}-allow-dns");
        support::eventually(Duration::from_secs(20), &name, || async {
            nps.get_opt(&name).await.ok()?.is_none().then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let writes = audited_writes();
    let of = |user: &str| -> Vec<Audited> {
        writes
            .iter()
            .filter(|w| w.user == user && w.resource != "leases")
            .cloned()
            .collect()
    };
    let (writes_a, writes_b) = (of(&user_a), of(&user_b));
    let last_a = writes_a.iter().map(|w| w.at).max();
    let first_b = writes_b.iter().map(|w| w.at).min();
    report(
        "leader-failover",
        &[
            ("policies", POLICIES.to_string()),
            ("lease_duration_s", secs(LEASE_DURATION)),
            ("takeover_s", secs(takeover)),
            ("takeover_observed_s", secs(observed_takeover)),
            ("writes_a", writes_a.len().to_string()),
            ("writes_b", writes_b.len().to_string()),
            (
                "gap_last_a_first_b_s",
                match (last_a, first_b) {
                    (Some(a), Some(b)) => {
                        format!("{:.1}", b.duration_since(a).as_secs_f64())
                    }
                    _ => "n/a".into(),
                },
            ),
        ],
    );
    assert!(!writes_a.is_empty(), "replica-a led and wrote");
    assert!(
        !writes_b.is_empty(),
        "replica-b led after the failover and wrote"
    );
    let a_late: Vec<String> = writes_a
        .iter()
        .filter(|w| w.at >= acquired)
        .map(|w| format!("{} {}", w.at, w.describe()))
        .collect();
    let b_early: Vec<String> = writes_b
        .iter()
        .filter(|w| w.at < acquired)
        .map(|w| format!("{} {}", w.at, w.describe()))
        .collect();
    assert!(
        a_late.is_empty() && b_early.is_empty(),
        "writes on the wrong side of the takeover at {acquired}: replica-a after {a_late:#?}, \
         replica-b before {b_early:#?}"
    );
    assert!(
        last_a < first_b,
        "the two replicas' write intervals overlap"
    );
    assert!(
        takeover <= LEASE_DURATION + LEASE_RETRY + Duration::from_secs(1),
        "replica-b took over {takeover:?} after the kill; the lease lasts {LEASE_DURATION:?}"
    );
    drop(second);
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    for name in ["replica-a", "replica-b"] {
        let _ = bindings
            .delete(&format!("{ns}-{name}"), &DeleteParams::default())
            .await;
    }
}

/// How a namespace deletion went: how long until the namespace was gone, and the operator's
/// part of it, the longest time a policy kept its finalizer after it was marked for deletion.
struct NamespaceDeletion {
    gone: Result<Duration, String>,
    finalizer_held: Option<Duration>,
}

/// Waits until the already deleted `ns` is gone, timing each policy from the moment it is seen
/// marked for deletion until it disappears. The namespace controller's own pace (it deletes
/// each kind of content in turn, slowly on a loaded machine) is not the operator's.
async fn namespace_gone(client: &Client, ns: &str, timeout: Duration) -> NamespaceDeletion {
    let api: Api<Namespace> = Api::all(client.clone());
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let mut marked: BTreeMap<String, Instant> = BTreeMap::new();
    let mut finalizer_held: Option<Duration> = None;
    // A policy can be marked and lose its finalizer between two polls: then it was held at most
    // since the last poll that listed it.
    let mut listed_before: (BTreeSet<String>, Instant) = (BTreeSet::new(), Instant::now());
    let held_at_most = |held: Duration, finalizer_held: &mut Option<Duration>| {
        *finalizer_held = Some(finalizer_held.map_or(held, |m| m.max(held)));
    };
    let gone = loop {
        let polled = Instant::now();
        if let Ok(list) = policies.list(&ListParams::default()).await {
            let present: BTreeSet<String> = list.items.iter().map(|p| p.name_any()).collect();
            for p in &list.items {
                if p.metadata.deletion_timestamp.is_some() {
                    marked.entry(p.name_any()).or_insert_with(Instant::now);
                }
            }
            marked.retain(|name, since| {
                let kept = present.contains(name);
                if !kept {
                    held_at_most(since.elapsed(), &mut finalizer_held);
                }
                kept
            });
            let (before, at) = &listed_before;
            for name in before.difference(&present) {
                if !marked.contains_key(name) {
                    held_at_most(at.elapsed(), &mut finalizer_held);
                }
            }
            listed_before = (present, polled);
        }
        match api.get_opt(ns).await {
            Ok(None) => break Ok(started.elapsed()),
            Ok(Some(n)) if started.elapsed() >= timeout => {
                let conditions: Vec<String> = n
                    .status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .filter(|c| c.status == "True")
                    .map(|c| format!("{}: {}", c.type_, c.message.clone().unwrap_or_default()))
                    .collect();
                break Err(format!("{ns} still there: {conditions:#?}"));
            }
            Err(e) if started.elapsed() >= timeout => break Err(format!("reading {ns}: {e}")),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Policies still marked, or still listed, when the namespace went were removed between two
    // polls.
    if gone.is_ok() {
        let held = marked.values().map(Instant::elapsed).max();
        finalizer_held = finalizer_held.max(held);
        if listed_before.0.iter().any(|n| !marked.contains_key(n)) {
            held_at_most(listed_before.1.elapsed(), &mut finalizer_held);
        }
    }
    NamespaceDeletion {
        gone,
        finalizer_held,
    }
}

/// A namespace holding policies is deleted with the operator running, and with the operator
/// stopped at that moment and started again: either way it is gone. The operator's part, taking
/// the finalizer off a policy marked for deletion, is held to 10 s; the whole deletion, paced by
/// Kubernetes' namespace controller, to 180 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_deletion_is_not_blocked() {
    const POLICIES: usize = 3;
    let _shared = API_SERVER.read().await;
    let client = test_client().await;
    let kubeconfig = ControlPlane::shared().kubeconfig_path().to_path_buf();
    let log = log_path("namespace-deletion");
    eprintln!("namespace deletion: operator log {}", log.display());
    let namespaces: Api<Namespace> = Api::all(client.clone());

    let ns = create_namespace(&client, "chaos-nsdel-running").await;
    let mut operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
    apply_policies(&client, &ns, POLICIES, false).await;
    wait_all_ready(&client, &ns, POLICIES, ready_timeout(POLICIES)).await;
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    let running = namespace_gone(&client, &ns, NAMESPACE_TIMEOUT).await;
    operator.terminate().await;

    let ns = create_namespace(&client, "chaos-nsdel-stopped").await;
    let mut operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
    apply_policies(&client, &ns, POLICIES, false).await;
    wait_all_ready(&client, &ns, POLICIES, ready_timeout(POLICIES)).await;
    operator.terminate().await;
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .unwrap();
    // Without the operator the finalizers hold the namespace in Terminating.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let held = namespaces.get_opt(&ns).await.unwrap().is_some();
    let mut operator = OperatorProcess::start(&kubeconfig, &ns, &log, None);
    let stopped = namespace_gone(&client, &ns, NAMESPACE_TIMEOUT).await;
    operator.terminate().await;

    let show = |r: &Result<Duration, String>| match r {
        Ok(d) => secs(*d),
        Err(_) => "stuck".into(),
    };
    let held_s = |d: &NamespaceDeletion| d.finalizer_held.map_or("never seen".into(), secs);
    report(
        "namespace-deletion",
        &[
            ("policies", POLICIES.to_string()),
            ("gone_with_operator_running_s", show(&running.gone)),
            ("finalizer_held_running_s", held_s(&running)),
            ("held_while_operator_stopped", held.to_string()),
            ("gone_after_operator_restart_s", show(&stopped.gone)),
        ],
    );
    running
        .gone
        .expect("namespace deleted with the operator running");
    stopped
        .gone
        .expect("namespace deleted while the operator was stopped, after its restart");
    let finalizer_held = running
        .finalizer_held
        .expect("the policies were seen marked for deletion");
    assert!(
        finalizer_held <= Duration::from_secs(10),
        "a policy marked for deletion kept its finalizer {finalizer_held:?} with the operator running"
    );
}

/// How long a namespace deletion may take: the namespace controller deletes each kind of
/// content in turn and backs off between passes, slowly on a loaded machine.
const NAMESPACE_TIMEOUT: Duration = Duration::from_secs(180);
