//! PostgreSQL facet: a generated password per role, its SCRAM-SHA-256 verifier, the role plan and
//! the Job that applies it, as pure functions of the spec and what exists. No I/O here.
//!
//! The plaintext password lives only in the role's own Secret; the Job sees verifiers only.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::{PgIdentifier, PostgresSpec, RoleAccess, SecurityPolicy, SslMode};
use crate::facets::job::{JobSettings, ProvisionJob, job_name, provision_job, short_hash};
use crate::facets::tls::{Sensitive, generate_password};
use crate::kube_io::{Facet, produced_meta};
use crate::scram::ScramHash;

pub const SECRET_TYPE_BASIC_AUTH: &str = "kubernetes.io/basic-auth";
/// Key of the verifiers Secret holding `{role: verifier}` as JSON.
pub const VERIFIERS_KEY: &str = "verifiers.json";
/// Key of the verifiers Secret holding the [`RolePlan`] as JSON.
pub const PLAN_KEY: &str = "plan.json";
/// SCRAM iteration count; PostgreSQL's own default.
pub const SCRAM_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 16;
const DEFAULT_SCHEMA: &str = "public";

/// Where the Job finds its inputs: the contract between [`desired_role_job`] and
/// `bulwark provision postgres`.
pub mod env {
    /// Path of the [`super::RolePlan`] JSON (or `BULWARK_PG_PLAN` with the JSON itself).
    pub const PLAN_FILE: &str = "BULWARK_PG_PLAN_FILE";
    pub const PLAN: &str = "BULWARK_PG_PLAN";
    /// Path of the `{role: verifier}` JSON (or `BULWARK_PG_VERIFIERS` with the JSON itself).
    pub const VERIFIERS_FILE: &str = "BULWARK_PG_VERIFIERS_FILE";
    pub const VERIFIERS: &str = "BULWARK_PG_VERIFIERS";
    /// Admin login the Job connects with.
    pub const ADMIN_USER: &str = "BULWARK_PG_ADMIN_USER";
    pub const ADMIN_PASSWORD: &str = "BULWARK_PG_ADMIN_PASSWORD";
    /// PEM bundle the server certificate must chain to; absent: nothing to verify against.
    pub const CA_FILE: &str = "BULWARK_PG_CA_FILE";
}

/// Why the PostgreSQL facet cannot produce its objects. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("spec.postgres.adminSecretRef is not set: the role Job has no credentials")]
    NoAdminSecretRef,
    #[error("the system random number generator failed")]
    Random,
    #[error("spec.postgres.resyncInterval: {0}")]
    InvalidResyncInterval(#[source] crate::api::ParseDurationError),
}

impl PgError {
    /// Reason of the `PostgresReady=False` condition this error produces.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoAdminSecretRef => "AdminSecretMissing",
            Self::Random => "GenerationFailed",
            Self::InvalidResyncInterval(_) => "InvalidSpec",
        }
    }
}

/// What exists now. Build it with `..Default::default()` so new fields do not break callers.
#[derive(Clone, Debug, Default)]
pub struct ObservedPostgres {
    /// `password` of each existing role Secret, by role name.
    pub passwords: BTreeMap<String, Sensitive<String>>,
    /// The `<policy>-pg-verifiers` Secret's data, when it exists.
    pub verifiers_secret: Option<BTreeMap<String, ByteString>>,
    /// The user asked for new passwords (annotation `bulwark.dev/rotate` carries a value status
    /// has not recorded as handled): every password is regenerated once.
    pub rotate: bool,
}

/// One role as the Job applies it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PlannedRole {
    pub name: String,
    pub access: RoleAccess,
    pub schemas: Vec<String>,
    /// -1: unlimited.
    pub connection_limit: i32,
}

/// Everything `bulwark provision postgres` applies; it is hashed into the Job's name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolePlan {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub ssl_mode: SslMode,
    /// Admin roles first, so the schemas they own exist before others are granted on them.
    pub roles: Vec<PlannedRole>,
    /// Roles that were in the spec once and are no longer: NOLOGIN, never dropped.
    pub disable: Vec<String>,
}

