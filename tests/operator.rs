//! The operator against a real control plane: from `kubectl apply` to produced, self-healing
//! NetworkPolicies, status, conflicts, deletion and restarts.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use support::*;

const GOLDEN: &str = "tests/golden/traffic-network-policies.yaml";

async fn network_policies(client: &kube::Client, ns: &str) -> BTreeMap<String, NetworkPolicy> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulwark"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|np| (np.name_any(), np))
        .collect()
}

/// Data of every produced Secret, by name.
async fn produced_secrets(
    client: &kube::Client,
    ns: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulwark"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            (s.metadata.name.unwrap_or_default(), data)
        })
        .collect()
}

/// Name, labels and spec of each NetworkPolicy: what the golden file pins down.
fn golden_view(nps: &BTreeMap<String, NetworkPolicy>) -> String {
    let view: Vec<serde_json::Value> = nps
        .values()
        .map(|np| {
            serde_json::json!({
                "name": np.name_any(),
                "labels": np.labels(),
                "spec": np.spec,
            })
        })
        .collect();
    serde_yaml::to_string(&view).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_reaches_ready_with_golden_network_policies_and_repairs_drift() {
    let client = client().await;
    let ns = namespace(&client, "example").await;
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns))
        .await
        .expect("example is accepted");

    let (reason, message) = wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    assert_eq!(reason, "Reconciled", "{message}");
    let (net_reason, _) = wait_condition(&client, &ns, "traffic", "NetworkReady", "True").await;
    assert_eq!(net_reason, "Applied");

    let nps = network_policies(&client, &ns).await;
    let owner_uid = Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
        .get("traffic")
        .await
        .unwrap()
        .uid()
        .unwrap();
    for np in nps.values() {
        let owners = np.owner_references();
        assert_eq!(owners.len(), 1, "{} has one owner", np.name_any());
        assert_eq!(owners[0].uid, owner_uid);
        assert_eq!(owners[0].controller, Some(true));
    }
    let actual = golden_view(&nps);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, &actual).unwrap();
    }
    let golden =
        std::fs::read_to_string(GOLDEN).expect("golden file exists (UPDATE_GOLDEN=1 writes it)");
    pretty_assertions::assert_eq!(golden, actual);

    // Deleted: back within 2 s, driven by the watch on owned NetworkPolicies.
    let policies = Api::<SecurityPolicy>::namespaced(client.clone(), &ns);
    let settled_status = eventually(
        Duration::from_secs(10),
        "the status to stop changing",
        || async {
            let before = policies.get("traffic").await.unwrap().status;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = policies.get("traffic").await.unwrap().status;
            (before == after).then_some(after)
        },
    )
    .await;
    let partial_before = operator.partial_reconciles();
    let rebuilt_before: Vec<u64> = ["network", "tls", "jwt"]
        .iter()
        .map(|f| operator.facet_reconciles(f))
        .collect();
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let deleted_at = Instant::now();
    api.delete("traffic-tier-data", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(2),
        "traffic-tier-data to be recreated",
        || async {
            api.get_opt("traffic-tier-data")
                .await
                .unwrap()
                .filter(|np| np.meta().deletion_timestamp.is_none())
        },
    )
    .await;
    eprintln!(
        "deleted NetworkPolicy recreated after {:?}",
        deleted_at.elapsed()
    );
    // Only the network facet was rebuilt; the others kept their conditions, certificates and
    // keys, and the status as a whole is what it was.
    eventually(
        Duration::from_secs(5),
        "a reconcile of the network facet alone",
        || async { (operator.partial_reconciles() > partial_before).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rebuilt: Vec<u64> = ["network", "tls", "jwt"]
        .iter()
        .zip(&rebuilt_before)
        .map(|(f, before)| operator.facet_reconciles(f) - before)
        .collect();
    assert_eq!(
        rebuilt,
        vec![1, 0, 0],
        "rebuilt for the deleted NetworkPolicy (network, tls, jwt)"
    );
    assert_eq!(
        policies.get("traffic").await.unwrap().status,
        settled_status,
        "repairing a NetworkPolicy changed the status"
    );

    // Edited: a port opened by hand is closed again within 2 s.
    let edited_at = Instant::now();
    let patch =
        serde_json::json!({"spec": {"ingress": [{"ports": [{"port": 22, "protocol": "TCP"}]}]}});
    api.patch(
        "traffic-tier-backend",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let want = nps["traffic-tier-backend"].spec.clone();
    eventually(
        Duration::from_secs(2),
        "traffic-tier-backend to be restored",
        || async {
            let live = api.get("traffic-tier-backend").await.unwrap();
            (live.spec == want).then_some(())
        },
    )
    .await;
    eprintln!(
        "edited NetworkPolicy restored after {:?}",
        edited_at.elapsed()
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_resync_send_zero_writes_and_change_nothing() {
    let client = client().await;
    let ns = namespace(&client, "restart").await;
    let first = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    // Let the reconcile triggered by our own status write and events settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.stop().await;

    let before_versions: BTreeMap<String, Option<String>> = network_policies(&client, &ns)
        .await
        .into_iter()
        .map(|(n, np)| (n, np.metadata.resource_version))
        .collect();
    let secrets_before = produced_secrets(&client, &ns).await;
    assert_eq!(
        secrets_before.len(),
        5,
        "CA, three certificates, the JWT signing key"
    );
    let writes_before = audited_writes(&ns).len();

    for restart in 1..=5 {
        let operator = Operator::start(&client, &ns);
        operator.wait_reconciled().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let writes_after = audited_writes(&ns);
        assert_eq!(
            writes_after.len(),
            writes_before,
            "restart {restart}: a reconcile with nothing changed wrote: {:?}",
            &writes_after[writes_before..]
        );
        assert_eq!(operator.metrics.writes("NetworkPolicy"), 0);
        assert_eq!(operator.metrics.writes("Secret"), 0);
        operator.stop().await;
    }
    let after_versions: BTreeMap<String, Option<String>> = network_policies(&client, &ns)
        .await
        .into_iter()
        .map(|(n, np)| (n, np.metadata.resource_version))
        .collect();
    assert_eq!(
        before_versions, after_versions,
        "restarts changed a produced object"
    );
    assert_eq!(
        secrets_before,
        produced_secrets(&client, &ns).await,
        "restarts changed a key or certificate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policies_are_rejected_naming_the_field() {
    let client = client().await;
    let ns = namespace(&client, "invalid").await;
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let base = serde_json::to_value(example_policy(&ns)).unwrap();

    let cases: [(&str, serde_json::Value, &str); 5] = [
        (
            "unknown tier in a flow",
            serde_json::json!({"network": {"flows": [{"from": "frontend", "to": "cache", "ports": [{"port": 6379}]}]}}),
            "spec.network.flows",
        ),
        (
            "port 0",
            serde_json::json!({"network": {"flows": [{"from": "frontend", "to": "backend", "ports": [{"port": 0}]}]}}),
            "spec.network.flows[0].ports[0].port",
        ),
        (
            "duplicate secret names",
            serde_json::json!({"jwt": [{"name": "api", "secretName": "kafka-tls"}]}),
            "secret names must be unique",
        ),
        (
            "renewBefore not below duration",
            serde_json::json!({"tls": {"defaults": {"duration": "24h", "renewBefore": "48h"}, "certificates": [{"name": "api", "secretName": "api-tls", "dnsNames": ["api.example.com"]}]}}),
            "spec.tls.certificates",
        ),
        (
            "invalid role identifier",
            serde_json::json!({"postgres": {"host": "pg", "database": "d", "roles": [{"name": "Bad-Name", "access": "ReadOnly"}]}}),
            "spec.postgres.roles[0].name",
        ),
    ];
    for (i, (what, overlay, field)) in cases.into_iter().enumerate() {
        let mut body = base.clone();
        body["metadata"] = serde_json::json!({"name": format!("bad-{i}"), "namespace": ns});
        let spec = body["spec"].as_object_mut().unwrap();
        for (k, v) in overlay.as_object().unwrap() {
            spec.insert(k.clone(), v.clone());
        }
        let policy: SecurityPolicy = serde_json::from_value(body).unwrap();
        let err = api
            .create(&PostParams::default(), &policy)
            .await
            .expect_err(what);
        let kube::Error::Api(status) = err else {
            panic!("{what}: expected an API error, got {err}")
        };
        assert_eq!(status.code, 422, "{what}: {}", status.message);
        assert!(
            status.message.contains(field),
            "{what}: message {:?} does not name {field}",
            status.message
        );
    }
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_object_yields_conflict_and_stays_untouched() {
    let client = client().await;
    let ns = namespace(&client, "conflict").await;
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let foreign = NetworkPolicy {
        metadata: ObjectMeta {
            name: Some("traffic-tier-data".into()),
            labels: Some([("owner".to_string(), "dba-team".to_string())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..NetworkPolicySpec::default()
        }),
    };
    let foreign = api.create(&PostParams::default(), &foreign).await.unwrap();
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();

    let (reason, message) = wait_condition(&client, &ns, "traffic", "NetworkReady", "False").await;
    assert_eq!(reason, "Conflict");
    assert!(
        message.contains("NetworkPolicy traffic-tier-data"),
        "{message}"
    );
    let (ready_reason, _) = wait_condition(&client, &ns, "traffic", "Ready", "False").await;
    assert_eq!(ready_reason, "Conflict");

    let live = api.get("traffic-tier-data").await.unwrap();
    assert_eq!(
        live.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(live.spec, foreign.spec);
    assert!(live.owner_references().is_empty());
    // The rest of the facet is still produced.
    assert!(api.get_opt("traffic-tier-backend").await.unwrap().is_some());
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_flows_and_tiers_lose_their_network_policies() {
    let client = client().await;
    let ns = namespace(&client, "shrink").await;
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    assert!(
        network_policies(&client, &ns)
            .await
            .contains_key("traffic-tier-frontend")
    );

    let network = policy.spec.network.as_mut().unwrap();
    network
        .flows
        .retain(|f| f.from != "frontend" && f.to != "frontend");
    network.ingress.clear();
    network.allow_dns = false;
    apply_policy(&client, &policy).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "frontend and DNS policies to go",
        || async {
            let names: Vec<String> = network_policies(&client, &ns).await.into_keys().collect();
            (names
                == [
                    "traffic-default-deny",
                    "traffic-tier-backend",
                    "traffic-tier-data",
                ])
            .then_some(())
        },
    )
    .await;
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_follows_deletion_policy() {
    let client = client().await;
    for (ns_name, deletion_policy) in [("retain", "Retain"), ("delete", "Delete")] {
        let ns = namespace(&client, ns_name).await;
        let operator = Operator::start(&client, &ns);
        let mut policy = example_policy(&ns);
        policy.spec.deletion_policy = serde_json::from_value(deletion_policy.into()).unwrap();
        apply_policy(&client, &policy).await.unwrap();
        wait_condition(&client, &ns, "traffic", "Ready", "True").await;
        let live = Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
            .get("traffic")
            .await
            .unwrap();
        assert!(live.finalizers().iter().any(|f| f == "bulwark.dev/cleanup"));
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let issued = secrets.get("kafka-tls").await.unwrap();
        assert_eq!(issued.owner_references()[0].uid, live.uid().unwrap());

        Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
            .delete("traffic", &DeleteParams::default())
            .await
            .unwrap();
        eventually(Duration::from_secs(30), "the policy to be gone", || async {
            let api = Api::<SecurityPolicy>::namespaced(client.clone(), &ns);
            api.get_opt("traffic")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
        eventually(
            Duration::from_secs(30),
            "NetworkPolicies to be gone",
            || async {
                network_policies(&client, &ns)
                    .await
                    .is_empty()
                    .then_some(())
            },
        )
        .await;

        if deletion_policy == "Retain" {
            // Give the garbage collector time to act if it wrongly could.
            tokio::time::sleep(Duration::from_secs(3)).await;
            for name in ["traffic-ca", "kafka-tls", "postgres-tls", "api-tls"] {
                let kept = secrets
                    .get_opt(name)
                    .await
                    .unwrap()
                    .expect("Retain keeps the Secret");
                assert!(
                    kept.owner_references().is_empty(),
                    "retained {name} loses its owner reference"
                );
                if name == "kafka-tls" {
                    assert_eq!(kept.data, issued.data, "retained credentials are unchanged");
                }
            }
        } else {
            eventually(
                Duration::from_secs(60),
                "the garbage collector to delete the Secrets",
                || async {
                    let left = secrets
                        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulwark"))
                        .await
                        .unwrap();
                    left.items.is_empty().then_some(())
                },
            )
            .await;
        }
        operator.stop().await;
    }
}
