//! The shared control plane is a real Kubernetes: version, garbage collection, RBAC, audit, CRDs.

use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_testenv::{ControlPlane, k8s_version};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn create_namespace(client: &kube::Client, prefix: &str) -> String {
    let name = unique(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[test]
fn kubectl_reports_the_expected_server_version() {
    let cp = ControlPlane::shared();
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig_path())
        .args(["version", "-o", "json"])
        .output()
        .expect("running kubectl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["serverVersion"]["gitVersion"].as_str(),
        Some(format!("v{}", k8s_version()).as_str()),
        "{json}"
    );
}

#[tokio::test]
async fn garbage_collector_deletes_dependents_of_a_deleted_owner() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = create_namespace(&client, "gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    let pp = PostParams::default();

    let owner = cms.create(&pp, &config_map("owner")).await.unwrap();
    let mut dependent = config_map("dependent");
    dependent.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap(),
        ..Default::default()
    }]);
    cms.create(&pp, &dependent).await.unwrap();
    cms.create(&pp, &config_map("bystander")).await.unwrap();

    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cms.get_opt("dependent").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "dependent still exists 30s after its owner was deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cms.get_opt("bystander").await.unwrap().is_some());
}

#[tokio::test]
async fn service_account_token_is_subject_to_rbac() {
    let cp = ControlPlane::shared();
    let admin = cp.client().await;
    let ns = create_namespace(&admin, "rbac").await;
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("probe".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.unwrap();
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_token_request("probe", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .expect("TokenRequest status")
        .token;

    let as_sa = cp.client_with_token(&token).await;
    let secrets: Api<Secret> = Api::namespaced(as_sa.clone(), &ns);
    let denied = secrets.list(&Default::default()).await.unwrap_err();
    assert_eq!(status_code(&denied), Some(403), "{denied}");

    let role = Role {
        metadata: ObjectMeta {
            name: Some("list-secrets".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            verbs: vec!["list".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("probe-lists-secrets".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "list-secrets".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "probe".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();

    // The RBAC authorizer reads from an informer cache, so the grant lands eventually.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match secrets.list(&Default::default()).await {
            Ok(_) => break,
            Err(e) if status_code(&e) == Some(403) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("listing secrets with the granted token: {e}"),
        }
    }
    let elsewhere = Api::<Secret>::namespaced(as_sa, "default")
        .list(&Default::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&elsewhere), Some(403), "{elsewhere}");
}

#[tokio::test]
async fn audit_log_records_writes_but_not_reads() {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let name = unique("audited");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &config_map(&name))
        .await
        .unwrap();
    cms.get(&name).await.unwrap();
    cms.delete(&name, &DeleteParams::default()).await.unwrap();

    let log = std::fs::read_to_string(cp.audit_log_path()).unwrap();
    let verbs: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["objectRef"]["name"] == name.as_str())
        .map(|e| {
            assert_eq!(e["level"], "Metadata", "{e}");
            e["verb"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(verbs, ["create", "delete"]);
}

#[tokio::test]
async fn installed_crds_are_served_and_validated() {
    let cp = ControlPlane::shared();
    let crd: CustomResourceDefinition = serde_json::from_value(serde_json::json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.testenv.bulwark.dev"},
        "spec": {
            "group": "testenv.bulwark.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}
                }}}
            }]
        }
    }))
    .unwrap();
    cp.install_crds(std::slice::from_ref(&crd)).await.unwrap();
    cp.install_crds(&[crd]).await.unwrap();

    let client = cp.client().await;
    let gvk = GroupVersionKind::gvk("testenv.bulwark.dev", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        client,
        "default",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let widget = |name: &str, size: serde_json::Value| -> DynamicObject {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "testenv.bulwark.dev/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}
        }))
        .unwrap()
    };
    let name = unique("w");
    widgets
        .create(&PostParams::default(), &widget(&name, 3.into()))
        .await
        .unwrap();
    let invalid = widgets
        .create(
            &PostParams::default(),
            &widget(&unique("bad"), "big".into()),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&invalid), Some(422), "{invalid}");
}

#[test]
fn components_listen_on_loopback_only() {
    let cp = ControlPlane::shared();
    let pids = cp.pids();
    assert_eq!(pids.len(), 3);
    let out = Command::new("ss").args(["-ltnpH"]).output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    let mut seen = std::collections::BTreeSet::new();
    for line in table.lines() {
        let Some(pid) = pids.iter().find(|p| line.contains(&format!("pid={p},"))) else {
            continue;
        };
        seen.insert(*pid);
        let local = line.split_whitespace().nth(3).unwrap();
        assert!(
            local.starts_with("127.0.0.1:"),
            "pid {pid} listens on {local}: {line}"
        );
    }
    // Every component listens somewhere (etcd: client + peer, apiserver, kcm health).
    assert_eq!(
        seen.len(),
        3,
        "listeners found for {seen:?} of {pids:?}:\n{table}"
    );
}

#[test]
fn a_component_that_fails_to_start_is_reported_with_its_log() {
    let opts = bulwark_testenv::ControlPlaneOptions {
        extra_apiserver_args: vec!["--no-such-flag=1".into()],
        ..Default::default()
    };
    let err = format!("{:#}", ControlPlane::start(opts).unwrap_err());
    assert!(err.contains("kube-apiserver exited"), "{err}");
    assert!(err.contains("no-such-flag"), "{err}");
}
