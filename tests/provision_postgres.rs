//! `bulwark provision postgres` against a real PostgreSQL 15 with TLS: the plan and verifiers
//! come from the pure facet, the roles log in with the `uri` of their Secret over verify-full.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use bulwark::api::{SecurityPolicy, SecurityPolicySpec};
use bulwark::facets::postgres::{
    DesiredPostgres, ObservedPostgres, PLAN_KEY, VERIFIERS_KEY, desired_postgres, env,
    parse_verifiers_secret,
};
use bulwark::facets::tls::Sensitive;
use bulwark::provision::postgres::{ProvisionInput, provision_postgres};
use bulwark_testenv::tls::test_pki;
use bulwark_testenv::{PgTls, Postgres};
use kube::ResourceExt;

const ADMIN: &str = "traffic_admin";
const APP: &str = "traffic_app";
const ANALYTICS: &str = "traffic_analytics";

fn policy(port: u16, with_analytics: bool) -> SecurityPolicy {
    let analytics = if with_analytics {
        "    - {name: traffic_analytics, access: ReadOnly, schemas: [app]}\n"
    } else {
        ""
    };
    let yaml = format!(
        r#"
tiers: {{}}
tls: {{ca: {{secretName: traffic-ca}}}}
postgres:
  host: 127.0.0.1
  port: {port}
  database: traffic
  adminSecretRef: {{name: pg-admin}}
  roles:
    - {{name: traffic_admin, access: Admin, schemas: [app]}}
    - {{name: traffic_app, access: ReadWrite, schemas: [app], connectionLimit: 20}}
{analytics}"#
    );
    let spec: SecurityPolicySpec = serde_yaml::from_str(&yaml).unwrap();
    let mut p = SecurityPolicy::new("traffic", spec);
    p.metadata.namespace = Some("traffic".into());
    p
}