/// Everything the PostgreSQL facet wants to exist. Debug shows names, never Secret data.
#[derive(Clone)]
pub struct DesiredPostgres {
    /// One `kubernetes.io/basic-auth` Secret per role, in spec order.
    pub role_secrets: Vec<Secret>,
    /// `<policy>-pg-verifiers`: [`VERIFIERS_KEY`] and [`PLAN_KEY`].
    pub verifiers_secret: Secret,
    pub plan: RolePlan,
    /// Short sha256 of plan and verifiers: the suffix of the role Job's name.
    pub job_hash: String,
    /// Roles whose password this run generated (first time or rotation); one Event each.
    pub generated: Vec<String>,
    /// [`ObservedPostgres::rotate`] was set and is answered by this run.
    pub rotate_handled: bool,
    /// `resyncInterval`: how often the role Job runs again with an unchanged plan.
    pub resync: Option<std::time::Duration>,
}

impl std::fmt::Debug for DesiredPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.role_secrets.iter().map(|s| s.name_any()).collect();
        f.debug_struct("DesiredPostgres")
            .field("role_secrets", &names)
            .field("verifiers_secret", &self.verifiers_secret.name_any())
            .field("plan", &self.plan)
            .field("job_hash", &self.job_hash)
            .field("generated", &self.generated)
            .field("rotate_handled", &self.rotate_handled)
            .finish()
    }
}

pub fn verifiers_secret_name(policy: &str) -> String {
    format!("{policy}-pg-verifiers")
}

/// Secret of a role: `secretName`, else `<policy>-pg-<role with _ as ->`.
pub fn role_secret_name(policy: &str, role: &crate::api::PostgresRole) -> String {
    role.secret_name.clone().unwrap_or_else(|| {
        // `_` and `$` are not allowed in object names, nor is a trailing `-`.
        let role = role.name.replace(['_', '$'], "-");
        format!("{policy}-pg-{}", role.trim_end_matches('-'))
    })
}

/// `<policy>-pg-roles-<hash>`, shortened on the policy side to stay a valid label value (63).
pub fn role_job_name(policy: &str, hash: &str) -> String {
    job_name(policy, "pg-roles", hash)
}

/// SCRAM-SHA-256 verifier as PostgreSQL stores it: `SCRAM-SHA-256$i:salt$StoredKey:ServerKey`.
pub fn scram_sha256_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let hash = ScramHash::Sha256;
    let keys = hash.keys(&hash.salted_password(password.as_bytes(), salt, iterations));
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(&keys.stored_key),
        B64.encode(&keys.server_key)
    )
}

/// A verifier of `password` with a fresh random salt.
pub fn new_verifier(password: &str) -> Result<String, PgError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|_| PgError::Random)?;
    Ok(scram_sha256_verifier(password, &salt, SCRAM_ITERATIONS))
}

/// True when `verifier` was computed from `password` (same salt and iterations give the same string).
pub fn verifier_matches(verifier: &str, password: &str) -> bool {
    let Some(rest) = verifier.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((iterations, rest)) = rest.split_once(':') else {
        return false;
    };
    let Some((salt, _)) = rest.split_once('$') else {
        return false;
    };
    let (Ok(iterations), Ok(salt)) = (iterations.parse::<u32>(), B64.decode(salt)) else {
        return false;
    };
    if !(1..=1_000_000).contains(&iterations) {
        return false;
    }
    scram_sha256_verifier(password, &salt, iterations) == verifier
}

/// Reads a verifiers Secret's data: `(role -> verifier, previously disabled roles)`.
/// Unreadable content counts as absent: verifiers are recomputed from the passwords.
pub fn parse_verifiers_secret(
    data: &BTreeMap<String, ByteString>,
) -> (BTreeMap<String, Sensitive<String>>, BTreeSet<String>) {
    let verifiers = data
        .get(VERIFIERS_KEY)
        .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b.0).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(role, v)| (role, Sensitive::new(v)))
        .collect();
    let disabled = data
        .get(PLAN_KEY)
        .and_then(|b| serde_json::from_slice::<RolePlan>(&b.0).ok())
        .map(|plan| plan.disable.into_iter().collect())
        .unwrap_or_default();
    (verifiers, disabled)
}

/// Percent-encodes everything outside RFC 3986's unreserved set.
fn uri_component(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ssl_mode_str(mode: SslMode) -> &'static str {
    match mode {
        SslMode::VerifyFull => "verify-full",
        SslMode::VerifyCa => "verify-ca",
        SslMode::Require => "require",
    }
}

