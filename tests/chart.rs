//! The Helm chart as users install it: `helm lint`, `helm template` accepted by the API server,
//! `helm install`, and its RBAC proven by running the operator with the chart's own
//! ServiceAccount token on the full example, data tier included.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bulwark_testenv::ControlPlane;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use support::chart::*;
use support::*;

/// One operator at a time: a cluster-wide one would also reconcile the scoped test's policy.
static OPERATORS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[test]
fn helm_lint_is_clean() {
    for values in [&[][..], &["--set", "watchNamespaces={a,b}"][..]] {
        let out = helm()
            .args(["lint", "--strict", CHART])
            .args(values)
            .output()
            .unwrap();
        let text = check("helm lint", out);
        assert!(text.contains("0 chart(s) failed"), "{text}");
        assert!(!text.contains("[WARNING]"), "{text}");
    }
}

#[test]
fn chart_crd_and_rendered_manifests_are_fresh() {
    assert_eq!(
        std::fs::read_to_string("charts/bulwark/crds/securitypolicies.bulwark.dev.yaml").unwrap(),
        std::fs::read_to_string("crds/securitypolicies.bulwark.dev.yaml").unwrap(),
        "run hack/render-manifests.sh"
    );
    let rendered = check(
        "hack/render-manifests.sh -",
        Command::new("hack/render-manifests.sh")
            .arg("-")
            .env("HELM", ControlPlane::shared().bin_dir().join("helm"))
            .output()
            .unwrap(),
    );
    assert!(
        rendered == std::fs::read_to_string("deploy/bulwark.yaml").unwrap(),
        "deploy/bulwark.yaml is stale: run hack/render-manifests.sh"
    );
}

/// Creates a namespace that enforces (and warns about) Pod Security "restricted".
async fn restricted_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_string());
    ns.metadata.labels = Some(
        [
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/warn", "restricted"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    api.create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

/// `helm template dry-run charts/bulwark -n <ns> <values> | kubectl apply --dry-run=server -f -`;
/// returns kubectl's (stdout, stderr).
fn template_and_dry_run(ns: &str, values: &[&str]) -> (String, String) {
    let rendered = check(
        "helm template",
        helm()
            .args(["template", "dry-run", CHART, "--namespace", ns])
            .arg("--include-crds")
            .args(values)
            .output()
            .unwrap(),
    );
    assert!(rendered.contains("kind: Deployment"), "{rendered}");
    let mut kubectl = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(ControlPlane::shared().kubeconfig_path())
        .args(["apply", "--dry-run=server", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kubectl
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let out = kubectl.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (check("kubectl apply --dry-run=server", out), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_template_is_accepted_by_the_api_server() {
    let client = client().await;
    for (ns, values) in [
        ("chart-dry-run", &[][..]),
        (
            "chart-dry-run-scoped",
            &["--set", "watchNamespaces={chart-dry-run-scoped}"][..],
        ),
    ] {
        restricted_namespace(&client, ns).await;
        let (applied, warnings) = template_and_dry_run(ns, values);
        for object in [
            "customresourcedefinition.apiextensions.k8s.io/securitypolicies.bulwark.dev",
            "deployment.apps/dry-run-bulwark",
            "serviceaccount/dry-run-bulwark",
            "service/dry-run-bulwark-metrics",
            "poddisruptionbudget.policy/dry-run-bulwark",
            "networkpolicy.networking.k8s.io/dry-run-bulwark",
            "role.rbac.authorization.k8s.io/dry-run-bulwark-leader-election",
        ] {
            assert!(
                applied.contains(object),
                "{object} missing from:\n{applied}"
            );
        }
        // The API server's PodSecurity admission finds nothing to warn about under "restricted".
        assert!(!warnings.contains("PodSecurity"), "{warnings}");
    }

    // The check above is live: a pod allowed to escalate privileges draws the warning.
    let (_, warnings) = template_and_dry_run(
        "chart-dry-run",
        &["--set", "securityContext.allowPrivilegeEscalation=true"],
    );
    assert!(
        warnings.contains("would violate PodSecurity \"restricted"),
        "{warnings}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reaches_ready_with_the_charts_service_account() {
    let client = client().await;
    let release_ns = "bulwark-system";
    helm_install("bulwark", release_ns, &[]);
    let ns = namespace(&client, "chart-example").await;

    let token = service_account_token(&client, release_ns, "bulwark").await;
    let kubeconfig = scratch_dir("cluster-wide").join("kubeconfig");
    token_kubeconfig(&kubeconfig, &token);

    // As the Deployment runs it by default: cluster-wide.
    let _serial = OPERATORS.lock().await;
    let _operator = ChartOperator::start(&kubeconfig, release_ns, &[]);

    // The full example, data tier included: the role and user Jobs, their pods' termination
    // messages and every Secret are reached with the chart's RBAC only.
    let _data_tier = full_example_to_ready(&client, &ns, &scratch_dir("cluster-wide")).await;

    // Events (events.k8s.io) were recorded under the ServiceAccount's permissions.
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "an Event from bulwark", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| e.reporting_controller.as_deref() == Some("bulwark"))
            .then_some(())
    })
    .await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), release_ns);
    let holder = leases
        .get("bulwark-leader")
        .await
        .expect("the leader Lease lives in the release namespace")
        .spec
        .and_then(|s| s.holder_identity);
    // The identity starts with POD_NAME, as in the Deployment.
    assert!(
        holder
            .as_deref()
            .is_some_and(|h| h.starts_with("bulwark-chart-test")),
        "{holder:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespaces_confines_the_service_account() {
    let client = client().await;
    let watched = namespace(&client, "chart-watched").await;
    let other = namespace(&client, "chart-other").await;
    let release_ns = "bulwark-scoped";
    helm_install(
        "scoped",
        release_ns,
        &["--set", &format!("watchNamespaces={{{watched}}}")],
    );

    let token = service_account_token(&client, release_ns, "scoped-bulwark").await;
    let sa_client = ControlPlane::shared().client_with_token(&token).await;

    let allowed: Api<Secret> = Api::namespaced(sa_client.clone(), &watched);
    allowed
        .list(&ListParams::default())
        .await
        .expect("Secrets of a watched namespace are readable");

    let denied: Api<Secret> = Api::namespaced(sa_client.clone(), &other);
    match denied.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!(
            "expected 403 listing Secrets in {}, got {other:?}",
            "chart-other"
        ),
    }
    let cluster_wide: Api<Secret> = Api::all(sa_client);
    match cluster_wide.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 listing Secrets cluster-wide, got {other:?}"),
    }

    // The per-namespace Roles are enough to take the example to Ready in the watched namespace.
    let kubeconfig = scratch_dir("scoped").join("kubeconfig");
    token_kubeconfig(&kubeconfig, &token);
    let _serial = OPERATORS.lock().await;
    let _operator = ChartOperator::start(&kubeconfig, release_ns, &["--namespace", &watched]);
    apply_policy(&client, &example_policy(&watched))
        .await
        .expect("example is accepted");
    let (reason, message) = wait_condition(&client, &watched, "traffic", "Ready", "True").await;
    assert_eq!(reason, "Reconciled", "{message}");
}
