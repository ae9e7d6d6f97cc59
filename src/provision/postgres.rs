//! `bulwark provision postgres`: applies a [`RolePlan`] to a PostgreSQL server over TLS.
//!
//! Inputs (environment, as the role Job sets them; see [`crate::facets::postgres::env`]):
//! - `BULWARK_PG_PLAN_FILE` (or `BULWARK_PG_PLAN`, the JSON itself): the plan;
//! - `BULWARK_PG_VERIFIERS_FILE` (or `BULWARK_PG_VERIFIERS`): `{role: SCRAM verifier}` JSON;
//! - `BULWARK_PG_ADMIN_USER`, `BULWARK_PG_ADMIN_PASSWORD`: the login that applies the plan;
//! - `BULWARK_PG_CA_FILE` (optional): PEM bundle the server certificate must chain to.
//!
//! Every statement is idempotent: a second run leaves the catalogs as the first left them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::{Client, GenericClient};

use crate::api::{RoleAccess, SslMode};
use crate::facets::postgres::{PlannedRole, RolePlan, env};
use crate::facets::tls::Sensitive;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why provisioning failed. Messages name roles and settings, never a password or verifier.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("input: {0}")]
    Input(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connecting to {host}:{port} as {user}: {source}")]
    Connect {
        host: String,
        port: u16,
        user: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{step}: {source}")]
    Sql {
        step: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ProvisionError {
    /// Short reason for the Job's termination message and the `PostgresReady` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Input(_) => "InvalidInput",
            Self::Tls(_) => "TLSFailed",
            Self::Connect { source, .. } if is_auth_failure(source) => "AdminLoginFailed",
            Self::Connect { .. } => "ConnectFailed",
            Self::Sql { .. } => "ApplyFailed",
        }
    }
}

fn is_auth_failure(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::INVALID_PASSWORD || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    })
}

/// Everything one run needs. Debug redacts the credentials.
#[derive(Clone, Debug)]
pub struct ProvisionInput {
    pub plan: RolePlan,
    pub verifiers: BTreeMap<String, Sensitive<String>>,
    pub admin_user: String,
    pub admin_password: Sensitive<String>,
    pub ca_pem: Option<String>,
}

impl ProvisionInput {
    /// Reads the Job's environment (see the module docs).
    pub fn from_env() -> Result<Self, ProvisionError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], with variables from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ProvisionError> {
        let env_in = super::JobEnv(lookup);
        let plan: RolePlan = env_in
            .json(env::PLAN, env::PLAN_FILE, "plan")
            .map_err(ProvisionError::Input)?;
        let verifiers: BTreeMap<String, String> = env_in
            .json(env::VERIFIERS, env::VERIFIERS_FILE, "verifiers")
            .map_err(ProvisionError::Input)?;
        let admin_user = env_in
            .required(env::ADMIN_USER)
            .map_err(ProvisionError::Input)?;
        let admin_password = Sensitive::new(
            env_in
                .required(env::ADMIN_PASSWORD)
                .map_err(ProvisionError::Input)?,
        );
        let ca_pem = env_in
            .optional_file(env::CA_FILE)
            .map_err(ProvisionError::Input)?;
        Ok(Self {
            plan,
            verifiers: verifiers
                .into_iter()
                .map(|(k, v)| (k, Sensitive::new(v)))
                .collect(),
            admin_user,
            admin_password,
            ca_pem,
        })
    }
}

/// What a run did, for the Job's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionSummary {
    pub created: Vec<String>,
    pub applied: Vec<String>,
    pub disabled: Vec<String>,
}

/// `"name"` with embedded quotes doubled: safe for any identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal as PostgreSQL's own `quote_literal` writes it (E'' when backslashes occur).
pub fn quote_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

/// rustls settings for `mode`, always on the ring provider (kube already brings it; a second
/// provider would break rustls' default-provider detection elsewhere in the process).
pub fn tls_config(mode: SslMode, ca_pem: Option<&str>) -> Result<ClientConfig, ProvisionError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| ProvisionError::Tls(format!("CA bundle: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ProvisionError::Tls(format!("CA bundle: {e}")))?;
            }
            if roots.is_empty() {
                return Err(ProvisionError::Tls("CA bundle holds no certificate".into()));
            }
            Some(Arc::new(roots))
        }
        None => None,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProvisionError::Tls(e.to_string()))?;
    let config = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => builder.with_root_certificates(roots),
        (SslMode::VerifyFull | SslMode::VerifyCa, None) => {
            return Err(ProvisionError::Tls(format!(
                "sslMode {} needs a CA bundle ({} is not set; give the policy a tls section)",
                if mode == SslMode::VerifyFull {
                    "verify-full"
                } else {
                    "verify-ca"
                },
                env::CA_FILE
            )));
        }
        // libpq: with a root certificate at hand, `require` verifies the chain like verify-ca.
        (SslMode::VerifyCa | SslMode::Require, Some(roots)) => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| ProvisionError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier {
                    inner: Some(inner),
                    provider,
                }))
        }
        (SslMode::Require, None) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainOnlyVerifier {
                inner: None,
                provider,
            })),
    };
    Ok(config.with_no_client_auth())
}

