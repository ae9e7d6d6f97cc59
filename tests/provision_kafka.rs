//! `bulwark provision kafka` against a real Kafka (KRaft, SASL_SSL with SCRAM-SHA-256 and -512):
//! the binary registers salted credentials, and a real Java client proves which passwords log in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use bulwark::facets::kafka::{
    CREDENTIALS_KEY, PLAN_KEY, RemovedCredential, SCRAM_ITERATIONS, ScramCredential, UserPlan,
    credentials_json, env,
};
use bulwark::facets::tls::Sensitive;
use bulwark::provision::kafka::{
    KafkaConnection, ProvisionInput, ProvisionSummary, mechanism_code, provision_kafka,
};
use bulwark::scram::ScramHash;
use bulwark_testenv::kafka::{ClientOutcome, Kafka, KafkaOptions, KafkaTls, free_port, roundtrip};
use bulwark_testenv::tls::test_pki;
use kafka_protocol::messages::DescribeUserScramCredentialsRequest;
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::protocol::StrBytes;

const SHA512: &str = "SCRAM-SHA-512";
const SHA256: &str = "SCRAM-SHA-256";

/// One broker for the whole file (it takes seconds to start); tests use distinct users.
fn broker() -> &'static Kafka {
    static BROKER: OnceLock<Kafka> = OnceLock::new();
    BROKER.get_or_init(|| {
        let pki = test_pki(&["localhost"], &["127.0.0.1"]);
        let mut opts = KafkaOptions::new(KafkaTls {
            cert_chain_pem: pki.cert_pem,
            key_pem: pki.key_pem,
            ca_pem: pki.ca_pem,
        });
        opts.sasl_mechanisms = vec![SHA512.into(), SHA256.into()];
        Kafka::start(opts).unwrap_or_else(|e| panic!("starting Kafka: {e:#}"))
    })
}

/// A scratch directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = broker().state_dir().join(format!("provision-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn credential(mechanism: &str, password: &str) -> ScramCredential {
    ScramCredential::generate(ScramHash::from_mechanism(mechanism).unwrap(), password).unwrap()
}

fn plan(mechanism: &str, users: &[&str], remove: &[(&str, &str)]) -> UserPlan {
    UserPlan {
        bootstrap_servers: broker().bootstrap(),
        mechanism: mechanism.into(),
        users: users.iter().map(|u| u.to_string()).collect(),
        remove: remove
            .iter()
            .map(|(name, mechanism)| RemovedCredential {
                name: name.to_string(),
                mechanism: mechanism.to_string(),
            })
            .collect(),
    }
}

fn input(plan: &UserPlan, credentials: &BTreeMap<String, ScramCredential>) -> ProvisionInput {
    ProvisionInput {
        plan: plan.clone(),
        credentials: credentials.clone(),
        admin_user: broker().admin_user().into(),
        admin_password: Sensitive::new(broker().admin_password().into()),
        ca_pem: Some(broker().ca_pem().into()),
    }
}

/// Runs the binary as the Job does: plan, credentials and CA as mounted files, the admin login
/// in the environment, a termination-log file to read the failure reason from.
struct Job {
    dir: PathBuf,
    admin_password: String,
    ca_pem: String,
    bootstrap: Option<String>,
}

struct JobRun {
    output: Output,
    termination: String,
}

impl Job {
    fn new(dir: &Path) -> Self {
        Job {
            dir: dir.to_path_buf(),
            admin_password: broker().admin_password().into(),
            ca_pem: broker().ca_pem().into(),
            bootstrap: None,
        }
    }

    fn run(&self, plan: &UserPlan, credentials: &BTreeMap<String, ScramCredential>) -> JobRun {
        let mut plan = plan.clone();
        if let Some(b) = &self.bootstrap {
            plan.bootstrap_servers = b.clone();
        }
        let plan_file = self.dir.join(PLAN_KEY);
        let credentials_file = self.dir.join(CREDENTIALS_KEY);
        let ca_file = self.dir.join("ca.crt");
        let termination_log = self.dir.join("termination-log");
        std::fs::write(&plan_file, serde_json::to_string(&plan).unwrap()).unwrap();
        std::fs::write(&credentials_file, credentials_json(credentials).expose()).unwrap();
        std::fs::write(&ca_file, &self.ca_pem).unwrap();
        std::fs::write(&termination_log, "").unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["provision", "kafka"])
            .env_clear()
            .env(env::PLAN_FILE, &plan_file)
            .env(env::CREDENTIALS_FILE, &credentials_file)
            .env(env::ADMIN_USER, broker().admin_user())
            .env(env::ADMIN_PASSWORD, &self.admin_password)
            .env(env::CA_FILE, &ca_file)
            .env("BULWARK_TERMINATION_LOG", &termination_log)
            .stdin(Stdio::null())
            .output()
            .expect("running bulwark provision kafka");
        JobRun {
            output,
            termination: std::fs::read_to_string(&termination_log).unwrap(),
        }
    }
}

