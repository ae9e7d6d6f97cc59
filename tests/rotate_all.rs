//! `bulwark rotate --all` end to end: the full example at Ready against a real PostgreSQL and
//! Kafka, the real binary requesting the rotation and following it, the test playing the kubelet
//! for the Jobs it brings. Every key, certificate, password and JWT key must change exactly once,
//! in phase order, across an operator restart, and every consumer must keep trusting and
//! authenticating.

mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use bulwark_testenv::ControlPlane;
use bulwark_testenv::Postgres;
use bulwark_testenv::kafka::{self, ClientOutcome};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use support::*;

/// What rotates, as (Secret, key). Values are only ever hashed: no secret reaches a message.
const TRACKED: &[(&str, &str)] = &[
    ("traffic-ca", "tls.crt"),
    ("traffic-ca", "tls.key"),
    ("kafka-tls", "tls.crt"),
    ("kafka-tls", "tls.key"),
    ("postgres-tls", "tls.crt"),
    ("postgres-tls", "tls.key"),
    ("api-tls", "tls.crt"),
    ("api-tls", "tls.key"),
    ("traffic-kafka-backend", "password"),
    ("stream-processor-kafka", "password"),
    ("traffic-pg-traffic-admin", "password"),
    ("traffic-pg-traffic-app", "password"),
    ("traffic-pg-traffic-analytics", "password"),
    ("api-jwt", "private.pem"),
    ("api-jwt", "kid"),
];

const LEAVES: [&str; 3] = ["kafka-tls", "postgres-tls", "api-tls"];
const KAFKA_USERS: [&str; 2] = ["traffic-kafka-backend", "stream-processor-kafka"];
const PG_ROLES: [(&str, &str); 3] = [
    ("traffic_admin", "traffic-pg-traffic-admin"),
    ("traffic_app", "traffic-pg-traffic-app"),
    ("traffic_analytics", "traffic-pg-traffic-analytics"),
];

/// Every value change of the tracked keys, in the order the watch delivered them, and markers.
#[derive(Default)]
struct ChangeLog {
    last: BTreeMap<(String, String), u64>,
    /// (sequence, what): `secret/key` for a value change, `#label` for a marker.
    entries: Vec<(usize, String)>,
}

impl ChangeLog {
    fn observe(&mut self, secret: &Secret) {
        let name = secret.name_any();
        let data = secret.data.clone().unwrap_or_default();
        for (s, key) in TRACKED.iter().filter(|(s, _)| *s == name) {
            let Some(value) = data.get(*key) else {
                continue;
            };
            let mut h = DefaultHasher::new();
            value.0.hash(&mut h);
            let hash = h.finish();
            let slot = (s.to_string(), key.to_string());
            if self.last.get(&slot) != Some(&hash) {
                self.last.insert(slot, hash);
                let seq = self.entries.len();
                self.entries.push((seq, format!("{s}/{key}")));
            }
        }
    }

    fn mark(&mut self, label: &str) {
        let seq = self.entries.len();
        self.entries.push((seq, format!("#{label}")));
    }

    fn changes(&self, item: &str) -> Vec<usize> {
        self.entries
            .iter()
            .filter(|(_, w)| w == item)
            .map(|(s, _)| *s)
            .collect()
    }