/// verify-ca (chain checked, host name not) or, without roots, `require` (encryption only).
#[derive(Debug)]
struct ChainOnlyVerifier {
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for ChainOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Logs in as the admin over TLS; the connection task runs until the client is dropped.
pub async fn connect_admin(input: &ProvisionInput) -> Result<Client, ProvisionError> {
    let plan = &input.plan;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
        plan.ssl_mode,
        input.ca_pem.as_deref(),
    )?);
    let mut config = tokio_postgres::Config::new();
    config
        .host(&plan.host)
        .port(plan.port)
        .dbname(&plan.database)
        .user(&input.admin_user)
        .password(input.admin_password.expose())
        .application_name("bulwark-provision")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(CONNECT_TIMEOUT);
    let (client, connection) =
        config
            .connect(tls)
            .await
            .map_err(|source| ProvisionError::Connect {
                host: plan.host.clone(),
                port: plan.port,
                user: input.admin_user.clone(),
                source,
            })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// Applies the plan: database-wide revokes, then one transaction per role, then NOLOGIN for
/// roles that left the spec.
pub async fn provision_postgres(
    input: &ProvisionInput,
) -> Result<ProvisionSummary, ProvisionError> {
    let plan = &input.plan;
    for role in &plan.roles {
        if !input.verifiers.contains_key(&role.name) {
            return Err(ProvisionError::Input(format!(
                "no verifier for role {:?}",
                role.name
            )));
        }
    }
    let mut client = connect_admin(input).await?;
    let mut summary = ProvisionSummary::default();

    let tx = transaction(&mut client, "database").await?;
    let mut sql = vec![format!(
        "REVOKE ALL ON DATABASE {} FROM PUBLIC",
        quote_ident(&plan.database)
    )];
    if schema_exists(&tx, "public").await? {
        sql.push("REVOKE CREATE ON SCHEMA public FROM PUBLIC".into());
    }
    run(&tx, "database", &sql).await?;
    commit(tx, "database").await?;

    let admins: Vec<&str> = plan
        .roles
        .iter()
        .filter(|r| r.access == RoleAccess::Admin)
        .map(|r| r.name.as_str())
        .collect();
    for role in &plan.roles {
        let step = format!("role {}", role.name);
        let verifier = &input.verifiers[&role.name];
        let tx = transaction(&mut client, &step).await?;
        if !role_exists(&tx, &role.name).await? {
            run(
                &tx,
                &step,
                &[format!("CREATE ROLE {}", quote_ident(&role.name))],
            )
            .await?;
            summary.created.push(role.name.clone());
        }
        let memberships = tx
            .query(
                "SELECT g.rolname FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
                 WHERE u.rolname = $1 ORDER BY 1",
                &[&role.name],
            )
            .await
            .map_err(|source| ProvisionError::Sql {
                step: step.clone(),
                source,
            })?
            .iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>();
        for schema in &role.schemas {
            if role.access != RoleAccess::Admin && !schema_exists(&tx, schema).await? {
                run(
                    &tx,
                    &step,
                    &[format!(
                        "CREATE SCHEMA IF NOT EXISTS {}",
                        quote_ident(schema)
                    )],
                )
                .await?;
            }
        }
        let statements = role_statements(plan, role, verifier.expose(), &admins, &memberships);
        run(&tx, &step, &statements).await?;
        commit(tx, &step).await?;
        summary.applied.push(role.name.clone());
    }

    for name in &plan.disable {
        let step = format!("disable {name}");
        let tx = transaction(&mut client, &step).await?;
        if role_exists(&tx, name).await? {
            run(
                &tx,
                &step,
                &[format!("ALTER ROLE {} WITH NOLOGIN", quote_ident(name))],
            )
            .await?;
            summary.disabled.push(name.clone());
        }
        commit(tx, &step).await?;
    }
    Ok(summary)
}