/// Host as it goes into a URI: an IPv6 literal needs brackets.
fn uri_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// libpq connection URI of a role.
pub fn role_uri(pg: &PostgresSpec, user: &str, password: &str) -> String {
    format!(
        "postgresql://{}:{}@{}:{}/{}?sslmode={}",
        uri_component(user),
        uri_component(password),
        uri_host(&pg.host),
        pg.port,
        uri_component(&pg.database),
        ssl_mode_str(pg.ssl_mode)
    )
}

/// pgJDBC URL of a role (same sslmode names as libpq).
pub fn role_jdbc_uri(pg: &PostgresSpec, user: &str, password: &str) -> String {
    format!(
        "jdbc:postgresql://{}:{}/{}?user={}&password={}&sslmode={}",
        uri_host(&pg.host),
        pg.port,
        uri_component(&pg.database),
        uri_component(user),
        uri_component(password),
        ssl_mode_str(pg.ssl_mode)
    )
}

fn planned_schemas(schemas: &[PgIdentifier]) -> Vec<String> {
    if schemas.is_empty() {
        return vec![DEFAULT_SCHEMA.to_string()];
    }
    let unique: BTreeSet<&str> = schemas.iter().map(|s| s.0.as_str()).collect();
    unique.into_iter().map(str::to_string).collect()
}

/// The plan for `pg`; `previous` are roles the observed state knows (verifiers or an earlier
/// disable list): those missing from the spec are disabled.
pub fn role_plan(pg: &PostgresSpec, previous: &BTreeSet<String>) -> RolePlan {
    let mut roles: Vec<PlannedRole> = pg
        .roles
        .iter()
        .map(|r| PlannedRole {
            name: r.name.clone(),
            access: r.access,
            schemas: planned_schemas(&r.schemas),
            connection_limit: r.connection_limit.unwrap_or(-1),
        })
        .collect();
    // Stable sort: admins first, spec order otherwise.
    roles.sort_by_key(|r| r.access != RoleAccess::Admin);
    let declared: BTreeSet<&str> = pg.roles.iter().map(|r| r.name.as_str()).collect();
    let disable = previous
        .iter()
        .filter(|r| !declared.contains(r.as_str()))
        .cloned()
        .collect();
    RolePlan {
        host: pg.host.clone(),
        port: u16::try_from(pg.port).unwrap_or(5432),
        database: pg.database.clone(),
        ssl_mode: pg.ssl_mode,
        roles,
        disable,
    }
}

fn secret_data(entries: Vec<(&str, String)>) -> BTreeMap<String, ByteString> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}

/// The role Secrets, the verifiers Secret and the plan `policy` asks for; None without a
/// postgres section. Passwords present in `observed` are kept unless a rotation was asked for.
pub fn desired_postgres(
    policy: &SecurityPolicy,
    observed: &ObservedPostgres,
    ca_bundle: Option<&str>,
) -> Result<Option<DesiredPostgres>, PgError> {
    let Some(pg) = policy.spec.postgres.as_ref() else {
        return Ok(None);
    };
    // Admission parses it with CEL; a value too large for a duration gets past it.
    let resync = pg
        .resync_interval
        .as_deref()
        .map(|v| v.parse::<crate::api::GoDuration>().map(|d| d.0))
        .transpose()
        .map_err(PgError::InvalidResyncInterval)?;
    let name = policy.name_any();
    let (observed_verifiers, previously_disabled) = observed
        .verifiers_secret
        .as_ref()
        .map(parse_verifiers_secret)
        .unwrap_or_default();

    let mut role_secrets = Vec::with_capacity(pg.roles.len());
    let mut verifiers: BTreeMap<String, String> = BTreeMap::new();
    let mut generated = Vec::new();
    for role in &pg.roles {
        let kept = observed
            .passwords
            .get(&role.name)
            .filter(|p| !observed.rotate && !p.expose().is_empty());
        let password = match kept {
            Some(p) => p.clone(),
            None => {
                generated.push(role.name.clone());
                generate_password().ok_or(PgError::Random)?
            }
        };
        // Keep the stored verifier while it still matches: a new salt would change the Job hash.
        let verifier = match observed_verifiers.get(&role.name) {
            Some(v) if verifier_matches(v.expose(), password.expose()) => v.expose().clone(),
            _ => new_verifier(password.expose())?,
        };
        verifiers.insert(role.name.clone(), verifier);

        let pw = password.expose();
        let mut entries = vec![
            ("username", role.name.clone()),
            ("password", pw.clone()),
            ("host", pg.host.clone()),
            ("port", pg.port.to_string()),
            ("dbname", pg.database.clone()),
            ("uri", role_uri(pg, &role.name, pw)),
            ("jdbc-uri", role_jdbc_uri(pg, &role.name, pw)),
        ];
        if let Some(ca) = ca_bundle {
            entries.push(("ca.crt", ca.to_string()));
        }
        role_secrets.push(Secret {
            metadata: produced_meta(policy, role_secret_name(&name, role), Facet::Postgres),
            type_: Some(SECRET_TYPE_BASIC_AUTH.into()),
            data: Some(secret_data(entries)),
            ..Secret::default()
        });
    }

    let previous: BTreeSet<String> = observed_verifiers
        .keys()
        .cloned()
        .chain(previously_disabled)
        .collect();
    let plan = role_plan(pg, &previous);
    let plan_json = serde_json::to_string(&plan).expect("a plan serializes");
    let verifiers_json = serde_json::to_string(&verifiers).expect("verifiers serialize");
    let job_hash = short_hash(&[plan_json.as_bytes(), verifiers_json.as_bytes()]);
    let verifiers_secret = Secret {
        metadata: produced_meta(policy, verifiers_secret_name(&name), Facet::Postgres),
        type_: Some("Opaque".into()),
        data: Some(secret_data(vec![
            (PLAN_KEY, plan_json),
            (VERIFIERS_KEY, verifiers_json),
        ])),
        ..Secret::default()
    };
    Ok(Some(DesiredPostgres {
        role_secrets,
        verifiers_secret,
        plan,
        job_hash,
        generated,
        rotate_handled: observed.rotate,
        resync,
    }))
}

