//! The end-to-end suite: one file, two targets.
//!
//! - Local (`make e2e`, part of `make test`): this test binary's own control plane (etcd,
//!   kube-apiserver, kube-controller-manager), the chart installed with helm, and the operator
//!   binary run with a token of the chart's ServiceAccount: what the chart's Deployment does,
//!   minus the kubelet, whose part the test plays for the role and user Jobs against a real
//!   PostgreSQL and Kafka broker, so the full example reaches Ready.
//! - A real cluster (`make e2e-kind`, see `hack/e2e-kind.sh`): `BULWARK_E2E_KUBECONFIG` names it,
//!   the chart is already installed and its Deployment runs the image; the example runs without
//!   its data-tier Jobs (there is no database or broker there). `BULWARK_E2E_PROBES=1`
//!   adds live probes between tier pods (frontend to data denied, backend to data allowed, DNS
//!   works), which need a kubelet and a NetworkPolicy-enforcing CNI.
//!
//! The steps run in order in one test, so the operator started for the local target stops when
//! the test ends, whatever happened.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bulwark::api::{DeletionPolicy, SecurityPolicy};
use bulwark::facets::network::desired_network_policies;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use support::chart::{
    ChartOperator, helm_install, scratch_dir, service_account_token, token_kubeconfig,
};
use support::*;

const RELEASE_NS: &str = "bulwark-system";
const POLICY_LABEL: &str = "bulwark.dev/policy=traffic";

/// Where the suite runs and what keeps the operator alive there.
struct Target {
    client: kube::Client,
    probes: bool,
    /// The operator run for the local target; stops when dropped.
    operator: Option<ChartOperator>,
}

fn step(name: &str) {
    eprintln!("== e2e: {name}");
}

async fn target() -> Target {
    if let Some(path) = std::env::var_os("BULWARK_E2E_KUBECONFIG") {
        let kubeconfig =
            Kubeconfig::read_from(PathBuf::from(path)).expect("BULWARK_E2E_KUBECONFIG");
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("a usable kubeconfig");
        return Target {
            client: kube::Client::try_from(config).unwrap(),
            probes: std::env::var("BULWARK_E2E_PROBES").is_ok_and(|v| v == "1"),
            operator: None,
        };
    }
    let client = client().await;
    helm_install("bulwark", RELEASE_NS, &[]);
    let token = service_account_token(&client, RELEASE_NS, "bulwark").await;
    let kubeconfig = scratch_dir("e2e").join("kubeconfig");
    token_kubeconfig(&kubeconfig, &token);
    Target {
        client,
        probes: false,
        operator: Some(ChartOperator::start(&kubeconfig, RELEASE_NS, &[])),
    }
}

async fn fresh_namespace(client: &kube::Client, name: &str) -> String {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.unwrap().is_some() {
        api.delete(name, &DeleteParams::default()).await.unwrap();
        eventually(
            Duration::from_secs(120),
            "the old namespace to go",
            || async { api.get_opt(name).await.unwrap().is_none().then_some(()) },
        )
        .await;
    }
    namespace(client, name).await
}