fn secret_value(d: &DesiredPostgres, role: &str, key: &str) -> String {
    let name = format!("traffic-pg-{}", role.replace('_', "-"));
    let secret = d
        .role_secrets
        .iter()
        .find(|s| s.name_any() == name)
        .unwrap_or_else(|| panic!("no Secret {name}"));
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// What the controller would read back after applying `d`.
fn observed_from(d: &DesiredPostgres, roles: &[&str]) -> ObservedPostgres {
    ObservedPostgres {
        passwords: roles
            .iter()
            .map(|r| {
                (
                    r.to_string(),
                    Sensitive::new(secret_value(d, r, "password")),
                )
            })
            .collect(),
        verifiers_secret: d.verifiers_secret.data.clone(),
        rotate: false,
    }
}

struct Fixture {
    pg: Postgres,
    ca_pem: String,
    ca_file: PathBuf,
    dir: PathBuf,
}

impl Fixture {
    fn input(&self, d: &DesiredPostgres) -> ProvisionInput {
        let (verifiers, _) = parse_verifiers_secret(d.verifiers_secret.data.as_ref().unwrap());
        ProvisionInput {
            plan: d.plan.clone(),
            verifiers,
            admin_user: self.pg.superuser().to_string(),
            admin_password: Sensitive::new(self.pg.superuser_password().to_string()),
            ca_pem: Some(self.ca_pem.clone()),
        }
    }

    /// Runs `sql` with psql as whoever `uri` names, trusting only the test CA.
    fn psql_uri(&self, uri: &str, sql: &str) -> Result<String, String> {
        let uri = format!("{uri}&sslrootcert={}", self.ca_file.display());
        let out = Command::new(self.pg.bin_dir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", &uri, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .expect("running psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn as_role(&self, d: &DesiredPostgres, role: &str, sql: &str) -> Result<String, String> {
        self.psql_uri(&secret_value(d, role, "uri"), sql)
    }

    /// Everything provisioning decides, as text: roles, memberships, schema, table and
    /// default ACLs, the database ACL.
    fn snapshot(&self) -> String {
        self.pg
            .psql(
                "traffic",
                r#"SELECT string_agg(x, E'\n' ORDER BY x) FROM (
 SELECT format('role %s super=%s inherit=%s createrole=%s createdb=%s login=%s repl=%s bypassrls=%s connlimit=%s pw=%s until=%s config=%s',
   rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
   rolbypassrls, rolconnlimit, rolpassword, rolvaliduntil,
   (SELECT setconfig FROM pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0)) AS x
   FROM pg_authid a WHERE rolname LIKE 'traffic%'
 UNION ALL SELECT format('member %s of %s', m.member::regrole, m.roleid::regrole)
   FROM pg_auth_members m WHERE m.member::regrole::text LIKE 'traffic%'
 UNION ALL SELECT format('schema %s owner=%s acl=%s', nspname, nspowner::regrole, nspacl)
   FROM pg_namespace WHERE nspname IN ('public', 'app')
 UNION ALL SELECT format('rel %s.%s owner=%s acl=%s', relnamespace::regnamespace, relname, relowner::regrole, relacl)
   FROM pg_class WHERE relnamespace::regnamespace::text IN ('public', 'app')
 UNION ALL SELECT format('default %s %s %s %s', defaclrole::regrole, defaclnamespace::regnamespace, defaclobjtype, defaclacl)
   FROM pg_default_acl
 UNION ALL SELECT format('db %s', datacl) FROM pg_database WHERE datname = 'traffic'
) s"#,
            )
            .unwrap()
    }

    /// Runs the binary exactly as the Job does: plan and verifiers as mounted files, admin
    /// credentials in the environment.
    fn run_binary(&self, d: &DesiredPostgres) -> std::process::Output {
        let data = d.verifiers_secret.data.as_ref().unwrap();
        let plan_file = self.dir.join(PLAN_KEY);
        let verifiers_file = self.dir.join(VERIFIERS_KEY);
        std::fs::write(&plan_file, &data[PLAN_KEY].0).unwrap();
        std::fs::write(&verifiers_file, &data[VERIFIERS_KEY].0).unwrap();
        Command::new(env!("CARGO_BIN_EXE_bulwark"))
            .args(["provision", "postgres"])
            .env_clear()
            .env(env::PLAN_FILE, &plan_file)
            .env(env::VERIFIERS_FILE, &verifiers_file)
            .env(env::ADMIN_USER, self.pg.superuser())
            .env(env::ADMIN_PASSWORD, self.pg.superuser_password())
            .env(env::CA_FILE, &self.ca_file)
            .stdin(Stdio::null())
            .output()
            .expect("running bulwark provision postgres")
    }
}

#[track_caller]
fn assert_denied(result: Result<String, String>, what: &str) {
    match result {
        Ok(out) => panic!("{what} should have been refused, got {out:?}"),
        Err(e) => assert!(
            [
                "permission denied",
                "must be owner",
                "read-only transaction"
            ]
            .iter()
            .any(|s| e.contains(s)),
            "{what} failed for another reason: {e}"
        ),
    }
}

#[track_caller]
fn assert_login_refused(result: Result<String, String>, what: &str) {
    match result {
        Ok(out) => panic!("{what}: login should have been refused, got {out:?}"),
        Err(e) => assert!(
            e.contains("password authentication failed") || e.contains("not permitted to log in"),
            "{what}: refused for another reason: {e}"
        ),
    }
}

fn start() -> Fixture {
    let pki = test_pki(&["localhost"], &["127.0.0.1"]);
    let pg = Postgres::start(Some(PgTls {
        cert_pem: pki.cert_pem.clone(),
        key_pem: pki.key_pem.clone(),
        ca_pem: pki.ca_pem.clone(),
    }))
    .expect("starting PostgreSQL");
    pg.psql("postgres", "CREATE DATABASE traffic").unwrap();
    let dir = pg.state_dir().join("provision-test");
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    Fixture {
        pg,
        ca_pem: pki.ca_pem,
        ca_file,
        dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_least_privilege_idempotent_and_repaired() {
    let fx = start();
    let port = fx.pg.port();
    let p = policy(port, true);
    let d = desired_postgres(&p, &ObservedPostgres::default(), Some(&fx.ca_pem))
        .unwrap()
        .unwrap();
    assert_eq!(secret_value(&d, APP, "ca.crt"), fx.ca_pem);
    assert!(secret_value(&d, APP, "uri").contains("sslmode=verify-full"));

    let summary = provision_postgres(&fx.input(&d)).await.unwrap();
    assert_eq!(summary.created, [ADMIN, APP, ANALYTICS]);

    // Every role logs in over verify-full with its Secret's uri; without TLS nobody does.
    for role in [ADMIN, APP, ANALYTICS] {
        assert_eq!(
            fx.as_role(&d, role, "SELECT current_user").unwrap(),
            role,
            "{role} logs in"
        );
        assert_eq!(
            fx.as_role(
                &d,
                role,
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            .unwrap(),
            "t"
        );
        let plain = secret_value(&d, role, "uri").replace("sslmode=verify-full", "sslmode=disable");
        let err = fx.psql_uri(&plain, "SELECT 1").unwrap_err();
        assert!(err.contains("no pg_hba.conf entry"), "{role}: {err}");
        assert_denied(
            fx.as_role(&d, role, "SELECT * FROM pg_authid"),
            "reading pg_authid",
        );
    }
    // verify-full really checks the host name: the certificate does not cover 127.0.0.2.
    let wrong_host = secret_value(&d, APP, "uri").replace("127.0.0.1", "127.0.0.2");
    assert!(fx.psql_uri(&wrong_host, "SELECT 1").is_err());

    // The admin owns its schema; tables it creates are covered by default privileges.
    fx.as_role(
        &d,
        ADMIN,
        "CREATE TABLE app.items (id serial PRIMARY KEY, name text)",
    )
    .unwrap();
    fx.as_role(&d, APP, "INSERT INTO app.items (name) VALUES ('a'), ('b')")
        .unwrap();
    fx.as_role(&d, APP, "UPDATE app.items SET name = 'c' WHERE name = 'b'")
        .unwrap();
    fx.as_role(&d, APP, "DELETE FROM app.items WHERE name = 'a'")
        .unwrap();
    assert_eq!(
        fx.as_role(&d, APP, "SELECT name FROM app.items").unwrap(),
        "c"
    );
    assert_denied(
        fx.as_role(&d, APP, "CREATE TABLE app.mine (x int)"),
        "app CREATE TABLE in app",
    );
    assert_denied(
        fx.as_role(&d, APP, "CREATE TABLE public.mine (x int)"),
        "app CREATE TABLE in public",
    );
    assert_denied(
        fx.as_role(&d, APP, "DROP TABLE app.items"),
        "app DROP TABLE",
    );
    assert_denied(fx.as_role(&d, APP, "TRUNCATE app.items"), "app TRUNCATE");
    assert_denied(
        fx.as_role(&d, APP, "CREATE ROLE intruder"),
        "app CREATE ROLE",
    );
    assert_denied(
        fx.as_role(&d, ADMIN, "CREATE ROLE intruder"),
        "admin CREATE ROLE",
    );

    assert_eq!(
        fx.as_role(&d, ANALYTICS, "SELECT count(*) FROM app.items")
            .unwrap(),
        "1"
    );
    assert_denied(
        fx.as_role(&d, ANALYTICS, "INSERT INTO app.items (name) VALUES ('x')"),
        "analytics INSERT",
    );
    assert_denied(
        fx.as_role(
            &d,
            ANALYTICS,
            "SET default_transaction_read_only = off; UPDATE app.items SET name = 'x'",
        ),
        "analytics UPDATE",
    );

    // A table the admin creates later is usable at once, without another run.
    fx.as_role(&d, ADMIN, "CREATE TABLE app.later (v text)")
        .unwrap();
    fx.as_role(&d, APP, "INSERT INTO app.later VALUES ('x')")
        .unwrap();
    assert_eq!(
        fx.as_role(&d, ANALYTICS, "SELECT v FROM app.later")
            .unwrap(),
        "x"
    );

    // Running again, in process and as the Job's command, changes nothing.
    let before = fx.snapshot();
    assert!(before.contains("role traffic_app super=f"), "{before}");
    let again = provision_postgres(&fx.input(&d)).await.unwrap();
    assert!(again.created.is_empty());
    assert_eq!(fx.snapshot(), before);
    let out = fx.run_binary(&d);
    assert!(
        out.status.success(),
        "binary failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fx.snapshot(), before);

    // Drift by hand is repaired by the next run.
    fx.pg
        .psql(
            "traffic",
            "ALTER ROLE traffic_app SUPERUSER CREATEROLE PASSWORD 'changed-by-hand' CONNECTION LIMIT 999; \
             GRANT pg_read_all_data TO traffic_analytics; \
             ALTER ROLE traffic_analytics RESET default_transaction_read_only; \
             GRANT CREATE ON SCHEMA app TO traffic_app; \
             GRANT TRUNCATE ON app.items TO traffic_app",
        )
        .unwrap();
    assert_login_refused(
        fx.as_role(&d, APP, "SELECT 1"),
        "app with the Secret's password",
    );
    assert_ne!(fx.snapshot(), before);
    provision_postgres(&fx.input(&d)).await.unwrap();
    assert_eq!(fx.snapshot(), before);
    assert_denied(
        fx.as_role(&d, APP, "SELECT * FROM pg_authid"),
        "repaired app",
    );
    assert_denied(
        fx.as_role(&d, ANALYTICS, "SELECT * FROM pg_authid"),
        "repaired analytics",
    );

    // Rotation: the new password works, the old one is refused.
    let roles = [ADMIN, APP, ANALYTICS];
    let mut observed = observed_from(&d, &roles);
    observed.rotate = true;
    let rotated = desired_postgres(&p, &observed, Some(&fx.ca_pem))
        .unwrap()
        .unwrap();
    assert_ne!(rotated.job_hash, d.job_hash);
    provision_postgres(&fx.input(&rotated)).await.unwrap();
    assert_eq!(fx.as_role(&rotated, APP, "SELECT 1").unwrap(), "1");
    assert_login_refused(fx.as_role(&d, APP, "SELECT 1"), "app with the old password");

    // A role leaving the spec loses its login but is not dropped.
    let p2 = policy(port, false);
    let d2 = desired_postgres(&p2, &observed_from(&rotated, &roles), Some(&fx.ca_pem))
        .unwrap()
        .unwrap();
    assert_eq!(d2.plan.disable, [ANALYTICS]);
    let summary = provision_postgres(&fx.input(&d2)).await.unwrap();
    assert_eq!(summary.disabled, [ANALYTICS]);
    assert_login_refused(
        fx.as_role(&rotated, ANALYTICS, "SELECT 1"),
        "removed analytics",
    );
    assert_eq!(
        fx.pg
            .psql(
                "traffic",
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'traffic_analytics'"
            )
            .unwrap()
            .trim(),
        "f"
    );
    assert_eq!(fx.as_role(&d2, APP, "SELECT 1").unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_password_and_untrusted_ca_fail_clearly() {
    let fx = start();
    let p = policy(fx.pg.port(), true);
    let d = desired_postgres(&p, &ObservedPostgres::default(), Some(&fx.ca_pem))
        .unwrap()
        .unwrap();

    let mut wrong = fx.input(&d);
    wrong.admin_password = Sensitive::new("not-the-password".into());
    let err = provision_postgres(&wrong).await.unwrap_err();
    assert_eq!(err.reason(), "AdminLoginFailed", "{err}");
    assert!(!err.to_string().contains("not-the-password"));

    let mut untrusted = fx.input(&d);
    untrusted.ca_pem = Some(test_pki(&["localhost"], &[]).ca_pem);
    let err = provision_postgres(&untrusted).await.unwrap_err();
    assert_eq!(err.reason(), "ConnectFailed", "{err}");
    assert!(
        fx.pg
            .psql(
                "traffic",
                "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'traffic%'"
            )
            .unwrap()
            .trim()
            == "0",
        "nothing applied"
    );

    // The binary reports a missing input and exits non-zero.
    let out = Command::new(env!("CARGO_BIN_EXE_bulwark"))
        .args(["provision", "postgres"])
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(env::PLAN_FILE));
}
