//! Every SecurityPolicy in `tests/data/invalid` is refused: by the API server, naming the field,
//! or, for what only the operator can see, by a False condition naming the field, after which
//! the operator stays quiet and keeps every credential it already produced.
//!
//! Each file is one policy named `bad` (or `bad-...` where the name itself is refused) without a
//! namespace, under two comment lines:
//! `# <what is wrong>` and one of
//! `# expect: admission <text of the API server's error>`,
//! `# expect: condition <type> <reason> <text of the message>` or
//! `# expect: known-gap` (accepted and mishandled today: skipped, with a note).

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::{Client, ResourceExt};
use support::*;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/invalid");
/// Long enough for a first reconcile even with every condition case running at once.
const CONDITION_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a settled policy is watched for writes and Secret changes.
const QUIET_WINDOW: Duration = Duration::from_secs(5);

/// What a corpus file says must happen to it.
#[derive(Debug)]
enum Expect {
    /// The API server refuses the create with an error containing this text.
    Admission(String),
    /// The operator reports condition `type_` False with `reason` and a message containing `field`.
    Condition {
        type_: String,
        reason: String,
        field: String,
    },
    /// Accepted and mishandled today; skipped until the operator is fixed.
    KnownGap,
}

struct Case {
    file: String,
    what: String,
    expect: Expect,
    body: serde_json::Value,
}

fn parse_expect(line: &str) -> Expect {
    if let Some(field) = line.strip_prefix("admission ") {
        return Expect::Admission(field.to_string());
    }
    if let Some(rest) = line.strip_prefix("condition ") {
        let mut parts = rest.splitn(3, ' ');
        let (Some(type_), Some(reason), Some(field)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("`condition` needs a type, a reason and a message substring: {line:?}");
        };
        return Expect::Condition {
            type_: type_.to_string(),
            reason: reason.to_string(),
            field: field.to_string(),
        };
    }
    assert_eq!(line, "known-gap", "unknown expectation {line:?}");
    Expect::KnownGap
}

fn expect_is_admission(expect: &Expect) -> bool {
    matches!(expect, Expect::Admission(_))
}

fn read_case(path: &Path) -> Case {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let mut comments = text.lines().map_while(|l| l.strip_prefix("# "));
    let what = comments
        .next()
        .unwrap_or_else(|| panic!("{file}: the first line says what is wrong"))
        .to_string();
    let expect = comments
        .next()
        .and_then(|l| l.strip_prefix("expect: "))
        .map(parse_expect)
        .unwrap_or_else(|| panic!("{file}: the second line is `# expect: ...`"));
    let body: serde_json::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: not YAML: {e}"));
    let name = body["metadata"]["name"].as_str().unwrap_or_default();
    assert!(
        name == "bad" || (name.starts_with("bad-") && expect_is_admission(&expect)),
        "{file}: metadata.name is bad (or starts with bad- for a name admission refuses)"
    );
    assert!(
        body["metadata"].get("namespace").is_none(),
        "{file}: no namespace"
    );
    Case {
        file,
        what,
        expect,
        body,
    }
}

fn corpus() -> Vec<Case> {
    let mut paths: Vec<_> = std::fs::read_dir(CORPUS)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths.iter().map(|p| read_case(p)).collect()
}

fn policies(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<SecurityPolicy>(&()),
    )
}

/// Creates the file's policy in `ns` for real (no dry run).
async fn create(client: &Client, ns: &str, case: &Case) -> Result<DynamicObject, kube::Error> {
    let mut body = case.body.clone();
    body["metadata"]["namespace"] = ns.into();
    let object: DynamicObject = serde_json::from_value(body).unwrap();
    let params = PostParams {
        dry_run: false,
        ..PostParams::default()
    };
    policies(client, ns).create(&params, &object).await
}

/// Refused with 422 (400 only for a value of the wrong type), naming `field`.
async fn check_admission(
    client: &Client,
    ns: &str,
    case: &Case,
    field: &str,
) -> Result<(), String> {
    let status = match create(client, ns, case).await {
        Ok(_) => {
            let name = case.body["metadata"]["name"].as_str().unwrap_or("bad");
            policies(client, ns)
                .delete(name, &DeleteParams::default())
                .await
                .unwrap();
            return Err("the API server accepted it".into());
        }
        Err(kube::Error::Api(status)) => status,
        Err(e) => return Err(format!("expected a 422 from the API server, got {e}")),
    };
    let type_error = status.code == 400 && status.message.contains("must be of type");
    if status.code != 422 && !type_error {
        return Err(format!(
            "expected 422, got {}: {}",
            status.code, status.message
        ));
    }
    if !status.message.contains(field) {
        return Err(format!(
            "error does not contain {field:?}: {}",
            status.message
        ));
    }
    Ok(())
}

/// Data of every Secret the operator produced in `ns`, by name.
async fn produced_secrets(
    client: &Client,
    ns: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=bulwark"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| {
            let name = s.name_any();
            let data = s.data.unwrap_or_default().into_iter();
            (name, data.map(|(k, v)| (k, v.0)).collect())
        })
        .collect()
}

