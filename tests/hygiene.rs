//! Secret hygiene: the full example (data tier included), a rotation and a failed registration,
//! with the operator at debug log level; then every log line (operator and Jobs), every Event,
//! every termination message and the policy's status are scanned for every produced secret value:
//! passwords, private keys, salted credentials and verifiers, keystore passwords. Zero hits.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bulwark::api::SecurityPolicy;
use bulwark_testenv::ControlPlane;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use support::*;

struct LoggedOperator(Child);

impl Drop for LoggedOperator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keys whose values are public by design (certificates, names, addresses, plans).
const PUBLIC_KEYS: &[&str] = &[
    "ca.crt",
    "tls.crt",
    "public.pem",
    "kid",
    "username",
    "host",
    "port",
    "dbname",
    "bootstrap.servers",
    "sasl.mechanism",
    "plan.json",
    "truststore.p12",
    "jwks.json",
    "rotated-at",
    "previous-keys.json",
];

/// Every secret value in the namespace's Secrets, as it could appear in text: the value itself,
/// its base64, and for PEM and JSON documents the parts that matter (a key's base64 body lines,
/// each salted credential or verifier).
fn needles(secrets: &[Secret]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for s in secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        for (key, value) in s.data.iter().flatten() {
            if PUBLIC_KEYS.contains(&key.as_str()) {
                continue;
            }
            let what = format!("{name}/{key}");
            let bytes = &value.0;
            out.push((what.clone(), B64.encode(bytes)));
            let Ok(text) = std::str::from_utf8(bytes) else {
                continue;
            };
            if text.contains("-----BEGIN") {
                // The body of a key, line by line: a partial leak is a leak.
                for line in text
                    .lines()
                    .filter(|l| !l.starts_with("-----") && l.len() >= 16)
                {
                    out.push((what.clone(), line.to_string()));
                }
            } else if let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(text) {
                for (entry, v) in map {
                    out.push((format!("{what}[{entry}]"), v.clone()));
                    // The salted password or StoredKey part of a credential string.
                    for part in v.split(['$', ':']).filter(|p| p.len() >= 16) {
                        out.push((format!("{what}[{entry}] part"), part.to_string()));
                    }
                }
            } else if text.len() >= 8 {
                out.push((what, text.to_string()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_value_reaches_logs_events_or_status() {
    let client = client().await;
    let ns = namespace(&client, "hygiene").await;
    let scratch = std::env::temp_dir().join(format!("bulwark-hygiene-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let operator_log = scratch.join("operator.log");
    let log_file = std::fs::File::create(&operator_log).unwrap();
    let _operator = LoggedOperator(
        bulwark_testenv::spawn_with_parent(
            Command::new(env!("CARGO_BIN_EXE_bulwark"))
                .args(["run", "--metrics-addr", "127.0.0.1:0", "--namespace", &ns])
                .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
                .env("RUST_LOG", "debug")
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .stdin(Stdio::null()),
        )
        .unwrap(),
    );

    let data_tier = full_example_to_ready(&client, &ns, &scratch.join("first")).await;

    // A rotation of every credential, run to completion.
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "hygiene-1"}}});
    policies
        .patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    for facet in ["postgres", "kafka"] {
        let job = eventually(Duration::from_secs(60), "the rotation Job", || async {
            let job = current_job(&client, &ns, facet).await?;
            // A Job of the rotated plan has no finished pod yet.
            (job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) == 0).then_some(job)
        })
        .await;
        assert!(play_kubelet(&client, &ns, &job, &scratch.join(format!("rotate-{facet}"))).await);
    }
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;

    // A failed registration: its error travels through a termination message into status.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let wrong = serde_json::json!({"stringData": {"password": "wrong-admin-password-for-hygiene"}});
    secrets
        .patch(
            "kafka-admin",
            &PatchParams::default(),
            &Patch::Merge(&wrong),
        )
        .await
        .unwrap();
    let patch =
        serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "hygiene-2"}}});
    policies
        .patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let failing = eventually(Duration::from_secs(60), "the failing Job", || async {
        let job = current_job(&client, &ns, "kafka").await?;
        (job.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) == 0).then_some(job)
    })
    .await;
    assert!(!play_kubelet(&client, &ns, &failing, &scratch.join("failing")).await);
    eventually(
        Duration::from_secs(30),
        "KafkaReady AdminLoginFailed",
        || async {
            condition(&client, &ns, "traffic", "KafkaReady")
                .await
                .filter(|(_, r, _)| r == "AdminLoginFailed")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Haystacks: operator log, every Job's output and termination message, Events, status.
    let mut haystacks: Vec<(String, String)> = vec![(
        "operator log".into(),
        std::fs::read_to_string(&operator_log).unwrap(),
    )];
    for entry in walk(&scratch) {
        if entry.file_name().is_some_and(|n| n == "pod.log") {
            haystacks.push((
                entry.display().to_string(),
                String::from_utf8_lossy(&std::fs::read(&entry).unwrap()).into_owned(),
            ));
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    haystacks.push((
        "pods".into(),
        serde_json::to_string(&pods.list(&ListParams::default()).await.unwrap().items).unwrap(),
    ));
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let events = events.list(&ListParams::default()).await.unwrap().items;
    assert!(!events.is_empty(), "the operator recorded Events");
    haystacks.push(("events".into(), serde_json::to_string(&events).unwrap()));
    let new_events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    haystacks.push((
        "events.k8s.io".into(),
        serde_json::to_string(&new_events.list(&ListParams::default()).await.unwrap().items)
            .unwrap(),
    ));
    let policy = policies.get("traffic").await.unwrap();
    haystacks.push((
        "status".into(),
        serde_json::to_string(&policy.status).unwrap(),
    ));

    // Needles: every secret value produced (both generations of rotated ones) and the admin
    // passwords the Jobs used.
    let mut all_secrets = secrets.list(&ListParams::default()).await.unwrap().items;
    all_secrets.retain(|s| s.type_.as_deref() != Some("kubernetes.io/service-account-token"));
    let mut needles = needles(&all_secrets);
    needles.push((
        "previous admin password".into(),
        data_tier.kafka.admin_password().to_string(),
    ));
    let operator_bytes = haystacks[0].1.len();
    assert!(
        haystacks[0].1.contains("DEBUG"),
        "the operator ran at debug level"
    );
    assert!(needles.len() > 40, "{} needles", needles.len());
    // The scan reads real content: a public value (the signing key's kid) is found in status.
    let kid = secret_data(&client, &ns, "api-jwt").await["kid"].clone();
    assert!(
        haystacks
            .iter()
            .any(|(w, h)| w == "status" && h.contains(&kid))
    );
    let mut hits = Vec::new();
    for (what, needle) in &needles {
        for (where_, hay) in &haystacks {
            if hay.contains(needle.as_str()) {
                hits.push(format!("{what} in {where_}"));
            }
        }
    }
    eprintln!(
        "CHAOS hygiene needles={} haystacks={} operator_log_bytes={operator_bytes} events={} hits={}",
        needles.len(),
        haystacks.len(),
        events.len(),
        hits.len()
    );
    assert!(hits.is_empty(), "secret values leaked: {hits:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}
