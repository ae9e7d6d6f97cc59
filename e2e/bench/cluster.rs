//! What the benchmarks do to the cluster: namespaces, policies, a stand-in kubelet for the
//! provisioning Jobs, and watches that time when objects become Ready or come back.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{
    Api, ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams, ResourceExt,
};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

/// User agent of the benchmark's own requests, so the audit log tells them from the operator's.
pub const BENCH_AGENT: &str = "bulwark-bench";
/// Field manager of the benchmark's applies (the user's `kubectl apply --server-side`).
const MANAGER: &str = "bench-user";
/// Requests the benchmark keeps in flight when it creates or applies many objects.
pub const IN_FLIGHT: usize = 32;

/// Aborts the task when dropped.
pub struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Admin client of `kubeconfig` whose requests carry [`BENCH_AGENT`].
pub async fn bench_client(kubeconfig: &Path) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("client config");
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(BENCH_AGENT),
    ));
    Client::try_from(config).expect("client")
}

/// Creates the namespaces, IN_FLIGHT at a time.
pub async fn create_namespaces(client: &Client, names: &[String]) {
    let api: Api<Namespace> = Api::all(client.clone());
    stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    ..Namespace::default()
                };
                match api.create(&PostParams::default(), &ns).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => panic!("create namespace {name}: {e}"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// Creates Secrets (name, namespace, data), IN_FLIGHT at a time.
pub async fn create_secrets(
    client: &Client,
    secrets: Vec<(String, String, BTreeMap<String, Vec<u8>>)>,
) {
    stream::iter(secrets)
        .map(|(ns, name, data)| {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            async move {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..ObjectMeta::default()
                    },
                    data: Some(
                        data.into_iter()
                            .map(|(k, v)| (k, k8s_openapi::ByteString(v)))
                            .collect(),
                    ),
                    ..Secret::default()
                };
                match api.create(&PostParams::default(), &secret).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 409 => {}
                    Err(e) => panic!("create Secret {ns}/{name}: {e}"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
}

/// The admin Secrets the provisioning Jobs would log in with; dummy values: no database or
/// broker is contacted in these benchmarks.
pub async fn create_admin_secrets(client: &Client, namespaces: &[String]) {
    let credentials = || {
        BTreeMap::from([
            ("username".to_string(), b"admin".to_vec()),
            ("password".to_string(), b"not-a-real-password".to_vec()),
        ])
    };
    let secrets = namespaces
        .iter()
        .flat_map(|ns| {
            ["kafka-admin", "postgres-superuser"]
                .map(|n| (ns.clone(), n.to_string(), credentials()))
        })
        .collect();
    create_secrets(client, secrets).await;
}

/// What a benchmark policy holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyShape {
    /// The shipped example: 3 tiers with flows, 3 certificates, 2 Kafka users, 3 PostgreSQL roles
    /// and a JWT key.
    Full,
    /// Only its TLS section (a CA and the same 3 certificates, no keystore formats): what
    /// cert-manager does.
    TlsOnly,
    /// TlsOnly with RSA 2048 leaf keys.
    TlsRsa,
}

/// The example policy `traffic` moved to `ns`, cut to `shape`, as the JSON a user applies.
pub fn policy(ns: &str, shape: PolicyShape) -> Value {
    let yaml = include_str!("../../deploy/examples/traffic-prediction.yaml");
    let mut policy: Value = serde_yaml::from_str(yaml).expect("the example parses");
    policy["metadata"] = json!({"name": "traffic", "namespace": ns});
    if shape != PolicyShape::Full {
        let spec = policy["spec"].as_object_mut().expect("spec");
        for section in ["network", "kafka", "postgres", "jwt"] {
            spec.remove(section);
        }
        for cert in spec["tls"]["certificates"]
            .as_array_mut()
            .expect("certificates")
        {
            cert.as_object_mut().expect("certificate").remove("formats");
        }
    }
    if shape == PolicyShape::TlsRsa {
        policy["spec"]["tls"]["defaults"]["privateKey"] = json!({"algorithm": "RSA", "size": 2048});
    }
    policy
}

/// Server-side applies `objects` (namespaced JSON of `resource`) IN_FLIGHT at a time; returns
/// when each apply was answered, by `namespace/name`.
pub async fn apply_all(
    client: &Client,
    resource: &ApiResource,
    objects: Vec<Value>,
) -> HashMap<String, Instant> {
    stream::iter(objects)
        .map(|obj| {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .expect("namespace")
                .to_string();
            let name = obj["metadata"]["name"].as_str().expect("name").to_string();
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, resource);
            async move {
                api.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&obj),
                )
                .await
                .unwrap_or_else(|e| panic!("apply {ns}/{name}: {e}"));
                (format!("{ns}/{name}"), Instant::now())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await
}

pub fn policy_resource() -> ApiResource {
    ApiResource::erase::<SecurityPolicy>(&())
}

/// Stands in for the kubelet of the provisioning Jobs: every pod of a Job is marked Succeeded
/// as soon as it appears, without running anything (the Job's own command is exercised against
/// a real database and broker by the facet tests).
pub fn play_kubelet(client: &Client) -> Background {
    let client = client.clone();
    Background(tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        let cfg = watcher::Config::default().labels("batch.kubernetes.io/job-name");
        let patching = Arc::new(Semaphore::new(16));
        let mut done = std::collections::HashSet::new();
        let mut events = std::pin::pin!(watcher(pods, cfg).default_backoff().applied_objects());
        while let Some(pod) = events.next().await {
            let Ok(pod) = pod else { continue };
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed"))
                || pod.metadata.deletion_timestamp.is_some()
                || !done.insert(pod.uid().unwrap_or_default())
            {
                continue;
            }
            let permit = patching.clone().acquire_owned().await.expect("semaphore");
            let client = client.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let ns = pod.namespace().unwrap_or_default();
                let now = jiff::Timestamp::now().to_string();
                let statuses: Vec<Value> = pod
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
                let status =
                    json!({"status": {"phase": "Succeeded", "containerStatuses": statuses}});
                let api: Api<Pod> = Api::namespaced(client, &ns);
                if let Err(e) = api
                    .patch_status(
                        &pod.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await
                {
                    eprintln!("stand-in kubelet: pod {ns}/{}: {e}", pod.name_any());
                }
            });
        }
    }))
}