/// Accepted; the condition turns False with the reason and names the field; then nothing moves.
async fn check_condition(
    client: &Client,
    ns: &str,
    case: &Case,
    (type_, reason, field): (&str, &str, &str),
) -> Result<(), String> {
    create(client, ns, case)
        .await
        .map_err(|e| format!("the API server refused it: {e}"))?;
    let deadline = Instant::now() + CONDITION_TIMEOUT;
    let mut seen = None;
    loop {
        let now = condition(client, ns, "bad", type_).await;
        if let Some((status, r, message)) = &now
            && status == "False"
            && r == reason
        {
            if !message.contains(field) {
                return Err(format!(
                    "{type_} {reason}: message does not contain {field:?}: {message}"
                ));
            }
            break;
        }
        if now.is_some() {
            seen = now;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {type_}=False {reason} within {CONDITION_TIMEOUT:?}; last seen {seen:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The reconcile our own status write triggers ends first; after that, silence.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = audited_writes(ns);
    let secrets_before = produced_secrets(client, ns).await;
    tokio::time::sleep(QUIET_WINDOW).await;
    let writes_after = audited_writes(ns);
    let secrets_after = produced_secrets(client, ns).await;
    let mut problems = Vec::new();
    if writes_after.len() > writes_before.len() {
        let mut writes: BTreeMap<&str, usize> = BTreeMap::new();
        for write in &writes_after[writes_before.len()..] {
            *writes.entry(write.trim_end()).or_default() += 1;
        }
        problems.push(format!(
            "the operator kept writing after {type_} settled: {writes:?}"
        ));
    }
    let changed: Vec<&String> = secrets_after
        .iter()
        .filter(|(name, data)| secrets_before.get(*name).is_some_and(|b| b != *data))
        .map(|(name, _)| name)
        .collect();
    if !changed.is_empty() {
        problems.push(format!(
            "Secrets regenerated after {type_} settled: {changed:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Runs one condition case in its own namespace with its own operator, and cleans up after it.
async fn run_condition_case(client: Client, ns: String, case: &Case) -> Result<(), String> {
    let Expect::Condition {
        type_,
        reason,
        field,
    } = &case.expect
    else {
        unreachable!()
    };
    let operator = Operator::start(&client, &ns);
    let mut result = check_condition(&client, &ns, case, (type_, reason, field)).await;
    let api = policies(&client, &ns);
    if api.get_opt("bad").await.unwrap().is_some() {
        api.delete("bad", &DeleteParams::default()).await.unwrap();
        let gone = tokio::time::timeout(Duration::from_secs(30), async {
            while api.get_opt("bad").await.unwrap().is_some() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if gone.is_err() && result.is_ok() {
            result = Err("the policy was not gone 30 s after its deletion".into());
        }
    }
    // A panic inside the operator surfaces here, as a failed case rather than an aborted test.
    if let Err(panic) = tokio::spawn(operator.stop()).await {
        result = Err(format!("the operator panicked: {panic}"));
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_policy_is_refused_naming_the_field() {
    let started = Instant::now();
    let cases = corpus();
    assert!(
        cases.len() >= 100,
        "the corpus holds {} files, at least 100 expected",
        cases.len()
    );
    let client = client().await;
    let admission_ns = namespace(&client, "invalid-admission").await;
    let mut failures: Vec<String> = Vec::new();
    let mut report: BTreeMap<&str, String> = BTreeMap::new();

    for case in &cases {
        let line = match &case.expect {
            Expect::Admission(field) => {
                match check_admission(&client, &admission_ns, case, field).await {
                    Ok(()) => format!("ok  {}", case.file),
                    Err(e) => {
                        failures.push(format!("{} ({}): {e}", case.file, case.what));
                        format!("FAIL {}", case.file)
                    }
                }
            }
            Expect::KnownGap => format!("gap {} (skipped: {})", case.file, case.what),
            Expect::Condition { .. } => continue,
        };
        report.insert(&case.file, line);
    }

    // Condition cases wait on the operator: run them side by side, one namespace each.
    let condition_cases: Vec<&Case> = cases
        .iter()
        .filter(|c| matches!(c.expect, Expect::Condition { .. }))
        .collect();
    let mut runs = Vec::new();
    for (i, case) in condition_cases.iter().enumerate() {
        let ns = namespace(&client, &format!("invalid-operator-{i}")).await;
        runs.push(run_condition_case(client.clone(), ns, case));
    }
    let outcomes = futures::future::join_all(runs).await;
    for (case, outcome) in condition_cases.iter().zip(outcomes) {
        let line = match outcome {
            Ok(()) => format!("ok  {}", case.file),
            Err(e) => {
                failures.push(format!("{} ({}): {e}", case.file, case.what));
                format!("FAIL {}", case.file)
            }
        };
        report.insert(&case.file, line);
    }

    for line in report.values() {
        println!("{line}");
    }
    println!("{} files checked in {:?}", cases.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} of {} files were not refused as expected:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