/// The statements that bring one existing role to the plan. Pure, so they can be read in tests.
pub fn role_statements(
    plan: &RolePlan,
    role: &PlannedRole,
    verifier: &str,
    admins: &[&str],
    memberships: &[String],
) -> Vec<String> {
    let r = quote_ident(&role.name);
    let db = quote_ident(&plan.database);
    let mut out = vec![format!(
        "ALTER ROLE {r} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
         INHERIT CONNECTION LIMIT {} VALID UNTIL 'infinity' PASSWORD {}",
        role.connection_limit,
        quote_literal(verifier)
    )];
    // Memberships granted by hand (pg_read_all_data, another app's role) are drift.
    for group in memberships {
        out.push(format!("REVOKE {} FROM {r}", quote_ident(group)));
    }
    out.push(format!("GRANT CONNECT ON DATABASE {db} TO {r}"));
    out.push(format!(
        "REVOKE CREATE, TEMPORARY ON DATABASE {db} FROM {r}"
    ));
    out.push(match role.access {
        RoleAccess::ReadOnly => format!("ALTER ROLE {r} SET default_transaction_read_only = on"),
        _ => format!("ALTER ROLE {r} RESET default_transaction_read_only"),
    });
    let (table_grant, table_revoke, seq_grant, seq_revoke) = match role.access {
        RoleAccess::Admin => {
            for schema in &role.schemas {
                let s = quote_ident(schema);
                out.push(format!("CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r}"));
                out.push(format!("ALTER SCHEMA {s} OWNER TO {r}"));
            }
            return out;
        }
        RoleAccess::ReadWrite => (
            "SELECT, INSERT, UPDATE, DELETE",
            "TRUNCATE, REFERENCES, TRIGGER",
            "USAGE, SELECT",
            "UPDATE",
        ),
        RoleAccess::ReadOnly => (
            "SELECT",
            "INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER",
            "SELECT",
            "USAGE, UPDATE",
        ),
    };
    for schema in &role.schemas {
        let s = quote_ident(schema);
        out.extend([
            format!("GRANT USAGE ON SCHEMA {s} TO {r}"),
            format!("REVOKE CREATE ON SCHEMA {s} FROM {r}"),
            format!("GRANT {table_grant} ON ALL TABLES IN SCHEMA {s} TO {r}"),
            format!("REVOKE {table_revoke} ON ALL TABLES IN SCHEMA {s} FROM {r}"),
            format!("GRANT {seq_grant} ON ALL SEQUENCES IN SCHEMA {s} TO {r}"),
            format!("REVOKE {seq_revoke} ON ALL SEQUENCES IN SCHEMA {s} FROM {r}"),
        ]);
        // Tables an admin creates later are covered without another run.
        for admin in admins {
            let a = quote_ident(admin);
            let prefix = format!("ALTER DEFAULT PRIVILEGES FOR ROLE {a} IN SCHEMA {s}");
            out.extend([
                format!("{prefix} GRANT {table_grant} ON TABLES TO {r}"),
                format!("{prefix} REVOKE {table_revoke} ON TABLES FROM {r}"),
                format!("{prefix} GRANT {seq_grant} ON SEQUENCES TO {r}"),
                format!("{prefix} REVOKE {seq_revoke} ON SEQUENCES FROM {r}"),
            ]);
        }
    }
    out
}

async fn transaction<'a>(
    client: &'a mut Client,
    step: &str,
) -> Result<tokio_postgres::Transaction<'a>, ProvisionError> {
    client
        .transaction()
        .await
        .map_err(|source| ProvisionError::Sql {
            step: step.to_string(),
            source,
        })
}

async fn commit(tx: tokio_postgres::Transaction<'_>, step: &str) -> Result<(), ProvisionError> {
    tx.commit().await.map_err(|source| ProvisionError::Sql {
        step: step.to_string(),
        source,
    })
}

/// Runs statements one by one, so an error names the statement kind, never a password.
async fn run(
    tx: &impl GenericClient,
    step: &str,
    statements: &[String],
) -> Result<(), ProvisionError> {
    for sql in statements {
        tx.batch_execute(sql)
            .await
            .map_err(|source| ProvisionError::Sql {
                step: format!("{step}: {}", statement_kind(sql)),
                source,
            })?;
    }
    Ok(())
}

/// The first words of a statement, up to any literal: safe to print.
fn statement_kind(sql: &str) -> String {
    let head = sql.split(['\'', '"']).next().unwrap_or_default();
    head.split_whitespace()
        .take(4)
        .collect::<Vec<_>>()
        .join(" ")
}

async fn role_exists(tx: &impl GenericClient, name: &str) -> Result<bool, ProvisionError> {
    exists(tx, "SELECT 1 FROM pg_roles WHERE rolname = $1", name).await
}

async fn schema_exists(tx: &impl GenericClient, name: &str) -> Result<bool, ProvisionError> {
    exists(tx, "SELECT 1 FROM pg_namespace WHERE nspname = $1", name).await
}

