//! The `bulwark` binary as users run it: CLI subcommands, leader election between two
//! replicas, metrics and health endpoints.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
const EXAMPLE: &str = "deploy/examples/traffic-prediction.yaml";

#[test]
fn render_prints_the_network_policies_offline() {
    let out = Command::new(BIN)
        .args(["render", "-f", EXAMPLE])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("  name: "))
        .collect();
    assert_eq!(
        names,
        [
            "traffic-default-deny",
            "traffic-allow-dns",
            "traffic-tier-backend",
            "traffic-tier-data",
            "traffic-tier-frontend"
        ]
    );
}

#[test]
fn explain_prints_the_reachability_matrix() {
    let out = Command::new(BIN)
        .args(["explain", "-f", EXAMPLE])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |tier: &str| {
        text.lines()
            .find(|l| l.starts_with(tier))
            .unwrap_or_else(|| panic!("no row for {tier} in\n{text}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
    };
    // Columns: backend, data, frontend.
    assert_eq!(row("frontend"), ["8443", "-", "-"]);
    assert_eq!(row("backend"), ["-", "5432,9093", "-"]);
    assert_eq!(row("data"), ["-", "9093,9094", "-"]);
}

#[test]
fn render_rejects_other_kinds_naming_the_document() {
    let dir = std::env::temp_dir().join(format!("bulwark-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["render", "-f"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("document 1: kind \"ConfigMap\" is not SecurityPolicy")
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn crd_subcommand_matches_the_checked_in_crd() {
    let out = Command::new(BIN).arg("crd").output().unwrap();
    let checked_in = std::fs::read_to_string("crds/securitypolicies.bulwark.dev.yaml").unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        checked_in,
        "run `make crds`"
    );
}

/// A `bulwark run` process, killed when dropped.
struct Replica {
    child: Child,
    metrics_port: u16,
}

impl Replica {
    fn start(ns: &str) -> Replica {
        let metrics_port = free_port();
        let child = bulwark_testenv::spawn_with_parent(
            Command::new(BIN)
                .args([
                    "run",
                    "--leader-elect",
                    "--namespace",
                    ns,
                    "--leader-election-namespace",
                    ns,
                ])
                .arg("--metrics-addr")
                .arg(format!("127.0.0.1:{metrics_port}"))
                .env(
                    "KUBECONFIG",
                    bulwark_testenv::ControlPlane::shared().kubeconfig_path(),
                )
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )
        .unwrap();
        Replica {
            child,
            metrics_port,
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
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

    async fn successful_reconciles(&self) -> u64 {
        let Some((_, body)) = self.get("/metrics").await else {
            return 0;
        };
        body.lines()
            .filter(|l| {
                l.starts_with("bulwark_reconciles_total") && l.contains("result=\"success\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn lease_holder(client: &kube::Client, ns: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    api.get_opt("bulwark-leader")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let client = client().await;
    let ns = namespace(&client, "leader").await;
    let first = Replica::start(&ns);
    let holder = eventually(Duration::from_secs(30), "a lease holder", || {
        lease_holder(&client, &ns)
    })
    .await;
    assert!(
        holder.ends_with(&format!("-{}", first.child.id())),
        "first replica leads: {holder}"
    );
    let second = Replica::start(&ns);

    let (code, body) = eventually(Duration::from_secs(10), "the standby's /readyz", || {
        second.get("/readyz")
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    assert_eq!(second.get("/healthz").await.map(|(c, _)| c), Some(200));

    let policy = example_policy(&ns);
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    let (_, metrics) = first.get("/metrics").await.expect("leader serves /metrics");
    for family in [
        "bulwark_reconciles_total",
        "bulwark_reconcile_duration_seconds",
        "bulwark_api_writes_total",
        "bulwark_managed_objects",
        "bulwark_certificate_not_after_seconds{namespace=\"leader\",policy=\"traffic\",certificate=\"kafka\"}",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
    assert!(
        metrics.contains("bulwark_managed_objects{kind=\"NetworkPolicy\"} 5"),
        "{metrics}"
    );
    assert!(first.successful_reconciles().await >= 1);
    assert_eq!(
        second.successful_reconciles().await,
        0,
        "the standby must not reconcile"
    );

    // The leader dies without releasing the lease; the standby takes over once it expires.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let mut changed = policy.clone();
    changed.spec.network.as_mut().unwrap().allow_dns = false;
    apply_policy(&client, &changed).await.unwrap();
    let holder = eventually(Duration::from_secs(40), "the standby to lead", || async {
        lease_holder(&client, &ns)
            .await
            .filter(|h| h.ends_with(&format!("-{}", second.child.id())))
    })
    .await;
    eprintln!("new leader: {holder}");
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(20),
        "the new leader to remove allow-dns",
        || async {
            nps.get_opt("traffic-allow-dns")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}
