//! The chart as the cluster runs it, minus the kubelet: `helm install` into the local control
//! plane, and the operator binary run with a token of the chart's ServiceAccount.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use base64::Engine;
use bulwark_testenv::ControlPlane;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};

pub const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
pub const CHART: &str = "charts/bulwark";

pub fn helm() -> Command {
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
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = ControlPlane::shared().state_dir().join("chart").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn check(what: &str, out: Output) -> String {
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
pub fn helm_install(release: &str, ns: &str, extra: &[&str]) {
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
pub async fn service_account_token(client: &kube::Client, ns: &str, name: &str) -> String {
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
pub fn token_kubeconfig(path: &Path, token: &str) {
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
pub struct ChartOperator(Child);

impl ChartOperator {
    /// Runs the operator with `kubeconfig`, as the Deployment does: leader election in
    /// `release_ns`, plus `args`.
    pub fn start(kubeconfig: &Path, release_ns: &str, args: &[&str]) -> ChartOperator {
        let child = bulwark_testenv::spawn_with_parent(
            Command::new(BIN)
                .args(["run", "--leader-elect", "--metrics-addr", "127.0.0.1:0"])
                .args(args)
                .env("KUBECONFIG", kubeconfig)
                .env("POD_NAMESPACE", release_ns)
                .env("POD_NAME", "bulwark-chart-test")
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        ChartOperator(child)
    }
}

impl Drop for ChartOperator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