/// When each object of a kind was first seen Ready for its current generation.
#[derive(Default)]
pub struct Readiness {
    ready: Mutex<HashMap<String, Instant>>,
}

impl Readiness {
    /// Watches `resource` cluster-wide and records when each object first becomes Ready.
    pub fn track(client: &Client, resource: &ApiResource) -> (Arc<Readiness>, Background) {
        let readiness = Arc::new(Readiness::default());
        let api: Api<DynamicObject> = Api::all_with(client.clone(), resource);
        let seen = readiness.clone();
        let task = tokio::spawn(async move {
            let cfg = watcher::Config::default().page_size(500);
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Some(obj) = events.next().await {
                let Ok(obj) = obj else { continue };
                if is_ready(&obj) {
                    let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
                    seen.ready
                        .lock()
                        .expect("readiness lock")
                        .entry(key)
                        .or_insert_with(Instant::now);
                }
            }
        });
        (readiness, Background(task))
    }

    pub fn ready_at(&self, key: &str) -> Option<Instant> {
        self.ready.lock().expect("readiness lock").get(key).copied()
    }

    /// Waits until every key is Ready; returns when the last one was.
    pub async fn wait_all(&self, keys: &[String], timeout: Duration, what: &str) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let (missing, last) = {
                let ready = self.ready.lock().expect("readiness lock");
                let missing: Vec<&String> =
                    keys.iter().filter(|k| !ready.contains_key(*k)).collect();
                let last = keys.iter().filter_map(|k| ready.get(k)).max().copied();
                (
                    missing.len(),
                    (missing.is_empty()).then_some(last).flatten(),
                )
            };
            if let Some(last) = last {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {missing} of {} not Ready after {timeout:?}",
                keys.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Ready=True, and for the object's current generation.
fn is_ready(obj: &DynamicObject) -> bool {
    let generation = obj.metadata.generation;
    let status = &obj.data["status"];
    let Some(ready) = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
    else {
        return false;
    };
    let observed = status["observedGeneration"]
        .as_i64()
        .or_else(|| ready["observedGeneration"].as_i64());
    ready["status"] == "True" && observed == generation
}

/// A produced object deleted by the benchmark, and when it came back.
pub struct Deleted {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub deleted_at: Instant,
}

/// Watches the metadata of one kind's produced objects and records when an object of a new uid
/// appears under a watched name.
pub struct Returns {
    back: Mutex<HashMap<(String, String), (String, Instant)>>,
}

impl Returns {
    pub fn track<K>(client: &Client, selector: &str) -> (Arc<Returns>, Background)
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let returns = Arc::new(Returns {
            back: Mutex::new(HashMap::new()),
        });
        let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
        let cfg = watcher::Config::default().labels(selector).page_size(500);
        let seen = returns.clone();
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Some(obj) = events.next().await {
                let Ok(obj) = obj else { continue };
                let key = (obj.namespace().unwrap_or_default(), obj.name_any());
                let uid = obj.uid().unwrap_or_default();
                let mut back = seen.back.lock().expect("returns lock");
                match back.get(&key) {
                    Some((known, _)) if *known == uid => {}
                    _ => {
                        back.insert(key, (uid, Instant::now()));
                    }
                }
            }
        });
        (returns, Background(task))
    }

    /// When an object named like `d` with another uid was first seen.
    pub fn back_at(&self, d: &Deleted) -> Option<Instant> {
        let back = self.back.lock().expect("returns lock");
        back.get(&(d.namespace.clone(), d.name.clone()))
            .filter(|(uid, _)| *uid != d.uid)
            .map(|(_, at)| *at)
    }

    /// Whether the watch has listed `namespace/name` (with any uid).
    pub fn knows(&self, namespace: &str, name: &str) -> bool {
        self.back
            .lock()
            .expect("returns lock")
            .contains_key(&(namespace.to_string(), name.to_string()))
    }
}