async fn names<K>(client: &kube::Client, ns: &str) -> BTreeSet<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels(POLICY_LABEL))
        .await
        .unwrap()
        .items
        .iter()
        .map(|o| o.name_any())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e() {
    step("install");
    let target = target().await;
    let client = target.client.clone();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds
        .get("securitypolicies.bulwark.dev")
        .await
        .expect("the chart installs the CRD");
    assert!(
        crd.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "the CRD is established"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), RELEASE_NS);
    eventually(
        Duration::from_secs(60),
        "a leader holding bulwark-leader",
        || async {
            leases
                .get_opt("bulwark-leader")
                .await
                .ok()??
                .spec?
                .holder_identity
        },
    )
    .await;

    let ns = fresh_namespace(&client, "e2e-traffic").await;
    let scratch = std::env::temp_dir().join(format!("bulwark-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let _data_tier = if target.operator.is_some() {
        step(
            "the full example reaches Ready (this test plays the kubelet for the role and user Jobs against a real PostgreSQL and Kafka)",
        );
        Some(full_example_to_ready(&client, &ns, &scratch).await)
    } else {
        step("the example without its data-tier Jobs reaches Ready");
        apply_policy(&client, &example_policy(&ns))
            .await
            .expect("the example is accepted");
        let (reason, message) = wait_condition(&client, &ns, "traffic", "Ready", "True").await;
        assert_eq!(reason, "Reconciled", "{message}");
        None
    };
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let policy = policies.get("traffic").await.unwrap();

    step("what it produced");
    let expected: BTreeSet<String> = desired_network_policies(&policy)
        .iter()
        .map(|np| np.name_any())
        .collect();
    assert_eq!(names::<NetworkPolicy>(&client, &ns).await, expected);
    let secrets = names::<Secret>(&client, &ns).await;
    for name in [
        "traffic-ca",
        "kafka-tls",
        "postgres-tls",
        "api-tls",
        "api-jwt",
    ] {
        assert!(secrets.contains(name), "Secret {name} in {secrets:?}");
    }
    let bundle: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let bundle = bundle.get("traffic-trust-bundle").await.unwrap();
    let dir = &scratch;
    std::fs::write(dir.join("bundle.pem"), &bundle.data.unwrap()["ca.crt"]).unwrap();
    let api_tls = secret_data(&client, &ns, "api-tls").await;
    std::fs::write(dir.join("api.pem"), &api_tls["tls.crt"]).unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("api.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "the api certificate chains to the published bundle: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let jwks: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let jwks = jwks.get("api-jwks").await.unwrap();
    let kid = secret_data(&client, &ns, "api-jwt").await["kid"].clone();
    assert!(jwks.data.unwrap()["jwks.json"].contains(&kid));

    step("drift is repaired");
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let victim = "traffic-tier-data";
    let uid = nps.get(victim).await.unwrap().uid();
    nps.delete(victim, &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the deleted NetworkPolicy back",
        || async {
            let back = nps.get_opt(victim).await.ok()??;
            (back.uid() != uid).then_some(())
        },
    )
    .await;

    step("data-tier credentials wait for their admin Secrets");
    let data_ns = fresh_namespace(&client, "e2e-credentials").await;
    apply_policy(&client, &full_example_policy(&data_ns))
        .await
        .unwrap();
    for facet in ["KafkaReady", "PostgresReady"] {
        let (reason, message) = wait_condition(&client, &data_ns, "traffic", facet, "False").await;
        assert_eq!(reason, "AdminSecretMissing", "{facet}: {message}");
        assert!(message.contains("adminSecretRef"), "{message}");
    }
    let (_, message) = wait_condition(&client, &data_ns, "traffic", "Ready", "False").await;
    assert!(
        message.contains("KafkaReady") && message.contains("PostgresReady"),
        "{message}"
    );
    let jobs: Api<Job> = Api::namespaced(client.clone(), &data_ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let user_secrets = names::<Secret>(&client, &data_ns).await;
    for name in [
        "traffic-kafka-backend",
        "stream-processor-kafka",
        "traffic-pg-traffic-app",
    ] {
        assert!(
            user_secrets.contains(name),
            "Secret {name} in {user_secrets:?}"
        );
    }

    if target.probes {
        step("live probes between tier pods");
        probes(&client, &ns).await;
    }

    step("deletion removes what the policy produced");
    let mut policy = policies.get("traffic").await.unwrap();
    policy.spec.deletion_policy = DeletionPolicy::Delete;
    policies
        .replace("traffic", &PostParams::default(), &policy)
        .await
        .unwrap();
    policies
        .delete("traffic", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the policy and its objects to go",
        || async {
            let policy_gone = policies.get_opt("traffic").await.ok()?.is_none();
            let left = names::<NetworkPolicy>(&client, &ns).await.len()
                + names::<Secret>(&client, &ns).await.len()
                + names::<ConfigMap>(&client, &ns).await.len();
            (policy_gone && left == 0).then_some(())
        },
    )
    .await;

    step("namespaces with policies inside are deleted");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&ns, &data_ns] {
        namespaces
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(120),
        "both namespaces to go",
        || async {
            for ns in [&ns, &data_ns] {
                if namespaces.get_opt(ns).await.ok()?.is_some() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
}

const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

fn tier_pod(name: &str, tier: &str, args: &[&str]) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/tier": tier, "e2e": name}},
        "spec": {
            "containers": [{"name": "agnhost", "image": AGNHOST, "args": args}],
            "terminationGracePeriodSeconds": 0
        }
    }))
    .unwrap()
}

/// `agnhost connect <to> --timeout=5s` from `pod`: true when the connection was made.
fn connects(ns: &str, pod: &str, to: &str) -> bool {
    let kubeconfig = std::env::var("BULWARK_E2E_KUBECONFIG").unwrap();
    Command::new("kubectl")
        .args(["--kubeconfig", &kubeconfig, "-n", ns, "exec", pod, "--"])
        .args(["/agnhost", "connect", to, "--timeout=5s"])
        .status()
        .unwrap()
        .success()
}

async fn probes(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in [
        tier_pod("data", "data", &["netexec", "--http-port=5432"]),
        tier_pod("backend", "backend", &["pause"]),
        tier_pod("frontend", "frontend", &["pause"]),
    ] {
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "data"},
        "spec": {"selector": {"e2e": "data"}, "ports": [{"port": 5432}]}
    }))
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    for name in ["data", "backend", "frontend"] {
        eventually(
            Duration::from_secs(180),
            &format!("pod {name} running"),
            || async {
                let pod = pods.get(name).await.ok()?;
                let ip = pod.status.as_ref()?.pod_ip.clone()?;
                (pod.status?.phase.as_deref() == Some("Running")).then_some(ip)
            },
        )
        .await;
    }
    let data_ip = pods
        .get("data")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    // By name: the backend resolves the Service (DNS allowed) and reaches it (flow declared).
    assert!(
        connects(ns, "backend", "data:5432"),
        "backend to data:5432 is allowed"
    );
    assert!(
        !connects(ns, "frontend", &format!("{data_ip}:5432")),
        "frontend to data is denied"
    );
}