impl JobRun {
    #[track_caller]
    fn assert_ok(&self) {
        assert!(
            self.output.status.success(),
            "provision kafka failed: {}\n{}",
            self.termination,
            String::from_utf8_lossy(&self.output.stderr)
        );
        assert_eq!(self.termination, "", "nothing written on success");
    }

    #[track_caller]
    fn assert_failed(&self, reason: &str) {
        assert!(!self.output.status.success(), "provision kafka succeeded");
        assert!(
            self.termination.starts_with(&format!("{reason}: ")),
            "termination message: {:?}\nstderr: {}",
            self.termination,
            String::from_utf8_lossy(&self.output.stderr)
        );
    }

    /// Everything the run printed or left for the operator.
    fn all_text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.termination,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }
}

/// Produces and consumes one record as `user` with a real Java client.
fn login(dir: &Path, mechanism: &str, user: &str, password: &str) -> ClientOutcome {
    let props = dir.join(format!("{user}-{mechanism}.properties"));
    std::fs::write(
        &props,
        broker().client_properties(mechanism, user, password),
    )
    .unwrap();
    roundtrip(&props, &format!("{user}-topic"), &[]).expect("running KafkaCheck")
}

#[track_caller]
fn assert_login_ok(dir: &Path, mechanism: &str, user: &str, password: &str) {
    let outcome = login(dir, mechanism, user, password);
    assert_eq!(
        outcome,
        ClientOutcome::Ok,
        "{user} with {mechanism} should log in; broker log: {}",
        broker().log_path().display()
    );
}

#[track_caller]
fn assert_login_refused(dir: &Path, mechanism: &str, user: &str, password: &str) {
    match login(dir, mechanism, user, password) {
        ClientOutcome::AuthFailed(why) => assert!(why.contains("SaslAuthentication"), "{why}"),
        other => {
            panic!("{user} with {mechanism}: expected an authentication failure, got {other:?}")
        }
    }
}