    fn marker(&self, label: &str) -> usize {
        self.changes(&format!("#{label}"))
            .first()
            .copied()
            .unwrap_or_else(|| panic!("no marker {label}"))
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn bundle(client: &kube::Client, ns: &str) -> String {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.get("traffic-trust-bundle").await.unwrap().data.unwrap()["ca.crt"].clone()
}

/// Logs in as `user` over TLS with verify-full against `ca_file`, as the role Secrets ask.
fn pg_login(server: &Postgres, ca_file: &Path, user: &str, password: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .arg(format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname=traffic sslmode=verify-full sslrootcert={}",
            server.port(),
            ca_file.display()
        ))
        .args(["-XAtqc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    match (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim(),
    ) {
        (true, "t") => Ok(()),
        (true, other) => Err(format!("connected without TLS ({other})")),
        (false, _) => Err(String::from_utf8_lossy(&out.stderr).to_string()),
    }
}

/// PostgreSQL picks up the certificate now in `postgres-tls`, as a server reloading its mounted
/// Secret would. Returns whether it changed.
async fn reload_postgres_certificate(
    client: &kube::Client,
    ns: &str,
    server: &Postgres,
    serving: &mut Vec<u8>,
) -> bool {
    let tls = secret_bytes(client, ns, "postgres-tls").await;
    if tls["tls.crt"] == *serving {
        return false;
    }
    // Overwriting keeps the files' owner and mode, which the server checks on its key.
    std::fs::write(server.state_dir().join("server.crt"), &tls["tls.crt"]).unwrap();
    std::fs::write(server.state_dir().join("server.key"), &tls["tls.key"]).unwrap();
    server
        .psql("postgres", "SELECT pg_reload_conf()")
        .expect("reload");
    *serving = tls["tls.crt"].clone();
    true
}

fn write_properties(dir: &Path, name: &str, secret: &BTreeMap<String, String>) -> PathBuf {
    let path = dir.join(format!("{name}.properties"));
    std::fs::write(&path, &secret["client.properties"]).unwrap();
    path
}

fn roundtrip(props: &Path) -> ClientOutcome {
    kafka::roundtrip(props, "speeds", &[]).expect("the Java client runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_all_rotates_everything_once_in_order_and_every_consumer_keeps_working() {
    let client = client().await;
    let ns = namespace(&client, "rotate-all").await;
    let scratch = tempdir("rotate-all");
    let mut operator = Operator::start(&client, &ns);
    let data_tier = full_example_to_ready(&client, &ns, &scratch).await;

    // Short rollover waits so the test sees every step; everything else as shipped (the JWT
    // grace period stays 168h).
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let mut policy = policies.get("traffic").await.unwrap();
    let ca = policy.spec.tls.as_mut().unwrap().ca.as_mut().unwrap();
    ca.rollover_propagation = Some("2s".into());
    ca.rollover_overlap = Some("20s".into());
    policy.metadata.annotations = None;
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;

    // What every consumer holds before.
    let mut played: BTreeSet<String> = BTreeSet::new();
    for facet in ["kafka", "postgres"] {
        played.insert(current_job(&client, &ns, facet).await.unwrap().name_any());
    }
    let old_bundle = bundle(&client, &ns).await;
    assert_eq!(old_bundle.matches("BEGIN CERTIFICATE").count(), 1);
    let props = scratch.join("props");
    std::fs::create_dir_all(&props).unwrap();
    let mut old_kafka_props = Vec::new();
    for user in KAFKA_USERS {
        let secret = secret_data(&client, &ns, user).await;
        let file = write_properties(&props, &format!("{user}-old"), &secret);
        assert!(
            matches!(roundtrip(&file), ClientOutcome::Ok),
            "{user} before"
        );
        old_kafka_props.push(file);
    }
    let old_ca_file = scratch.join("old-bundle.pem");
    std::fs::write(&old_ca_file, &old_bundle).unwrap();
    let mut old_pg = Vec::new();
    for (role, secret) in PG_ROLES {
        let password = secret_data(&client, &ns, secret).await["password"].clone();
        pg_login(&data_tier.postgres, &old_ca_file, role, &password)
            .unwrap_or_else(|e| panic!("{role} before: {e}"));
        old_pg.push((role, password));
    }
    let old_jwt = secret_data(&client, &ns, "api-jwt").await;
    let old_kid = old_jwt["kid"].clone();
    let mut serving_pg = secret_bytes(&client, &ns, "postgres-tls").await["tls.crt"].clone();

    // Every version of every Secret, as the watch delivers them.
    let log = Arc::new(Mutex::new(ChangeLog::default()));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let recorder = {
        let log = log.clone();
        let mut stream = watcher(secrets.clone(), watcher::Config::default())
            .applied_objects()
            .boxed();
        tokio::spawn(async move {
            while let Some(Ok(secret)) = stream.next().await {
                log.lock().unwrap().observe(&secret);
            }
        })
    };
    eventually(Duration::from_secs(10), "the watch to list", || async {
        (log.lock().unwrap().entries.len() == TRACKED.len()).then_some(())
    })
    .await;

    let started = Instant::now();
    let mut cli = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["rotate", "--all", "traffic", "-n", &ns, "--wait"])
        .args(["--timeout", "150s"])
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // The kubelet's part: run each new Job once; PostgreSQL reloads its re-issued certificate
    // before the role Job connects. The operator restarts once, in the middle of the sequence.
    let mut restarted = false;
    let mut reloaded = false;
    loop {
        if cli.try_wait().unwrap().is_some() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "bulwark rotate --all --wait did not return"
        );
        for facet in ["kafka", "postgres"] {
            let Some(job) = current_job(&client, &ns, facet).await else {
                continue;
            };
            if played.contains(&job.name_any()) {
                continue;
            }
            if facet == "kafka" && !restarted {
                operator.stop().await;
                operator = Operator::start(&client, &ns);
                log.lock().unwrap().mark("restarted");
                restarted = true;
            }
            if facet == "postgres" {
                reloaded |=
                    reload_postgres_certificate(&client, &ns, &data_tier.postgres, &mut serving_pg)
                        .await;
            }
            let dir = scratch.join(format!("{facet}-rotated"));
            assert!(
                play_kubelet(&client, &ns, &job, &dir).await,
                "the rotated {facet} Job succeeds"
            );
            log.lock().unwrap().mark(&format!("{facet} job done"));
            played.insert(job.name_any());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = cli.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    println!("bulwark rotate --all --wait printed:\n{stdout}");
    assert!(
        out.status.success(),
        "bulwark rotate --all --wait failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(restarted, "the operator restarted mid-sequence");
    assert!(reloaded, "PostgreSQL got a re-issued certificate");

    // The command printed every phase as done, in order, then completion.
    let done: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": done"))
        .collect();
    assert_eq!(
        done,
        ["CARollover", "Leaves", "Kafka", "PostgreSQL", "JWT"],
        "{stdout}"
    );
    assert!(
        stdout.lines().last().unwrap().contains("complete"),
        "{stdout}"
    );
    let status = policies.get("traffic").await.unwrap().status.unwrap();
    let rotation = status.rotation.expect("status.rotation");
    assert_eq!(rotation.phase, "Complete");
    assert_eq!(rotation.failure, None);
    assert!(stdout.contains(&rotation.requested), "{stdout}");

    // Consumers after: Kafka clients with the new user Secrets authenticate, the old
    // credentials are refused (the broker still serves its old certificate: the old CA is
    // trusted until the overlap ends).
    for (user, old_file) in KAFKA_USERS.iter().zip(&old_kafka_props) {
        let secret = secret_data(&client, &ns, user).await;
        let file = write_properties(&props, &format!("{user}-new"), &secret);
        assert!(
            matches!(roundtrip(&file), ClientOutcome::Ok),
            "{user} with its rotated password"
        );
        assert!(
            matches!(roundtrip(old_file), ClientOutcome::AuthFailed(_)),
            "{user}'s password from before is refused"
        );
    }
    // JWT: a new kid signs, the old public key stays published for the grace period.
    let new_kid = secret_data(&client, &ns, "api-jwt").await["kid"].clone();
    assert_ne!(new_kid, old_kid);
    let jwks = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("api-jwks")
        .await
        .unwrap()
        .data
        .unwrap()["jwks.json"]
        .clone();
    assert!(jwks.contains(&new_kid), "the new key is published");
    assert!(
        jwks.contains(&old_kid),
        "the old key stays during its grace period"
    );

    // The overlap ends: the old CA leaves the bundle; every leaf verifies against what is left.
    eventually(
        Duration::from_secs(60),
        "the rollover to end (old CA out of the bundle)",
        || async {
            let status = policies.get("traffic").await.ok()?.status?;
            (status.ca_rollover_phase.as_deref() == Some("Stable")).then_some(())
        },
    )
    .await;
    let final_bundle = bundle(&client, &ns).await;
    assert_eq!(final_bundle.matches("BEGIN CERTIFICATE").count(), 1);
    assert_ne!(final_bundle, old_bundle, "a new CA is the only one trusted");
    if let Err(e) = leaves_verify_against(&client, &ns, &final_bundle, &scratch).await {
        panic!("a leaf does not verify against the final bundle: {e}");
    }
    // PostgreSQL: each role's new password logs in over verify-full with the final bundle, as
    // its Secret's ca.crt now holds it; the password from before is refused.
    for (role, secret) in PG_ROLES {
        let data = eventually(Duration::from_secs(10), "role Secret ca.crt", || async {
            let data = secret_data(&client, &ns, secret).await;
            (data["ca.crt"] == final_bundle).then_some(data)
        })
        .await;
        let ca_file = scratch.join(format!("{secret}-ca.crt"));
        std::fs::write(&ca_file, &data["ca.crt"]).unwrap();
        pg_login(&data_tier.postgres, &ca_file, role, &data["password"])
            .unwrap_or_else(|e| panic!("{role} with its rotated password: {e}"));
        let old = &old_pg.iter().find(|(r, _)| *r == role).unwrap().1;
        assert!(
            pg_login(&data_tier.postgres, &ca_file, role, old).is_err(),
            "{role}'s password from before is refused"
        );
    }

    // Every key, certificate, password and kid changed exactly once, in phase order, and
    // nothing moves any more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    recorder.abort();
    check_changes(&log.lock().unwrap());

    // The secret material never reached the command's output.
    for secret in KAFKA_USERS.iter().chain(PG_ROLES.iter().map(|(_, s)| s)) {
        let password = secret_data(&client, &ns, secret).await["password"].clone();
        assert!(!stdout.contains(&password) && !stderr.contains(&password));
    }

    // The request stays on the policy; a restart finds nothing left to do and writes nothing.
    operator.stop().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let writes_before = audited_writes(&ns).len();
    let operator = Operator::start(&client, &ns);
    operator.wait_reconciled().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = audited_writes(&ns);
    assert_eq!(
        writes.len(),
        writes_before,
        "a reconcile after Complete wrote: {:?}",
        &writes[writes_before..]
    );
    drop(data_tier);
    operator.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
}

/// Each tracked value changed exactly once, and the changes came in phase order: the CA, the
/// leaves, the Kafka passwords (then their Job), the PostgreSQL passwords (then their Job), the
/// JWT key.
fn check_changes(log: &ChangeLog) {
    for (secret, key) in TRACKED {
        let item = format!("{secret}/{key}");
        assert_eq!(
            log.changes(&item).len(),
            2,
            "{item} changed exactly once (its first entry is the value before)"
        );
    }
    let ca = vec![
        "traffic-ca/tls.crt".to_string(),
        "traffic-ca/tls.key".to_string(),
    ];
    let leaves: Vec<String> = LEAVES
        .iter()
        .flat_map(|l| [format!("{l}/tls.crt"), format!("{l}/tls.key")])
        .collect();
    let kafka: Vec<String> = KAFKA_USERS
        .iter()
        .map(|u| format!("{u}/password"))
        .collect();
    let pg: Vec<String> = PG_ROLES
        .iter()
        .map(|(_, s)| format!("{s}/password"))
        .collect();
    let jwt = vec!["api-jwt/kid".to_string(), "api-jwt/private.pem".to_string()];
    let last_change = |items: &[String]| {
        items
            .iter()
            .map(|i| *log.changes(i).last().unwrap())
            .max()
            .unwrap()
    };
    let first_rotation = |items: &[String]| items.iter().map(|i| log.changes(i)[1]).min().unwrap();
    assert!(
        last_change(&ca) < first_rotation(&leaves),
        "CA before leaves"
    );
    assert!(
        last_change(&leaves) < first_rotation(&kafka),
        "leaves before Kafka"
    );
    assert!(
        log.marker("kafka job done") < first_rotation(&pg),
        "PostgreSQL only after the Kafka Job succeeded"
    );
    assert!(last_change(&kafka) < log.marker("kafka job done"));
    assert!(
        log.marker("postgres job done") < first_rotation(&jwt),
        "JWT only after the role Job succeeded"
    );
    assert!(last_change(&pg) < log.marker("postgres job done"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_phase_stops_the_sequence_and_the_command_names_it() {
    let client = client().await;
    let ns = namespace(&client, "rotate-all-failing").await;
    let operator = Operator::start(&client, &ns);
    // No PostgreSQL, and no Kafka admin Secret: the user Job can never be created.
    let mut policy = full_example_policy(&ns);
    policy.spec.postgres = None;
    let ca = policy.spec.tls.as_mut().unwrap().ca.as_mut().unwrap();
    ca.rollover_propagation = Some("1s".into());
    ca.rollover_overlap = Some("1h".into());
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "TLSReady", "True").await;
    let (reason, _) = wait_condition(&client, &ns, "traffic", "KafkaReady", "False").await;
    assert_eq!(reason, "AdminSecretMissing");
    let kid_before = secret_data(&client, &ns, "api-jwt").await["kid"].clone();

    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args([
            "rotate",
            "--all",
            "traffic",
            "-n",
            &ns,
            "--wait",
            "--timeout",
            "60s",
        ])
        .env("KUBECONFIG", ControlPlane::shared().kubeconfig_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!out.status.success(), "a failing phase is a failure");
    let done: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_suffix(": done"))
        .collect();
    assert_eq!(done, ["CARollover", "Leaves"], "{stdout}");
    assert!(
        stderr.contains("failed in phase Kafka") && stderr.contains("AdminSecretMissing"),
        "{stderr}"
    );
    let status = Api::<SecurityPolicy>::namespaced(client.clone(), &ns)
        .get("traffic")
        .await
        .unwrap()
        .status
        .unwrap();
    let rotation = status.rotation.unwrap();
    assert_eq!(rotation.phase, "Kafka");
    assert!(
        rotation
            .failure
            .unwrap()
            .contains("spec.kafka.adminSecretRef")
    );

    // Later phases wait: the JWT key has not rotated, and does not while Kafka is stuck.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        secret_data(&client, &ns, "api-jwt").await["kid"],
        kid_before,
        "JWT waits for Kafka"
    );
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_you_bring_the_leaves_are_reissued_under_it_and_the_ca_is_untouched() {
    use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

    let client = client().await;
    let ns = namespace(&client, "rotate-all-byo").await;
    let scratch = tempdir("rotate-all-byo");
    let request = bulwark::facets::tls::ca_request("corp-ca", None).unwrap();
    let corp =
        bulwark::facets::tls::CertificateAuthority::generate(&request, jiff::Timestamp::now())
            .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let corp_secret = secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("corp-ca".into()),
                    ..ObjectMeta::default()
                },
                string_data: Some(BTreeMap::from([
                    ("tls.crt".to_string(), corp.chain_pem.clone()),
                    ("tls.key".to_string(), corp.key_pem.expose().clone()),
                ])),
                ..Secret::default()
            },
        )
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    let ca = policy.spec.tls.as_mut().unwrap().ca.as_mut().unwrap();
    ca.secret_name = None;
    ca.existing_secret = Some("corp-ca".into());
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    let before: BTreeMap<&str, BTreeMap<String, Vec<u8>>> = {
        let mut out = BTreeMap::new();
        for leaf in LEAVES.into_iter().chain(["api-jwt"]) {
            out.insert(leaf, secret_bytes(&client, &ns, leaf).await);
        }
        out
    };

