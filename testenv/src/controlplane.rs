//! A real etcd + kube-apiserver + kube-controller-manager on loopback ports.

use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};

use crate::process::{self, StopPolicy};
use crate::tls::{self, Ca};

/// Kubernetes version the harness expects unless `BULWARK_K8S_VERSION` says otherwise.
pub const DEFAULT_K8S_VERSION: &str = "1.35.4";

const FIELD_MANAGER: &str = "bulwark-testenv";
const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc";

/// The Kubernetes version in use, without a leading `v` (e.g. `1.35.4`).
pub fn k8s_version() -> String {
    std::env::var("BULWARK_K8S_VERSION")
        .ok()
        .map(|v| v.trim().trim_start_matches('v').to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_K8S_VERSION.to_string())
}

/// Directory holding etcd, kube-apiserver and kube-controller-manager (and helm).
///
/// `KUBEBUILDER_ASSETS` wins; otherwise `${XDG_CACHE_HOME:-$HOME/.cache}/bulwark/k8s-v<version>/bin`.
pub fn assets_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("KUBEBUILDER_ASSETS").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
            cache
                .join("bulwark")
                .join(format!("k8s-v{}", k8s_version()))
                .join("bin")
        }
    };
    let missing: Vec<&str> = Component::ALL
        .iter()
        .map(|c| c.binary())
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "control-plane binaries missing from {} ({}): run `make controlplane` to build them \
             (or point KUBEBUILDER_ASSETS at a directory that has them)",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(dir)
}

/// Knobs for [`ControlPlane::start`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Where the binaries are; `None` means [`assets_dir`].
    pub bin_dir: Option<PathBuf>,
    /// How long to wait for the apiserver to be ready and the controller-manager to act.
    pub start_timeout: Duration,
    /// Appended to the kube-apiserver command line (later flags win).
    pub extra_apiserver_args: Vec<String>,
    /// Appended to the kube-controller-manager command line.
    pub extra_controller_manager_args: Vec<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            bin_dir: None,
            // Two busy cores can take the apiserver well past 30 s to finish its post-start hooks.
            start_timeout: Duration::from_secs(180),
            extra_apiserver_args: Vec::new(),
            extra_controller_manager_args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
}

impl Component {
    pub(crate) const ALL: [Component; 3] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
    ];

    pub(crate) fn binary(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
        }
    }
}

/// File layout of a state directory (shared by tied and detached clusters).
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub(crate) fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
    pub(crate) fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
    fn audit_policy(&self) -> PathBuf {
        self.dir.join("audit-policy.yaml")
    }
    pub(crate) fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub(crate) fn log(&self, c: Component) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", c.binary()))
    }
    pub(crate) fn pid_file(&self, c: Component) -> PathBuf {
        self.dir.join(format!("{}.pid", c.binary()))
    }
}

/// Everything written to disk before any process starts.
pub(crate) struct Prepared {
    pub layout: Layout,
    bin_dir: PathBuf,
    etcd_client_port: u16,
    etcd_peer_port: u16,
    apiserver_port: u16,
    controller_manager_port: u16,
    ca_pem: String,
}

impl Prepared {
    /// Generates the PKI, kubeconfig and audit policy in `dir` and picks free ports.
    pub(crate) fn new(dir: &Path, bin_dir: PathBuf) -> anyhow::Result<Prepared> {
        let layout = Layout {
            dir: dir.to_path_buf(),
        };
        fs::create_dir_all(layout.dir.join("pki"))?;
        fs::create_dir_all(layout.dir.join("logs"))?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);

        let ca = Ca::new("bulwark-testenv CA")?;
        let (serving_cert, serving_key) =
            ca.issue_server("kube-apiserver", &["localhost"], &[loopback])?;
        let (admin_cert, admin_key) = ca.issue_client("bulwark-admin", Some("system:masters"))?;
        let (sa_key, sa_pub) = tls::signing_key()?;
        let files = [
            ("ca.crt", ca.pem()),
            ("apiserver.crt", serving_cert),
            ("apiserver.key", serving_key),
            ("admin.crt", admin_cert.clone()),
            ("admin.key", admin_key.clone()),
            ("sa.key", sa_key),
            ("sa.pub", sa_pub),
        ];
        for (name, pem) in &files {
            write_private(&layout.pki(name), pem)?;
        }
        fs::write(layout.audit_policy(), AUDIT_POLICY)?;