/// Writes of the operator in `[from, to)` from the audit log, as `verb resource[/sub]` counts:
/// every write whose user agent is neither the benchmark's nor a control-plane component's.
pub fn operator_writes(
    audit_log: &Path,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> BTreeMap<String, usize> {
    let log = std::fs::read_to_string(audit_log).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for e in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        let agent = e["userAgent"].as_str().unwrap_or_default();
        let user = e["user"]["username"].as_str().unwrap_or_default();
        let at: Option<jiff::Timestamp> = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse().ok());
        let Some(at) = at else { continue };
        if e["stage"] != "ResponseComplete"
            || at < from
            || at >= to
            || agent.starts_with(BENCH_AGENT)
            || agent.starts_with("kube-controller-manager")
            || agent.starts_with("kube-apiserver")
            || user.starts_with("system:")
        {
            continue;
        }
        let sub = e["objectRef"]["subresource"]
            .as_str()
            .map(|s| format!("/{s}"))
            .unwrap_or_default();
        let key = format!(
            "{} {}{sub}",
            e["verb"].as_str().unwrap_or_default(),
            e["objectRef"]["resource"].as_str().unwrap_or_default()
        );
        *counts.entry(key).or_default() += 1;
    }
    counts
}

/// The API server's own request counts (`apiserver_request_total`), as `VERB resource` totals.
/// Every client is counted: the operator, the control plane and the benchmark itself.
pub async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let request = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .expect("metrics request");
    let body = client
        .request_text(request)
        .await
        .expect("API server metrics");
    let label = |line: &str, name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let len = line[start..].find('"')?;
        Some(line[start..start + len].to_string())
    };
    let mut counts = BTreeMap::new();
    for line in body
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let (Some(verb), Some(resource), Some(value)) = (
            label(line, "verb"),
            label(line, "resource"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        *counts.entry(format!("{verb} {resource}")).or_default() += value;
    }
    counts
}

/// `after - before`, per key, leaving out what did not move.
pub fn request_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).unwrap_or(&0.0)).round() as u64,
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}
