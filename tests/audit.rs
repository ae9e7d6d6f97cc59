//! `bulwark audit` against a real control plane, run as users run it (the binary with a
//! kubeconfig), and the `Consistent` condition and `status.findings` the operator keeps.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bulwark::api::SecurityPolicy;
use bulwark_testenv::ControlPlane;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, PostParams};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");

/// Three tiers, a frontend-to-data flow, and a data-tier certificate that expires in two days.
fn shop_policy(ns: &str) -> SecurityPolicy {
    let yaml = format!(
        r#"
apiVersion: bulwark.dev/v1alpha1
kind: SecurityPolicy
metadata: {{name: shop, namespace: {ns}}}
spec:
  tiers:
    frontend: {{podSelector: {{matchLabels: {{tier: frontend}}}}}}
    backend:  {{podSelector: {{matchLabels: {{tier: backend}}}}}}
    data:     {{podSelector: {{matchLabels: {{tier: data}}}}}}
  network:
    flows:
      - {{from: frontend, to: backend, ports: [{{port: 8443}}]}}
      - {{from: backend,  to: data,    ports: [{{port: 5432}}]}}
      - {{from: frontend, to: data,    ports: [{{port: 5432}}]}}
  tls:
    ca: {{secretName: shop-ca}}
    certificates:
      - {{name: db, secretName: db-tls, tier: data, dnsNames: [db.{ns}.svc], duration: 48h, renewBefore: 1h}}
"#
    );
    serde_yaml::from_str(&yaml).expect("test policy parses")
}

async fn create_pod(client: &kube::Client, ns: &str, name: &str, labels: &[(&str, &str)]) {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>()},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "main", "image": "app:1",
                            "ports": [{"name": "pg", "containerPort": 5432}]}]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    // The namespace's default ServiceAccount appears shortly after the namespace.
    eventually(
        Duration::from_secs(30),
        &format!("Pod {name} to be created"),
        || async { pods.create(&PostParams::default(), &pod).await.ok() },
    )
    .await;
}

async fn create_service(client: &kube::Client, ns: &str, name: &str, tier: &str, port: i32) {
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"selector": {"tier": tier}, "ports": [{"port": port, "targetPort": "pg"}]}
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
}

/// Waits until the policy is Ready at its generation with its certificates in status.
async fn wait_settled(client: &kube::Client, ns: &str) -> SecurityPolicy {
    wait_condition(client, ns, "shop", "Ready", "True").await;
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(30),
        "certificates in status",
        || async {
            let p = api.get("shop").await.ok()?;
            (p.status.as_ref()?.certificates.len() == 2).then_some(p)
        },
    )
    .await
}