async fn exists(tx: &impl GenericClient, sql: &str, name: &str) -> Result<bool, ProvisionError> {
    tx.query_opt(sql, &[&name])
        .await
        .map(|row| row.is_some())
        .map_err(|source| ProvisionError::Sql {
            step: format!("looking up {name}"),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> RolePlan {
        RolePlan {
            host: "db".into(),
            port: 5432,
            database: "traffic".into(),
            ssl_mode: SslMode::VerifyFull,
            roles: vec![],
            disable: vec![],
        }
    }

    fn role(name: &str, access: RoleAccess) -> PlannedRole {
        PlannedRole {
            name: name.into(),
            access,
            schemas: vec!["public".into()],
            connection_limit: 5,
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_ident("a$b"), "\"a$b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(
            quote_literal("SCRAM-SHA-256$4096:abc=$d:e"),
            "'SCRAM-SHA-256$4096:abc=$d:e'"
        );
    }

    #[test]
    fn statement_kind_never_shows_literals() {
        let sql = "ALTER ROLE \"app\" WITH LOGIN PASSWORD 'SCRAM-SHA-256$secret'";
        assert_eq!(statement_kind(sql), "ALTER ROLE");
        assert_eq!(
            statement_kind("GRANT USAGE ON SCHEMA x"),
            "GRANT USAGE ON SCHEMA"
        );
    }

    #[test]
    fn read_write_role_gets_dml_and_default_privileges_per_admin() {
        let sql = role_statements(
            &plan(),
            &role("app", RoleAccess::ReadWrite),
            "SCRAM-SHA-256$v",
            &["adm"],
            &["pg_read_all_data".into()],
        );
        let text = sql.join(";\n");
        assert!(sql[0].starts_with("ALTER ROLE \"app\" WITH LOGIN NOSUPERUSER NOCREATEDB"));
        assert!(sql[0].contains("CONNECTION LIMIT 5"));
        assert!(sql[0].ends_with("PASSWORD 'SCRAM-SHA-256$v'"));
        for expected in [
            "REVOKE \"pg_read_all_data\" FROM \"app\"",
            "GRANT CONNECT ON DATABASE \"traffic\" TO \"app\"",
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"public\" TO \"app\"",
            "REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA \"public\" FROM \"app\"",
            "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA \"public\" TO \"app\"",
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"adm\" IN SCHEMA \"public\" GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO \"app\"",
            "ALTER ROLE \"app\" RESET default_transaction_read_only",
        ] {
            assert!(text.contains(expected), "missing {expected}\n{text}");
        }
        assert!(!text.contains("pg_read_all_data\" TO"));
    }

    #[test]
    fn read_only_and_admin_roles() {
        let ro = role_statements(&plan(), &role("ro", RoleAccess::ReadOnly), "v", &[], &[]);
        let text = ro.join(";\n");
        assert!(text.contains("ALTER ROLE \"ro\" SET default_transaction_read_only = on"));
        assert!(text.contains("GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"ro\""));
        assert!(text.contains(
            "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA \"public\" FROM \"ro\""
        ));
        let admin = role_statements(&plan(), &role("adm", RoleAccess::Admin), "v", &[], &[]);
        let text = admin.join(";\n");
        assert!(text.contains("CREATE SCHEMA IF NOT EXISTS \"public\" AUTHORIZATION \"adm\""));
        assert!(text.contains("ALTER SCHEMA \"public\" OWNER TO \"adm\""));
        assert!(text.contains("NOCREATEROLE"));
        assert!(!text.contains("GRANT SELECT"));
    }

    #[test]
    fn input_from_lookup_reads_inline_json_and_requires_admin() {
        let plan_json = serde_json::to_string(&plan()).unwrap();
        let vars: BTreeMap<&str, String> = BTreeMap::from([
            (env::PLAN, plan_json),
            (env::VERIFIERS, r#"{"app":"SCRAM-SHA-256$x"}"#.to_string()),
            (env::ADMIN_USER, "postgres".to_string()),
            (env::ADMIN_PASSWORD, "hunter2".to_string()),
        ]);
        let input = ProvisionInput::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(input.plan, plan());
        assert_eq!(input.verifiers["app"].expose(), "SCRAM-SHA-256$x");
        assert!(!format!("{input:?}").contains("hunter2"));
        assert!(!format!("{input:?}").contains("SCRAM-SHA-256$x"));

        let mut missing = vars.clone();
        missing.remove(env::ADMIN_PASSWORD);
        let err = ProvisionInput::from_lookup(|k| missing.get(k).cloned()).unwrap_err();
        assert_eq!(err.reason(), "InvalidInput");
        assert!(err.to_string().contains(env::ADMIN_PASSWORD));
    }

    #[test]
    fn verify_modes_need_a_ca_and_require_does_not() {
        let err = tls_config(SslMode::VerifyFull, None).unwrap_err();
        assert!(err.to_string().contains("verify-full needs a CA bundle"));
        assert!(tls_config(SslMode::VerifyCa, None).is_err());
        assert!(tls_config(SslMode::Require, None).is_ok());
        assert!(tls_config(SslMode::VerifyFull, Some("not a pem")).is_err());
    }
}