    // The annotation alone, as `kubectl annotate` would set it.
    let policies: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate-all": "byo-1"}}});
    policies
        .patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the request to complete",
        || async {
            let rotation = policies.get("traffic").await.ok()?.status?.rotation?;
            (rotation.requested == "byo-1" && rotation.phase == "Complete").then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    for leaf in LEAVES {
        let now = secret_bytes(&client, &ns, leaf).await;
        assert_ne!(
            now["tls.key"], before[leaf]["tls.key"],
            "{leaf} has a new key"
        );
        assert_ne!(
            now["tls.crt"], before[leaf]["tls.crt"],
            "{leaf} is re-issued"
        );
        assert_eq!(
            now["ca.crt"], before[leaf]["ca.crt"],
            "the bundle is the CA you bring"
        );
    }
    let kafka_tls = secret_bytes(&client, &ns, "kafka-tls").await;
    assert_eq!(
        kafka_tls["keystore.password"], before["kafka-tls"]["keystore.password"],
        "the keystore password an application has configured survives"
    );
    assert_ne!(
        kafka_tls["keystore.p12"],
        before["kafka-tls"]["keystore.p12"]
    );
    assert_ne!(
        secret_bytes(&client, &ns, "api-jwt").await["kid"],
        before["api-jwt"]["kid"],
        "the JWT key rotated"
    );
    if let Err(e) = leaves_verify_against(&client, &ns, &corp.chain_pem, &scratch).await {
        panic!("a leaf does not verify against your own CA: {e}");
    }
    assert_eq!(
        secrets
            .get("corp-ca")
            .await
            .unwrap()
            .metadata
            .resource_version,
        corp_secret.metadata.resource_version,
        "the CA you bring is never written"
    );
    // Once: nothing moves after the request is complete.
    let settled = secret_bytes(&client, &ns, "api-tls").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(secret_bytes(&client, &ns, "api-tls").await, settled);
    operator.stop().await;
    std::fs::remove_dir_all(&scratch).ok();
}