/// (mechanism code, iterations) the broker lists per user, by DescribeUserScramCredentials
/// through the same client code the Job uses.
async fn described(users: &[&str]) -> BTreeMap<String, Vec<(i8, i32)>> {
    let mut connection = KafkaConnection::login(
        &broker().bootstrap(),
        Some(broker().ca_pem()),
        ScramHash::Sha512,
        broker().admin_user(),
        &Sensitive::new(broker().admin_password().into()),
    )
    .await
    .unwrap();
    let response = connection
        .send(
            &DescribeUserScramCredentialsRequest::default().with_users(Some(
                users
                    .iter()
                    .map(|u| UserName::default().with_name(StrBytes::from_string(u.to_string())))
                    .collect(),
            )),
        )
        .await
        .unwrap();
    assert_eq!(response.error_code, 0);
    response
        .results
        .iter()
        .map(|r| {
            let infos = r
                .credential_infos
                .iter()
                .map(|c| (c.mechanism, c.iterations))
                .collect();
            (r.user.as_str().to_string(), infos)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_registered_rotated_and_removed() {
    let dir = scratch("lifecycle");
    let job = Job::new(&dir);
    let mut creds = BTreeMap::from([
        ("alice".to_string(), credential(SHA512, "alice-password-1")),
        ("bob".to_string(), credential(SHA512, "bob-password")),
    ]);
    let p = plan(SHA512, &["alice", "bob"], &[]);

    let run = job.run(&p, &creds);
    run.assert_ok();
    let text = run.all_text();
    assert!(
        text.contains("Kafka SCRAM credentials provisioned"),
        "{text}"
    );
    for secret in [
        broker().admin_password(),
        "alice-password-1",
        "bob-password",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    for c in creds.values() {
        let encoded = c.encode();
        let salted = encoded.expose().rsplit('$').next().unwrap();
        assert!(!text.contains(salted), "a salted password printed:\n{text}");
    }
    let code512 = mechanism_code(ScramHash::Sha512).unwrap();
    let listed = described(&["alice", "bob"]).await;
    assert_eq!(listed["alice"], [(code512, SCRAM_ITERATIONS as i32)]);
    assert_eq!(listed["bob"], [(code512, SCRAM_ITERATIONS as i32)]);

    assert_login_ok(&dir, SHA512, "alice", "alice-password-1");
    assert_login_ok(&dir, SHA512, "bob", "bob-password");
    assert_login_refused(&dir, SHA512, "alice", "not-alice-password");
    // Only the plan's mechanism was registered.
    assert_login_refused(&dir, SHA256, "alice", "alice-password-1");

    // Running again changes nothing.
    let again = provision_kafka(&input(&p, &creds)).await.unwrap();
    assert_eq!(
        again,
        ProvisionSummary {
            registered: vec!["alice".into(), "bob".into()],
            ..Default::default()
        }
    );
    job.run(&p, &creds).assert_ok();
    assert_login_ok(&dir, SHA512, "alice", "alice-password-1");

    // Rotation: alice's new password works at once and the old one no longer does.
    creds.insert("alice".into(), credential(SHA512, "alice-password-2"));
    job.run(&p, &creds).assert_ok();
    assert_login_ok(&dir, SHA512, "alice", "alice-password-2");
    assert_login_refused(&dir, SHA512, "alice", "alice-password-1");

    // bob leaves the spec; a removal of a user that never existed succeeds too.
    creds.remove("bob");
    let p2 = plan(SHA512, &["alice"], &[("bob", SHA512), ("nobody", SHA512)]);
    let summary = provision_kafka(&input(&p2, &creds)).await.unwrap();
    assert_eq!(summary.registered, ["alice"]);
    assert_eq!(summary.removed, ["bob"]);
    assert_eq!(summary.already_absent, ["nobody"]);
    assert_login_refused(&dir, SHA512, "bob", "bob-password");
    assert_login_ok(&dir, SHA512, "alice", "alice-password-2");
    let listed = described(&["alice", "bob"]).await;
    assert_eq!(listed["alice"], [(code512, SCRAM_ITERATIONS as i32)]);
    assert!(listed["bob"].is_empty());

    // The same plan again, as the Job: bob is already gone, which is success.
    job.run(&p2, &creds).assert_ok();
    let summary = provision_kafka(&input(&p2, &creds)).await.unwrap();
    assert!(summary.removed.is_empty());
    assert_eq!(summary.already_absent, ["bob", "nobody"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_users_and_a_mechanism_change() {
    let dir = scratch("sha256");
    let job = Job::new(&dir);
    // The admin logs in with the plan's mechanism, here SCRAM-SHA-256.
    let creds = BTreeMap::from([("carol".to_string(), credential(SHA256, "carol-password"))]);
    job.run(&plan(SHA256, &["carol"], &[]), &creds).assert_ok();
    assert_login_ok(&dir, SHA256, "carol", "carol-password");
    assert_login_refused(&dir, SHA512, "carol", "carol-password");

    // carol moves to SCRAM-SHA-512: one run registers the new mechanism and drops the old one,
    // which the brokers only accept as two requests.
    let creds = BTreeMap::from([("carol".to_string(), credential(SHA512, "carol-password"))]);
    let p = plan(SHA512, &["carol"], &[("carol", SHA256)]);
    let summary = provision_kafka(&input(&p, &creds)).await.unwrap();
    assert_eq!(summary.registered, ["carol"]);
    assert_eq!(summary.removed, ["carol"]);
    assert_login_ok(&dir, SHA512, "carol", "carol-password");
    assert_login_refused(&dir, SHA256, "carol", "carol-password");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_carry_a_reason_and_no_secret() {
    let dir = scratch("failures");
    let creds = BTreeMap::from([("dave".to_string(), credential(SHA512, "dave-password"))]);
    let p = plan(SHA512, &["dave"], &[]);

    let mut wrong_admin = Job::new(&dir);
    wrong_admin.admin_password = "not-the-admin-password".into();
    let run = wrong_admin.run(&p, &creds);
    run.assert_failed("AdminLoginFailed");
    let text = run.all_text();
    assert!(text.contains("SASL_AUTHENTICATION_FAILED"), "{text}");
    for secret in [
        "not-the-admin-password",
        broker().admin_password(),
        "dave-password",
    ] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }

    let mut unreachable = Job::new(&dir);
    let closed = free_port();
    unreachable.bootstrap = Some(format!("127.0.0.1:{closed},localhost:{closed}"));
    let run = unreachable.run(&p, &creds);
    run.assert_failed("ConnectFailed");
    assert!(
        run.termination.contains(&format!("127.0.0.1:{closed}")),
        "{}",
        run.termination
    );

    let mut other_ca = Job::new(&dir);
    other_ca.ca_pem = test_pki(&["localhost"], &["127.0.0.1"]).ca_pem;
    let run = other_ca.run(&p, &creds);
    run.assert_failed("TLSFailed");
    assert!(
        run.termination.contains("UnknownIssuer"),
        "{}",
        run.termination
    );

    // Without a CA bundle nothing can be verified: refused before connecting.
    let mut no_ca = input(&p, &creds);
    no_ca.ca_pem = None;
    let err = provision_kafka(&no_ca).await.unwrap_err();
    assert_eq!(err.reason(), "TLSFailed", "{err}");

    // A planned user without a credential is an input error; nothing was registered by any of
    // the failed runs.
    let err = provision_kafka(&input(&p, &BTreeMap::new()))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "InvalidInput", "{err}");
    assert!(described(&["dave"]).await["dave"].is_empty());

    // The binary names a missing input and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["provision", "kafka"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(env::PLAN_FILE));
}
