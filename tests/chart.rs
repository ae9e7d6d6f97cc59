//! The Helm chart as users install it: `helm lint`, `helm template` accepted by the API server,
//! `helm install`, and its RBAC proven by running the operator with the chart's own
//! ServiceAccount token.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use base64::Engine;
use bulwark_testenv::ControlPlane;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
const CHART: &str = "charts/bulwark";

fn helm() -> Command {
    let mut cmd = Command::new(ControlPlane::shared().bin_dir().join("helm"));
    cmd.arg("--kubeconfig")
        .arg(ControlPlane::shared().kubeconfig_path())
        // Keep helm's cache and config out of the user's home.
        .env("HELM_CACHE_HOME", scratch_dir("helm-cache"))
        .env("HELM_CONFIG_HOME", scratch_dir("helm-config"))
        .env("HELM_DATA_HOME", scratch_dir("helm-data"));
    cmd
}

/// A directory inside the control plane's state dir, which goes away with the control plane.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = ControlPlane::shared().state_dir().join("chart").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `helm install <release> charts/bulwark -n <ns> --create-namespace <extra>`.
fn helm_install(release: &str, ns: &str, extra: &[&str]) {
    let out = helm()
        .args([
            "install",
            release,
            CHART,
            "--namespace",
            ns,
            "--create-namespace",
        ])
        .args(extra)
        .output()
        .unwrap();
    check(&format!("helm install {release}"), out);
}

/// A bearer token of the ServiceAccount, minted with the TokenRequest API.
async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let response = api
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"));
    response.status.expect("TokenRequest status").token
}

/// A kubeconfig that authenticates with `token` only.
fn token_kubeconfig(path: &Path, token: &str) {
    let cp = ControlPlane::shared();
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem());
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: u\n  user:\n    token: {}\n\
         contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
        cp.server_url(),
        serde_json::to_string(token).unwrap(),
    );
    std::fs::write(path, yaml).unwrap();
}

/// `bulwark run` as a child process, killed when dropped.
struct Operator(Child);

impl Operator {
    /// Runs the operator with `kubeconfig`, as the Deployment does: leader election in
    /// `release_ns`, plus `args`.
    fn start(kubeconfig: &Path, release_ns: &str, args: &[&str]) -> Operator {
        let child = Command::new(BIN)
            .args(["run", "--leader-elect", "--metrics-addr", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", release_ns)
            .env("POD_NAME", "bulwark-chart-test")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Operator(child)
    }
}

/// One operator at a time: a cluster-wide one would also reconcile the scoped test's policy.
static OPERATORS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    let _operator = Operator::start(&kubeconfig, release_ns, &[]);

    apply_policy(&client, &example_policy(&ns))
        .await
        .expect("example is accepted");
    let (reason, message) = wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    assert_eq!(reason, "Reconciled", "{message}");

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
    let _operator = Operator::start(&kubeconfig, release_ns, &["--namespace", &watched]);
    apply_policy(&client, &example_policy(&watched))
        .await
        .expect("example is accepted");
    let (reason, message) = wait_condition(&client, &watched, "traffic", "Ready", "True").await;
    assert_eq!(reason, "Reconciled", "{message}");
}