/// The Job that applies `desired`'s plan: the operator image running `provision postgres`,
/// plan and verifiers mounted from the verifiers Secret, admin credentials from
/// `adminSecretRef`, the trust bundle when the policy has tls. Same hash, same Job.
pub fn desired_role_job(
    policy: &SecurityPolicy,
    desired: &DesiredPostgres,
    settings: &JobSettings,
) -> Result<Job, PgError> {
    let admin = policy
        .spec
        .postgres
        .as_ref()
        .and_then(|pg| pg.admin_secret_ref.as_ref())
        .ok_or(PgError::NoAdminSecretRef)?;
    Ok(provision_job(
        policy,
        &ProvisionJob {
            facet: Facet::Postgres,
            target: "postgres",
            name_infix: "pg-roles",
            hash: &desired.job_hash,
            input_secret: verifiers_secret_name(&policy.name_any()),
            inputs: &[
                (PLAN_KEY, env::PLAN_FILE),
                (VERIFIERS_KEY, env::VERIFIERS_FILE),
            ],
            admin_secret: &admin.name,
            admin_env: (env::ADMIN_USER, env::ADMIN_PASSWORD),
            ca_env: env::CA_FILE,
        },
        settings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::facets::test_policy as policy;
    use k8s_openapi::api::core::v1::EnvVar;

    const SPEC: &str = r#"
tiers:
  data: {podSelector: {matchLabels: {tier: data}}}
tls:
  ca: {secretName: traffic-ca}
postgres:
  host: postgres.traffic.svc
  port: 5432
  database: traffic
  adminSecretRef: {name: postgres-superuser}
  roles:
    - {name: traffic_app,       access: ReadWrite, schemas: [public], connectionLimit: 50}
    - {name: traffic_analytics, access: ReadOnly}
    - {name: traffic_admin,     access: Admin, schemas: [app, public]}
"#;

    fn data(s: &Secret, key: &str) -> String {
        String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    fn secret_named<'a>(d: &'a DesiredPostgres, name: &str) -> &'a Secret {
        d.role_secrets
            .iter()
            .find(|s| s.name_any() == name)
            .unwrap_or_else(|| panic!("no Secret {name}"))
    }

    /// What the controller would read back after applying `d`.
    fn observed_from(d: &DesiredPostgres, p: &SecurityPolicy) -> ObservedPostgres {
        let pg = p.spec.postgres.as_ref().unwrap();
        let passwords = pg
            .roles
            .iter()
            .map(|r| {
                let s = secret_named(d, &role_secret_name("traffic", r));
                (r.name.clone(), Sensitive::new(data(s, "password")))
            })
            .collect();
        ObservedPostgres {
            passwords,
            verifiers_secret: d.verifiers_secret.data.clone(),
            rotate: false,
        }
    }

    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        assert_eq!(
            scram_sha256_verifier("pencil", &salt, 4096),
            "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
             WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
             wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn new_verifiers_are_salted_and_checkable() {
        let a = new_verifier("pencil").unwrap();
        let b = new_verifier("pencil").unwrap();
        assert_ne!(a, b, "a random salt makes each verifier unique");
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
        let salt = a.split([':', '$']).nth(2).unwrap();
        assert_eq!(B64.decode(salt).unwrap().len(), SALT_LEN);
        assert!(verifier_matches(&a, "pencil"));
        assert!(!verifier_matches(&a, "pencil2"));
        assert!(!verifier_matches("md5abcdef", "pencil"));
        assert!(!verifier_matches("SCRAM-SHA-256$0:AA==$x:y", "pencil"));
    }

    #[test]
    fn role_secrets_carry_ready_to_use_connection_data() {
        let p = policy(SPEC);
        let d = desired_postgres(&p, &ObservedPostgres::default(), Some("CA PEM"))
            .unwrap()
            .unwrap();
        let names: Vec<String> = d.role_secrets.iter().map(|s| s.name_any()).collect();
        assert_eq!(
            names,
            [
                "traffic-pg-traffic-app",
                "traffic-pg-traffic-analytics",
                "traffic-pg-traffic-admin"
            ]
        );
        let s = secret_named(&d, "traffic-pg-traffic-app");
        assert_eq!(s.type_.as_deref(), Some(SECRET_TYPE_BASIC_AUTH));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["bulwark.dev/facet"], "postgres");
        let pw = data(s, "password");
        assert!(pw.len() >= 32 && pw.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(data(s, "username"), "traffic_app");
        assert_eq!(data(s, "host"), "postgres.traffic.svc");
        assert_eq!(data(s, "port"), "5432");
        assert_eq!(data(s, "dbname"), "traffic");
        assert_eq!(data(s, "ca.crt"), "CA PEM");
        assert_eq!(
            data(s, "uri"),
            format!(
                "postgresql://traffic_app:{pw}@postgres.traffic.svc:5432/traffic?sslmode=verify-full"
            )
        );
        assert_eq!(
            data(s, "jdbc-uri"),
            format!(
                "jdbc:postgresql://postgres.traffic.svc:5432/traffic?user=traffic_app&password={pw}&sslmode=verify-full"
            )
        );
        assert_eq!(d.generated.len(), 3);
        // Every role has its own password.
        let pws: BTreeSet<String> = d.role_secrets.iter().map(|s| data(s, "password")).collect();
        assert_eq!(pws.len(), 3);
    }

    #[test]
    fn secret_name_override_ssl_mode_and_no_ca() {
        let p = policy(
            r#"
tiers: {}
postgres:
  host: db
  database: d
  sslMode: require
  roles: [{name: a$b, access: ReadOnly, secretName: custom}, {name: c_d, access: Admin}]
"#,
        );
        let d = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let s = secret_named(&d, "custom");
        assert!(data(s, "uri").starts_with("postgresql://a%24b:"));
        assert!(data(s, "uri").ends_with("@db:5432/d?sslmode=require"));
        assert!(!s.data.as_ref().unwrap().contains_key("ca.crt"));
        secret_named(&d, "traffic-pg-c-d");
        let trailing: crate::api::PostgresRole =
            serde_yaml::from_str("{name: tmp_, access: ReadOnly}").unwrap();
        assert_eq!(role_secret_name("traffic", &trailing), "traffic-pg-tmp");
    }

    #[test]
    fn no_postgres_section_produces_nothing() {
        let p = policy("tiers: {}");
        assert!(
            desired_postgres(&p, &ObservedPostgres::default(), None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn passwords_and_verifiers_are_kept_across_runs() {
        let p = policy(SPEC);
        let first = desired_postgres(&p, &ObservedPostgres::default(), Some("CA"))
            .unwrap()
            .unwrap();
        let observed = observed_from(&first, &p);
        let second = desired_postgres(&p, &observed, Some("CA"))
            .unwrap()
            .unwrap();
        for (a, b) in first.role_secrets.iter().zip(&second.role_secrets) {
            assert_eq!(a.data, b.data);
        }
        assert_eq!(first.verifiers_secret.data, second.verifiers_secret.data);
        assert_eq!(first.job_hash, second.job_hash);
        assert!(second.generated.is_empty());
        assert!(!second.rotate_handled);
    }

    #[test]
    fn a_missing_password_is_generated_for_that_role_only() {
        let p = policy(SPEC);
        let first = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let mut observed = observed_from(&first, &p);
        observed.passwords.remove("traffic_analytics");
        // Blank counts as missing too: never hand out an empty password.
        observed
            .passwords
            .insert("traffic_admin".into(), Sensitive::new(String::new()));
        let second = desired_postgres(&p, &observed, None).unwrap().unwrap();
        assert_eq!(second.generated, ["traffic_analytics", "traffic_admin"]);
        let app = "traffic-pg-traffic-app";
        assert_eq!(
            secret_named(&first, app).data,
            secret_named(&second, app).data
        );
        assert_ne!(first.job_hash, second.job_hash);
    }

    #[test]
    fn a_password_edited_by_hand_is_kept_and_gets_a_new_verifier() {
        let p = policy(SPEC);
        let first = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let mut observed = observed_from(&first, &p);
        observed
            .passwords
            .insert("traffic_app".into(), Sensitive::new("handpicked".into()));
        let second = desired_postgres(&p, &observed, None).unwrap().unwrap();
        assert!(second.generated.is_empty());
        let (verifiers, _) = parse_verifiers_secret(second.verifiers_secret.data.as_ref().unwrap());
        assert!(verifier_matches(
            verifiers["traffic_app"].expose(),
            "handpicked"
        ));
    }

    #[test]
    fn rotation_regenerates_every_password_once() {
        let p = policy(SPEC);
        let first = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let mut observed = observed_from(&first, &p);
        observed.rotate = true;
        let rotated = desired_postgres(&p, &observed, None).unwrap().unwrap();
        assert!(rotated.rotate_handled);
        assert_eq!(rotated.generated.len(), 3);
        for (a, b) in first.role_secrets.iter().zip(&rotated.role_secrets) {
            assert_ne!(data(a, "password"), data(b, "password"));
        }
        assert_ne!(first.job_hash, rotated.job_hash);
        let (verifiers, _) =
            parse_verifiers_secret(rotated.verifiers_secret.data.as_ref().unwrap());
        let app_pw = data(secret_named(&rotated, "traffic-pg-traffic-app"), "password");
        assert!(verifier_matches(verifiers["traffic_app"].expose(), &app_pw));
        // Once handled, the next run keeps the new passwords.
        let after = desired_postgres(&p, &observed_from(&rotated, &p), None)
            .unwrap()
            .unwrap();
        assert_eq!(after.job_hash, rotated.job_hash);
    }

    #[test]
    fn plan_defaults_orders_admins_first_and_disables_removed_roles() {
        let p = policy(SPEC);
        let first = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let plan = &first.plan;
        assert_eq!(plan.database, "traffic");
        assert_eq!(plan.ssl_mode, SslMode::VerifyFull);
        let roles: Vec<(&str, RoleAccess, Vec<String>, i32)> = plan
            .roles
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.access,
                    r.schemas.clone(),
                    r.connection_limit,
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                (
                    "traffic_admin",
                    RoleAccess::Admin,
                    vec!["app".to_string(), "public".to_string()],
                    -1
                ),
                (
                    "traffic_app",
                    RoleAccess::ReadWrite,
                    vec!["public".to_string()],
                    50
                ),
                (
                    "traffic_analytics",
                    RoleAccess::ReadOnly,
                    vec!["public".to_string()],
                    -1
                ),
            ]
        );
        assert!(plan.disable.is_empty());
        let json: serde_json::Value =
            serde_json::from_str(&data(&first.verifiers_secret, PLAN_KEY)).unwrap();
        assert_eq!(json["roles"][1]["connectionLimit"], 50);
        assert_eq!(json["sslMode"], "verify-full");

        // traffic_analytics leaves the spec: disabled, and still disabled on the run after.
        let observed = observed_from(&first, &p);
        let mut p2 = p.clone();
        p2.spec
            .postgres
            .as_mut()
            .unwrap()
            .roles
            .retain(|r| r.name != "traffic_analytics");
        let second = desired_postgres(&p2, &observed, None).unwrap().unwrap();
        assert_eq!(second.plan.disable, ["traffic_analytics"]);
        let (verifiers, _) = parse_verifiers_secret(second.verifiers_secret.data.as_ref().unwrap());
        assert!(!verifiers.contains_key("traffic_analytics"));
        let third = desired_postgres(&p2, &observed_from(&second, &p2), None)
            .unwrap()
            .unwrap();
        assert_eq!(third.plan.disable, ["traffic_analytics"]);
        assert_eq!(third.job_hash, second.job_hash);
        // Back in the spec: no longer disabled.
        let fourth = desired_postgres(&p, &observed_from(&third, &p2), None)
            .unwrap()
            .unwrap();
        assert!(fourth.plan.disable.is_empty());
    }

    #[test]
    fn debug_never_shows_passwords() {
        let p = policy(SPEC);
        let d = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let observed = observed_from(&d, &p);
        let text = format!("{d:?} {observed:?}");
        for s in &d.role_secrets {
            assert!(!text.contains(&data(s, "password")));
        }
        assert!(!text.contains("SCRAM-SHA-256$"));
    }

    #[test]
    fn job_name_is_the_hash_and_stays_a_label_value() {
        assert_eq!(
            role_job_name("traffic", "0a1b2c3d4e"),
            "traffic-pg-roles-0a1b2c3d4e"
        );
        let long = "p".repeat(100);
        let name = role_job_name(&long, "0a1b2c3d4e");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-pg-roles-0a1b2c3d4e"));
    }

    #[test]
    fn role_job_is_restricted_and_wired_to_its_inputs() {
        let p = policy(SPEC);
        let d = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let job = desired_role_job(&p, &d, &JobSettings::new("bulwark:dev")).unwrap();
        assert_eq!(job.name_any(), format!("traffic-pg-roles-{}", d.job_hash));
        assert_eq!(d.job_hash.len(), 10);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(3));
        assert_eq!(spec.active_deadline_seconds, Some(300));
        assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
        let pod = spec.template.spec.as_ref().unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("bulwark:dev"));
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["bulwark", "provision", "postgres"]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref().unwrap(),
            ["ALL"]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

        let env: BTreeMap<&str, &EnvVar> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e))
            .collect();
        let secret_ref = |name: &str| {
            let r = env[name]
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (r.name.clone(), r.key.clone())
        };
        assert_eq!(
            secret_ref(env::ADMIN_USER),
            ("postgres-superuser".into(), "username".into())
        );
        assert_eq!(
            secret_ref(env::ADMIN_PASSWORD),
            ("postgres-superuser".into(), "password".into())
        );
        assert_eq!(
            env[env::PLAN_FILE].value.as_deref(),
            Some("/etc/bulwark/input/plan.json")
        );
        assert_eq!(
            env[env::VERIFIERS_FILE].value.as_deref(),
            Some("/etc/bulwark/input/verifiers.json")
        );
        assert_eq!(
            env[env::CA_FILE].value.as_deref(),
            Some("/etc/bulwark/ca/ca.crt")
        );
        // No plaintext password anywhere in the Job.
        let job_text = serde_json::to_string(&job).unwrap();
        for s in &d.role_secrets {
            assert!(!job_text.contains(&data(s, "password")));
        }
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("traffic-pg-verifiers")
        );
        assert_eq!(
            volumes[1].config_map.as_ref().unwrap().name,
            "traffic-trust-bundle"
        );
        // Same inputs, same Job.
        let again = desired_role_job(&p, &d, &JobSettings::new("bulwark:dev")).unwrap();
        assert_eq!(job, again);
    }

    #[test]
    fn role_job_without_tls_mounts_no_bundle_and_needs_admin_ref() {
        let p = policy(
            r#"
tiers: {}
postgres: {host: db, database: d, adminSecretRef: {name: adm}, roles: [{name: a, access: ReadOnly}]}
"#,
        );
        let d = desired_postgres(&p, &ObservedPostgres::default(), None)
            .unwrap()
            .unwrap();
        let job = desired_role_job(&p, &d, &JobSettings::new("img")).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.volumes.unwrap().len(), 1);
        assert!(
            !pod.containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .any(|e| e.name == env::CA_FILE)
        );

        let mut no_admin = p.clone();
        no_admin.spec.postgres.as_mut().unwrap().admin_secret_ref = None;
        let err = desired_role_job(&no_admin, &d, &JobSettings::new("img")).unwrap_err();
        assert_eq!(err.reason(), "AdminSecretMissing");
    }
}
