//! The PostgreSQL facet end to end: the operator produces role Secrets and a role Job; the test
//! plays the kubelet (runs the Job's command locally with the env and mounts resolved from the
//! API, then finishes its pod) against a real PostgreSQL 15 with the policy's own certificate.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bulwark::api::SecurityPolicy;
use bulwark_testenv::{PgTls, Postgres};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use support::*;

async fn role_jobs(client: &kube::Client, ns: &str) -> Vec<Job> {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    api.list(&ListParams::default().labels("bulwark.dev/facet=postgres"))
        .await
        .unwrap()
        .items
}

fn psql_as(
    server: &Postgres,
    ca_file: &Path,
    user: &str,
    password: &str,
    sql: &str,
) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(format!(
            "host=localhost hostaddr=127.0.0.1 port={} user={user} dbname=traffic sslmode=verify-full sslrootcert={}",
            server.port(),
            ca_file.display()
        ))
        .args(["-XAtqc", sql, "-v", "ON_ERROR_STOP=1"])
        .env("PGPASSWORD", password)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_provisioned_by_the_job_and_rotate_on_request() {
    let client = client().await;
    let ns = namespace(&client, "pg").await;
    let scratch = std::env::temp_dir().join(format!("bulwark-pg-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();

    let mut policy = full_example_policy(&ns);
    add_dns_name(&mut policy, "postgres", "localhost");
    // Without an admin Secret there is no Job, and the condition says why.
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &policy).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "PostgresReady", "False").await;
    assert_eq!(reason, "AdminSecretMissing", "{message}");
    assert!(
        message.contains("spec.postgres.adminSecretRef"),
        "{message}"
    );
    assert!(role_jobs(&client, &ns).await.is_empty());
    let app_secret = secret_data(&client, &ns, "traffic-pg-traffic-app").await;
    assert!(app_secret["password"].len() >= 32);
    assert!(
        app_secret["uri"].contains("sslmode=verify-full"),
        "{}",
        app_secret["uri"]
    );

    // The database serves the policy's own certificate.
    let tls = secret_data(&client, &ns, "postgres-tls").await;
    let server = Postgres::start(Some(PgTls {
        cert_pem: tls["tls.crt"].clone(),
        key_pem: tls["tls.key"].clone(),
        ca_pem: tls["ca.crt"].clone(),
    }))
    .unwrap();
    server.psql("postgres", "CREATE DATABASE traffic").unwrap();
    let pg = policy.spec.postgres.as_mut().unwrap();
    pg.host = "localhost".into();
    pg.port = i32::from(server.port());
    apply_policy(&client, &policy).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let admin = Secret {
        metadata: ObjectMeta {
            name: Some("postgres-superuser".into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            [
                ("username".to_string(), server.superuser().to_string()),
                (
                    "password".to_string(),
                    server.superuser_password().to_string(),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &admin)
        .await
        .unwrap();

    let job = eventually(Duration::from_secs(40), "the role Job", || async {
        role_jobs(&client, &ns).await.into_iter().next()
    })
    .await;
    let container = &job
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let env_text = serde_json::to_string(&container.env).unwrap();
    assert!(
        !env_text.contains(&app_secret["password"]),
        "the plaintext password never reaches the Job"
    );
    assert!(play_kubelet(&client, &ns, &job, &scratch.join("run1")).await);
    let (reason, message) = wait_condition(&client, &ns, "traffic", "PostgresReady", "True").await;
    assert_eq!(reason, "RolesApplied", "{message}");

    let ca_file = scratch.join("ca.crt");
    std::fs::write(&ca_file, &app_secret["ca.crt"]).unwrap();
    let roles: BTreeMap<&str, BTreeMap<String, String>> = [
        (
            "admin",
            secret_data(&client, &ns, "traffic-pg-traffic-admin").await,
        ),
        (
            "app",
            secret_data(&client, &ns, "traffic-pg-traffic-app").await,
        ),
        (
            "analytics",
            secret_data(&client, &ns, "traffic-pg-traffic-analytics").await,
        ),
    ]
    .into();
    let login = |role: &str, sql: &str| {
        psql_as(
            &server,
            &ca_file,
            &roles[role]["username"],
            &roles[role]["password"],
            sql,
        )
    };
    login("admin", "CREATE TABLE public.readings (id int, speed int)").unwrap();
    login("app", "INSERT INTO public.readings VALUES (1, 88)")
        .expect("app writes tables the admin creates later");
    assert_eq!(
        login("analytics", "SELECT speed FROM public.readings").unwrap(),
        "88"
    );
    assert!(login("analytics", "INSERT INTO public.readings VALUES (2, 1)").is_err());
    assert!(login("app", "CREATE TABLE public.x (id int)").is_err());
    assert!(login("app", "TRUNCATE public.readings").is_err());
    for role in ["admin", "app", "analytics"] {
        assert!(
            login(role, "SELECT rolpassword FROM pg_authid").is_err(),
            "{role} must not read pg_authid"
        );
    }
    let no_tls = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={} user={} dbname=traffic sslmode=disable",
            server.port(),
            roles["app"]["username"]
        ))
        .args(["-XAtqc", "SELECT 1"])
        .env("PGPASSWORD", &roles["app"]["password"])
        .output()
        .unwrap();
    assert!(!no_tls.status.success(), "a non-TLS login is refused");

    // Restart: no new Job, no new password.
    operator.stop().await;
    let operator = Operator::start(&client, &ns);
    operator.wait_reconciled().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let jobs = role_jobs(&client, &ns).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].name_any(), job.name_any(), "same plan, same Job");
    assert_eq!(
        secret_data(&client, &ns, "traffic-pg-traffic-app").await["password"],
        roles["app"]["password"]
    );

    // Rotate: a new plan and Job; the new password works, the old one is refused.
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "pg-1"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rotated_job = eventually(Duration::from_secs(30), "a new role Job", || async {
        role_jobs(&client, &ns)
            .await
            .into_iter()
            .find(|j| j.name_any() != job.name_any())
    })
    .await;
    assert!(play_kubelet(&client, &ns, &rotated_job, &scratch.join("run2")).await);
    wait_condition(&client, &ns, "traffic", "PostgresReady", "True").await;
    let new_app = secret_data(&client, &ns, "traffic-pg-traffic-app").await;
    assert_ne!(new_app["password"], roles["app"]["password"]);
    psql_as(
        &server,
        &ca_file,
        &new_app["username"],
        &new_app["password"],
        "SELECT 1",
    )
    .expect("new password works");
    assert!(
        psql_as(
            &server,
            &ca_file,
            &new_app["username"],
            &roles["app"]["password"],
            "SELECT 1"
        )
        .is_err()
    );
    eventually(
        Duration::from_secs(30),
        "the old Job to be cleaned up",
        || async { (role_jobs(&client, &ns).await.len() == 1).then_some(()) },
    )
    .await;

    // Drift inside the database is repaired by the resync: the finished Job runs again.
    let app_user = new_app["username"].clone();
    server
        .psql(
            "postgres",
            &format!("ALTER ROLE {app_user} SUPERUSER CREATEROLE"),
        )
        .unwrap();
    let finished = role_jobs(&client, &ns).await.remove(0);
    policy.spec.postgres.as_mut().unwrap().resync_interval = Some("2s".into());
    apply_policy(&client, &policy).await.unwrap();
    let rerun = eventually(
        Duration::from_secs(40),
        "the resync to re-create the role Job",
        || async {
            role_jobs(&client, &ns).await.into_iter().find(|j| {
                j.metadata.uid != finished.metadata.uid && j.metadata.deletion_timestamp.is_none()
            })
        },
    )
    .await;
    assert_eq!(
        rerun.name_any(),
        finished.name_any(),
        "same plan, same Job name"
    );
    assert!(play_kubelet(&client, &ns, &rerun, &scratch.join("run3")).await);
    let flags = server
        .psql(
            "postgres",
            &format!("SELECT rolsuper::text || ',' || rolcreaterole::text FROM pg_roles WHERE rolname = '{app_user}'"),
        )
        .unwrap();
    assert_eq!(
        flags.trim(),
        "false,false",
        "SUPERUSER and CREATEROLE granted by hand are revoked"
    );
    assert_eq!(
        secret_data(&client, &ns, "traffic-pg-traffic-app").await["password"],
        new_app["password"],
        "a resync never changes a password"
    );

    // A wrong admin password: the attempt fails, the condition says why, nothing is retried by us.
    let wrong = "not-the-admin-password";
    let patch = serde_json::json!({"stringData": {"password": wrong}});
    secrets
        .patch(
            "postgres-superuser",
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let failing = eventually(Duration::from_secs(40), "the next resync Job", || async {
        role_jobs(&client, &ns).await.into_iter().find(|j| {
            j.metadata.uid != rerun.metadata.uid && j.metadata.deletion_timestamp.is_none()
        })
    })
    .await;
    assert!(!play_kubelet(&client, &ns, &failing, &scratch.join("run4")).await);
    let message = eventually(
        Duration::from_secs(30),
        "PostgresReady to report the failed login",
        || async {
            condition(&client, &ns, "traffic", "PostgresReady")
                .await
                .filter(|(status, reason, _)| status == "False" && reason == "AdminLoginFailed")
                .map(|(_, _, message)| message)
        },
    )
    .await;
    assert!(message.contains("retries with backoff"), "{message}");
    assert!(
        !message.contains(wrong),
        "the password never reaches status"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let jobs = role_jobs(&client, &ns).await;
    assert_eq!(
        jobs.len(),
        1,
        "a failing Job is left to the Job controller's backoff"
    );
    assert_eq!(jobs[0].metadata.uid, failing.metadata.uid);
    std::fs::remove_dir_all(&scratch).ok();
    operator.stop().await;
}