        let ports = process::free_ports(4)?;
        let prepared = Prepared {
            layout,
            bin_dir,
            etcd_client_port: ports[0],
            etcd_peer_port: ports[1],
            apiserver_port: ports[2],
            controller_manager_port: ports[3],
            ca_pem: ca.pem(),
        };
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: bulwark-testenv\n  cluster:\n    \
             server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: bulwark-admin\n  \
             user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n\
             - name: bulwark-testenv\n  context:\n    cluster: bulwark-testenv\n    user: bulwark-admin\n\
             current-context: bulwark-testenv\n",
            server = prepared.server_url(),
            ca = b64(&prepared.ca_pem),
            cert = b64(&admin_cert),
            key = b64(&admin_key),
        );
        write_private(&prepared.layout.kubeconfig(), &kubeconfig)?;
        Ok(prepared)
    }

    pub(crate) fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    fn args(&self, c: Component) -> Vec<String> {
        let l = &self.layout;
        let p = |path: PathBuf| path.display().to_string();
        let etcd_client = format!("http://127.0.0.1:{}", self.etcd_client_port);
        let etcd_peer = format!("http://127.0.0.1:{}", self.etcd_peer_port);
        match c {
            Component::Etcd => vec![
                "--name=testenv".into(),
                format!("--data-dir={}", p(l.etcd_data())),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=testenv={etcd_peer}"),
                "--initial-cluster-state=new".into(),
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
            Component::ApiServer => vec![
                format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", self.apiserver_port),
                format!("--cert-dir={}", p(l.pki("apiserver-generated"))),
                format!("--tls-cert-file={}", p(l.pki("apiserver.crt"))),
                format!("--tls-private-key-file={}", p(l.pki("apiserver.key"))),
                format!("--client-ca-file={}", p(l.pki("ca.crt"))),
                "--authorization-mode=RBAC".into(),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"),
                format!("--service-account-key-file={}", p(l.pki("sa.pub"))),
                format!("--service-account-signing-key-file={}", p(l.pki("sa.key"))),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--allow-privileged=true".into(),
                // The lease reconciler would publish 127.0.0.1, which Endpoints validation rejects.
                "--endpoint-reconciler-type=none".into(),
                format!("--audit-policy-file={}", p(l.audit_policy())),
                format!("--audit-log-path={}", p(l.audit_log())),
                "--audit-log-format=json".into(),
                // Blocking mode writes each event before the response, so tests can count at once.
                "--audit-log-mode=blocking".into(),
                "--audit-log-maxsize=0".into(),
            ],
            Component::ControllerManager => {
                // No authentication/authorization kubeconfig: without a front proxy, delegated
                // authn only logs missing requestheader CA errors; health paths stay open anyway.
                vec![
                    format!("--kubeconfig={}", p(l.kubeconfig())),
                    "--bind-address=127.0.0.1".into(),
                    format!("--secure-port={}", self.controller_manager_port),
                    format!("--cert-dir={}", p(l.pki("controller-manager-generated"))),
                    "--controllers=*".into(),
                    "--leader-elect=false".into(),
                    "--use-service-account-credentials=false".into(),
                    format!("--service-account-private-key-file={}", p(l.pki("sa.key"))),
                    format!("--root-ca-file={}", p(l.pki("ca.crt"))),
                    // The default 20 qps makes garbage collection visibly slow under test load.
                    "--kube-api-qps=100".into(),
                    "--kube-api-burst=200".into(),
                ]
            }
        }
    }

    fn command(&self, c: Component, extra: &[String]) -> anyhow::Result<Command> {
        let log_path = self.layout.log(c);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(self.bin_dir.join(c.binary()));
        cmd.args(self.args(c))
            .args(extra)
            .current_dir(&self.layout.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(cmd)
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Metadata for every write; nothing for reads, so the log is a count of writes.
const AUDIT_POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [\"RequestReceived\"]
rules:
- level: Metadata
  verbs: [\"create\", \"update\", \"patch\", \"delete\", \"deletecollection\"]
- level: None
";

/// How a started cluster relates to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Killed with this process (pdeathsig + atexit).
    Tied,
    /// Own session, survives this process; pids written to the state dir.
    Detached,
}

pub(crate) struct Proc {
    pub component: Component,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(anyhow!(
                "{} exited ({status}); last lines of {}:\n{}",
                self.component.binary(),
                self.log.display(),
                process::log_tail(&self.log, 40)
            )),
        }
    }
}

/// Starts the three components and waits until they work; on failure nothing is left running.
pub(crate) fn launch(
    prepared: &Prepared,
    opts: &ControlPlaneOptions,
    lifetime: Lifetime,
) -> anyhow::Result<Vec<Proc>> {
    let mut procs = Vec::new();
    let result = launch_into(prepared, opts, lifetime, &mut procs);
    if let Err(e) = result {
        kill_procs(&mut procs);
        return Err(e);
    }
    Ok(procs)
}

fn launch_into(
    prepared: &Prepared,
    opts: &ControlPlaneOptions,
    lifetime: Lifetime,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + opts.start_timeout;
    spawn(prepared, Component::Etcd, &[], lifetime, procs)?;
    spawn(
        prepared,
        Component::ApiServer,
        &opts.extra_apiserver_args,
        lifetime,
        procs,
    )?;
    let kubeconfig = Kubeconfig::read_from(prepared.layout.kubeconfig())?;
    process::block_on(wait_for_apiserver(&kubeconfig, procs, deadline))?;
    // kcm gives up after a few seconds without a healthy apiserver, so it starts only now.
    spawn(
        prepared,
        Component::ControllerManager,
        &opts.extra_controller_manager_args,
        lifetime,
        procs,
    )?;
    process::block_on(wait_for_controller_manager(&kubeconfig, procs, deadline))
}

fn spawn(
    prepared: &Prepared,
    c: Component,
    extra: &[String],
    lifetime: Lifetime,
    procs: &mut Vec<Proc>,
) -> anyhow::Result<()> {
    let cmd = prepared.command(c, extra)?;
    let child = match lifetime {
        Lifetime::Tied => process::spawn_tied(cmd, None),
        Lifetime::Detached => process::spawn_detached(cmd),
    }
    .with_context(|| format!("starting {}", prepared.bin_dir.join(c.binary()).display()))?;
    match lifetime {
        Lifetime::Tied => process::track_process(child.id(), StopPolicy::KILL),
        Lifetime::Detached => fs::write(prepared.layout.pid_file(c), child.id().to_string())?,
    }
    procs.push(Proc {
        component: c,
        child,
        log: prepared.layout.log(c),
    });
    Ok(())
}

fn kill_procs(procs: &mut Vec<Proc>) {
    let pids: Vec<(i32, StopPolicy)> = procs
        .iter()
        .rev()
        .map(|p| (p.child.id() as i32, StopPolicy::KILL))
        .collect();
    for (pid, _) in &pids {
        process::untrack_process(*pid as u32);
    }
    process::stop_children(&pids);
    procs.clear();
}

const POLL: Duration = Duration::from_millis(250);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn client_for(kubeconfig: &Kubeconfig) -> anyhow::Result<kube::Client> {
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// One `/readyz` probe: `Ok(())` when the apiserver answers `ok`.
pub(crate) async fn readyz(client: &kube::Client) -> anyhow::Result<()> {
    let req = http::Request::get("/readyz").body(Vec::new())?;
    let body = tokio::time::timeout(REQUEST_TIMEOUT, client.request_text(req))
        .await
        .map_err(|_| anyhow!("/readyz timed out"))??;
    if body.trim() == "ok" {
        Ok(())
    } else {
        bail!("/readyz said {body:?}")
    }
}

async fn wait_for_apiserver(
    kubeconfig: &Kubeconfig,
    procs: &mut [Proc],
    deadline: Instant,
) -> anyhow::Result<()> {
    let client = client_for(kubeconfig).await?;
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        let last = match readyz(&client).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            let apiserver = procs
                .iter()
                .find(|p| p.component == Component::ApiServer)
                .map(|p| p.log.clone())
                .unwrap_or_default();
            bail!(
                "kube-apiserver not ready in time (last /readyz: {last:#}); last lines of {}:\n{}",
                apiserver.display(),
                process::log_tail(&apiserver, 40)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The serviceaccount controller creating `default/default` shows kcm is up and reconciling.
async fn wait_for_controller_manager(
    kubeconfig: &Kubeconfig,
    procs: &mut [Proc],
    deadline: Instant,
) -> anyhow::Result<()> {
    let client = client_for(kubeconfig).await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
    loop {
        for p in procs.iter_mut() {
            p.check_running()?;
        }
        let last = match tokio::time::timeout(REQUEST_TIMEOUT, accounts.get_opt("default")).await {
            Ok(Ok(Some(_))) => return Ok(()),
            Ok(Ok(None)) => anyhow!("ServiceAccount default/default does not exist yet"),
            Ok(Err(e)) => e.into(),
            Err(_) => anyhow!("request timed out"),
        };
        if Instant::now() >= deadline {
            let log = procs
                .iter()
                .find(|p| p.component == Component::ControllerManager)
                .map(|p| p.log.clone())
                .unwrap_or_default();
            bail!(
                "kube-controller-manager did not reconcile in time ({last:#}); last lines of {}:\n{}",
                log.display(),
                process::log_tail(&log, 40)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A running control plane whose processes die with this process; Drop stops it early.
pub struct ControlPlane {
    layout: Layout,
    bin_dir: PathBuf,
    server_url: String,
    ca_pem: String,
    kubeconfig_path: PathBuf,
    audit_log_path: PathBuf,
    /// Ports, paths and flags, kept so the apiserver can be restarted exactly as it first ran.
    prepared: Prepared,
    opts: ControlPlaneOptions,
    procs: Mutex<Vec<Proc>>,
}

impl ControlPlane {
    /// Starts a fresh cluster in a new state dir under the system temp dir.
    pub fn start(opts: ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let bin_dir = match &opts.bin_dir {
            Some(dir) => dir.clone(),
            None => assets_dir()?,
        };
        let dir = process::create_state_dir("k8s")?;
        let started = Prepared::new(&dir, bin_dir.clone())
            .and_then(|prepared| Ok((launch(&prepared, &opts, Lifetime::Tied)?, prepared)));
        let (procs, prepared) = match started {
            Ok(ok) => ok,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                process::untrack_dir(&dir);
                return Err(e);
            }
        };
        Ok(ControlPlane {
            bin_dir,
            server_url: prepared.server_url(),
            ca_pem: prepared.ca_pem.clone(),
            kubeconfig_path: prepared.layout.kubeconfig(),
            audit_log_path: prepared.layout.audit_log(),
            layout: prepared.layout.clone(),
            prepared,
            opts,
            procs: Mutex::new(procs),
        })
    }

    /// Stops only the kube-apiserver, abruptly (SIGKILL: a graceful shutdown keeps serving for
    /// up to a minute), as a crash or a partition would; etcd and kube-controller-manager keep
    /// running. A no-op when it is already stopped.
    pub fn stop_apiserver(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = procs
            .iter()
            .position(|p| p.component == Component::ApiServer)
        else {
            return;
        };
        let proc = procs.remove(at);
        let pid = proc.child.id();
        process::untrack_process(pid);
        process::stop_children(&[(pid as i32, StopPolicy::KILL)]);
    }

    /// Starts the kube-apiserver again with the same flags, port and certificates, and waits for
    /// `/readyz`. It dies with this process like the first one. Fails when it is already running.
    pub fn start_apiserver(&self) -> anyhow::Result<()> {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        if procs.iter().any(|p| p.component == Component::ApiServer) {
            bail!("kube-apiserver is already running");
        }
        let mut started = Vec::new();
        spawn(
            &self.prepared,
            Component::ApiServer,
            &self.opts.extra_apiserver_args,
            Lifetime::Tied,
            &mut started,
        )?;
        let deadline = Instant::now() + self.opts.start_timeout;
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        if let Err(e) = process::block_on(wait_for_apiserver(&kubeconfig, &mut started, deadline)) {
            kill_procs(&mut started);
            return Err(e);
        }
        // Keep start order (etcd, apiserver, kcm) for `pids` and for reverse-order shutdown.
        let at = procs
            .iter()
            .position(|p| p.component == Component::Etcd)
            .map_or(0, |i| i + 1);
        procs.splice(at..at, started);
        Ok(())
    }

    /// One cluster per test binary, started on first use and torn down at exit.
    ///
    /// Panics with the start error (every later caller sees the same message).
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        let started = SHARED.get_or_init(|| {
            ControlPlane::start(ControlPlaneOptions::default()).map_err(|e| format!("{e:#}"))
        });
        match started {
            Ok(cp) => cp,
            Err(e) => panic!("bulwark-testenv: the shared control plane could not start: {e}"),
        }
    }

    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn kubeconfig(&self) -> Kubeconfig {
        Kubeconfig::read_from(&self.kubeconfig_path).expect("reading the testenv kubeconfig")
    }

    /// An admin (system:masters) client; make one per tokio runtime.
    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig())
            .await
            .expect("building the admin client")
    }

    /// A client that authenticates with a bearer token only (e.g. a ServiceAccount token).
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {b64}\nusers:\n- name: u\n  user:\n    token: {}\n\
             contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n",
            self.server_url,
            serde_json::to_string(token).expect("a string serialises"),
        );
        let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("token kubeconfig parses");
        client_for(&kubeconfig)
            .await
            .expect("building the token client")
    }

    pub fn server_url(&self) -> String {
        self.server_url.clone()
    }

    /// JSON-lines audit log with one Metadata event per write (create/update/patch/delete).
    pub fn audit_log_path(&self) -> &Path {
        &self.audit_log_path
    }

    /// The state dir: PKI, kubeconfig, audit log and each component's log under `logs/`.
    pub fn state_dir(&self) -> &Path {
        &self.layout.dir
    }

    /// Pids of the running components among etcd, kube-apiserver and kube-controller-manager, in
    /// that order.
    pub fn pids(&self) -> Vec<u32> {
        let procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        procs.iter().map(|p| p.child.id()).collect()
    }

    /// Where the binaries came from (helm lives there too).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// PEM of the CA that signed the apiserver's serving cert and the admin client cert.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Server-side applies the CRDs, then waits until each is Established and listable.
    pub async fn install_crds(&self, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
        let client = self.client().await;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for crd in crds {
            let name = crd
                .metadata
                .name
                .clone()
                .ok_or_else(|| anyhow!("CRD without metadata.name"))?;
            let mut crd = crd.clone();
            crd.metadata.managed_fields = None;
            crd.metadata.resource_version = None;
            crd.status = None;
            api.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .with_context(|| format!("applying CRD {name}"))?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            loop {
                let current = api.get(&name).await?;
                let established = current
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                if established {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("CRD {name} not Established within 60s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Established can precede the handler being routable; list until it answers.
            for version in crd.spec.versions.iter().filter(|v| v.served) {
                let gvk =
                    GroupVersionKind::gvk(&crd.spec.group, &version.name, &crd.spec.names.kind);
                let resource = ApiResource::from_gvk_with_plural(&gvk, &crd.spec.names.plural);
                let objects: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
                loop {
                    match objects.list(&ListParams::default().limit(1)).await {
                        Ok(_) => break,
                        Err(e) if Instant::now() >= deadline => {
                            return Err(e).with_context(|| {
                                format!("listing {}/{} after install", gvk.api_version(), name)
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        kill_procs(&mut procs);
        let _ = fs::remove_dir_all(&self.layout.dir);
        process::untrack_dir(&self.layout.dir);
    }
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server_url", &self.server_url)
            .field("state_dir", &self.layout.dir)
            .finish_non_exhaustive()
    }
}