struct Audit {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_audit(ns: &str, args: &[&str]) -> Audit {
    let out = Command::new(BIN)
        .args(["audit", "--namespace", ns])
        .args(args)
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    Audit {
        code: out.status.code().expect("audit exits, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reports_exactly_the_planted_findings_and_gates_the_exit_status() {
    let client = client().await;
    let ns = namespace(&client, "audit-report").await;
    for (name, tier) in [("web", "frontend"), ("api", "backend"), ("db-0", "data")] {
        create_pod(&client, &ns, name, &[("tier", tier)]).await;
    }
    create_pod(&client, &ns, "stray", &[("app", "stray")]).await;
    // Covered by the db certificate's db.<ns>.svc: no UncoveredDataPort finding.
    create_service(&client, &ns, "db", "data", 5432).await;
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &shop_policy(&ns)).await.unwrap();
    wait_settled(&client, &ns).await;

    let json = run_audit(&ns, &["-o", "json"]);
    assert_eq!(
        json.code, 1,
        "a high finding fails at the default --fail-on high: {}",
        json.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON report");
    assert_eq!(report["schemaVersion"], 1);
    assert_eq!(report["namespaces"], serde_json::json!([ns]));
    assert_eq!(report["failOn"], "high");
    let found: Vec<(String, String, Option<String>, String)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["namespace"], ns.as_str());
            (
                f["type"].as_str().unwrap().to_string(),
                f["severity"].as_str().unwrap().to_string(),
                f["policy"].as_str().map(str::to_string),
                f["object"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let shop = Some("shop".to_string());
    assert_eq!(
        found,
        [
            (
                "CertificateExpiry".into(),
                "high".into(),
                shop.clone(),
                "Secret/db-tls".into()
            ),
            (
                "Inconsistency".into(),
                "high".into(),
                shop.clone(),
                "SecurityPolicy/shop".into()
            ),
            (
                "UnisolatedPod".into(),
                "low".into(),
                None,
                "Pod/stray".into()
            ),
            (
                "CertificateExpiry".into(),
                "info".into(),
                shop.clone(),
                "Secret/shop-ca".into()
            ),
        ],
        "{}",
        json.stdout
    );
    let messages: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    assert!(
        ["47h", "48h"]
            .iter()
            .any(|h| messages[0].starts_with(&format!("certificate db expires in {h} ("))),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].starts_with("FrontendToData: spec.network.flows[2]: "),
        "{}",
        messages[1]
    );
    assert_eq!(
        report["summary"],
        serde_json::json!({"total": 4, "critical": 0, "high": 2, "medium": 0, "low": 1, "info": 1, "atOrAboveFailOn": 2})
    );

    let text = run_audit(&ns, &[]);
    eprintln!("{}", text.stdout);
    assert_eq!(text.code, 1, "{}", text.stderr);
    let rows: Vec<Vec<&str>> = text
        .stdout
        .lines()
        .filter(|l| l.starts_with("  ") && !l.trim_start().starts_with("SEVERITY"))
        .map(|l| l.split_whitespace().take(4).collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["high", "CertificateExpiry", "shop", "Secret/db-tls"],
            ["high", "Inconsistency", "shop", "SecurityPolicy/shop"],
            ["low", "UnisolatedPod", "-", "Pod/stray"],
            ["info", "CertificateExpiry", "shop", "Secret/shop-ca"],
        ],
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .starts_with(&format!("Namespace {ns}: 4 finding(s)\n"))
    );
    assert!(text.stdout.ends_with(
        "4 finding(s): 0 critical, 2 high, 0 medium, 1 low, 1 info; 2 at or above --fail-on high\n"
    ));

    // Below the most severe finding: 0; at or above it: non-zero.
    for (fail_on, code) in [("critical", 0), ("high", 1), ("medium", 1), ("info", 1)] {
        let run = run_audit(&ns, &["--fail-on", fail_on, "-o", "json"]);
        assert_eq!(run.code, code, "--fail-on {fail_on}: {}", run.stderr);
    }
    operator.stop().await;
}

#[tokio::test]
async fn audit_that_cannot_reach_the_cluster_exits_2_naming_the_cause() {
    let dir = std::env::temp_dir().join(format!("bulwark-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\nusers: [{name: u, user: {token: t}}]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["audit", "-o", "json"])
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("bulwark audit: "), "{stderr}");
    assert!(out.stdout.is_empty(), "no partial report on stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_condition_and_status_findings_follow_the_spec_without_breaking_ready() {
    let client = client().await;
    let ns = namespace(&client, "audit-status").await;
    let operator = Operator::start(&client, &ns);
    let mut policy = shop_policy(&ns);
    apply_policy(&client, &policy).await.unwrap();

    let (reason, message) = wait_condition(&client, &ns, "shop", "Consistent", "False").await;
    assert_eq!(reason, "FrontendToData");
    assert!(
        message.starts_with("spec.network.flows[2]: the frontend tier reaches the data tier directly on port(s) 5432"),
        "{message}"
    );
    // A warning, not an outage.
    let (ready, _) = wait_condition(&client, &ns, "shop", "Ready", "True").await;
    assert_eq!(ready, "Reconciled");
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(10),
        "a Warning Event for the transition",
        || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("FrontendToData")
                        && e.type_.as_deref() == Some("Warning")
                })
        },
    )
    .await;
    let settled = wait_settled(&client, &ns).await;
    assert_eq!(
        settled.status.unwrap().findings,
        BTreeMap::from([
            ("CertificateExpiry".to_string(), 1),
            ("Inconsistency".to_string(), 1)
        ])
    );
    let gauge = |metrics: &str, t: &str| {
        let prefix =
            format!("bulwark_policy_findings{{namespace=\"{ns}\",policy=\"shop\",type=\"{t}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    };
    let metrics = operator.metrics.encode();
    assert_eq!(
        gauge(&metrics, "Inconsistency").as_deref(),
        Some("1"),
        "{metrics}"
    );
    assert_eq!(gauge(&metrics, "CertificateExpiry").as_deref(), Some("1"));
    assert_eq!(gauge(&metrics, "Drift").as_deref(), Some("0"));

    // A restart recomputes the same condition and counts: not one write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    operator.stop().await;
    let writes_before = audited_writes(&ns);
    let operator = Operator::start(&client, &ns);
    operator.wait_reconciled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_after = audited_writes(&ns);
    assert_eq!(
        writes_after.len(),
        writes_before.len(),
        "a reconcile with nothing changed wrote: {:?}",
        &writes_after[writes_before.len()..]
    );

    // The flow goes through the backend now: Consistent again, the count goes away.
    policy.spec.network.as_mut().unwrap().flows.pop();
    apply_policy(&client, &policy).await.unwrap();
    let (reason, _) = wait_condition(&client, &ns, "shop", "Consistent", "True").await;
    assert_eq!(reason, "Consistent");
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let status = api.get("shop").await.unwrap().status.unwrap();
    assert_eq!(
        status.findings,
        BTreeMap::from([("CertificateExpiry".to_string(), 1)])
    );
    assert_eq!(
        gauge(&operator.metrics.encode(), "Inconsistency").as_deref(),
        Some("0")
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_secrets_record_when_their_password_was_set() {
    use k8s_openapi::api::core::v1::Secret;
    let client = client().await;
    let ns = namespace(&client, "audit-credentials").await;
    let operator = Operator::start(&client, &ns);
    // No admin Secret: the role Secrets are produced, no Job is created.
    let policy: SecurityPolicy = serde_yaml::from_str(&format!(
        r#"
apiVersion: bulwark.dev/v1alpha1
kind: SecurityPolicy
metadata: {{name: shop, namespace: {ns}}}
spec:
  tiers: {{data: {{podSelector: {{matchLabels: {{tier: data}}}}}}}}
  postgres:
    host: db.{ns}.svc
    database: shop
    adminSecretRef: {{name: pg-admin}}
    roles: [{{name: shop_app, access: ReadWrite}}]
"#
    ))
    .unwrap();
    let started = jiff::Timestamp::now().as_second();
    apply_policy(&client, &policy).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = eventually(Duration::from_secs(30), "the role Secret", || async {
        secrets.get_opt("shop-pg-shop-app").await.ok()?
    })
    .await;
    let set_at: jiff::Timestamp =
        secret.metadata.annotations.as_ref().unwrap()["bulwark.dev/password-set-at"]
            .parse()
            .expect("an RFC 3339 time");
    assert!(
        (started - 1..=jiff::Timestamp::now().as_second()).contains(&set_at.as_second()),
        "set when the password was generated: {set_at}"
    );

    // A restart keeps the recorded time and the Secret as it is.
    wait_condition(&client, &ns, "shop", "PostgresReady", "False").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    operator.stop().await;
    let operator = Operator::start(&client, &ns);
    operator.wait_reconciled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = secrets.get("shop-pg-shop-app").await.unwrap();
    assert_eq!(
        again.metadata.resource_version, secret.metadata.resource_version,
        "a resync rewrote the role Secret"
    );

    let run = run_audit(&ns, &["-o", "json", "--fail-on", "critical"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let credential = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["type"] == "CredentialAge")
        .unwrap_or_else(|| panic!("no CredentialAge finding in {}", run.stdout));
    assert_eq!(credential["object"], "Secret/shop-pg-shop-app");
    assert_eq!(credential["severity"], "info");
    assert!(
        credential["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "PostgreSQL role shop_app: password set 0h ago ({set_at})"
            )),
        "{credential}"
    );

    // A rotation on request moves the recorded time with the password.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    policies
        .patch(
            "shop",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"annotations": {"bulwark.dev/rotate": "audit-1"}}
            })),
        )
        .await
        .unwrap();
    let old_password = secret.data.as_ref().unwrap()["password"].clone();
    eventually(
        Duration::from_secs(30),
        "a new password with a later password-set-at",
        || async {
            let s = secrets.get("shop-pg-shop-app").await.ok()?;
            let at: jiff::Timestamp =
                s.metadata.annotations.as_ref()?["bulwark.dev/password-set-at"]
                    .parse()
                    .ok()?;
            (at > set_at && s.data.as_ref()?["password"] != old_password).then_some(())
        },
    )
    .await;
    operator.stop().await;
}
