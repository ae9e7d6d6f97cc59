//! Kafka facet: a generated password per SASL user, a Secret a client can load unchanged, the
//! salted SCRAM credentials and the Job that registers them, or the broker-side JAAS for PLAIN.
//! Pure functions of the spec and what exists; no I/O here.
//!
//! The plaintext password lives only in the user's own Secret; the Job sees salted credentials.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::{KafkaSpec, KafkaUser, SaslMechanism, SecurityPolicy};
use crate::facets::job::{JobSettings, ProvisionJob, job_name, provision_job, short_hash};
use crate::facets::tls::{Sensitive, generate_password};
use crate::kube_io::{Facet, produced_meta};
use crate::scram::{MIN_ITERATIONS, ScramHash};

/// Key of the `<policy>-kafka-scram` Secret holding `{user: credential}` as JSON.
pub const CREDENTIALS_KEY: &str = "credentials.json";
/// Key of the `<policy>-kafka-scram` Secret holding the [`UserPlan`] as JSON.
pub const PLAN_KEY: &str = "plan.json";
/// Iterations of every generated credential; Kafka's minimum is 4096.
pub const SCRAM_ITERATIONS: u32 = 4096;
const SALT_LEN: usize = 24;
/// Brokers refuse credentials with more iterations than this.
pub const KAFKA_MAX_ITERATIONS: u32 = 16384;

/// Where the Job finds its inputs: the contract between the user Job and
/// `bulwark provision kafka`.
pub mod env {
    /// Path of the [`super::UserPlan`] JSON (or `BULWARK_KAFKA_PLAN` with the JSON itself).
    pub const PLAN_FILE: &str = "BULWARK_KAFKA_PLAN_FILE";
    pub const PLAN: &str = "BULWARK_KAFKA_PLAN";
    /// Path of the `{user: credential}` JSON (or `BULWARK_KAFKA_CREDENTIALS` with the JSON).
    pub const CREDENTIALS_FILE: &str = "BULWARK_KAFKA_CREDENTIALS_FILE";
    pub const CREDENTIALS: &str = "BULWARK_KAFKA_CREDENTIALS";
    /// Admin login the Job authenticates with (SASL SCRAM, the plan's mechanism).
    pub const ADMIN_USER: &str = "BULWARK_KAFKA_ADMIN_USER";
    pub const ADMIN_PASSWORD: &str = "BULWARK_KAFKA_ADMIN_PASSWORD";
    /// PEM bundle the broker certificate must chain to; absent: nothing to verify against.
    pub const CA_FILE: &str = "BULWARK_KAFKA_CA_FILE";
}

/// A credential removed from the brokers: a user that left the spec, or a mechanism it left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct RemovedCredential {
    pub name: String,
    /// `SCRAM-SHA-512` or `SCRAM-SHA-256`.
    pub mechanism: String,
}

/// Everything `bulwark provision kafka` registers; it is hashed into the Job's name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserPlan {
    /// `host:port[,host:port...]`; the Job tries them in order.
    pub bootstrap_servers: String,
    /// Mechanism of the admin login and of every user: `SCRAM-SHA-512` or `SCRAM-SHA-256`.
    pub mechanism: String,
    /// Users whose credential (from the credentials file) is upserted.
    pub users: Vec<String>,
    /// Credentials deleted on the brokers; a credential already absent counts as deleted.
    pub remove: Vec<RemovedCredential>,
}

/// A salted SCRAM credential as the brokers store it: what AlterUserScramCredentials sends.
/// Text form: `<mechanism>$<iterations>:<salt b64>$<SaltedPassword b64>`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub hash: ScramHash,
    pub iterations: u32,
    pub salt: Vec<u8>,
    /// Password-equivalent for SCRAM logins: never printed.
    pub salted_password: Sensitive<Vec<u8>>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.hash.mechanism())
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a stored credential string was refused. Never carries the string itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialParseError {
    #[error("not of the form <mechanism>$<iterations>:<salt>$<salted password>")]
    Shape,
    #[error("unknown mechanism")]
    Mechanism,
    #[error("iterations outside {MIN_ITERATIONS}..={KAFKA_MAX_ITERATIONS}")]
    Iterations,
    #[error("salt is not base64 or is empty")]
    Salt,
    #[error("salted password is not base64 of the mechanism's length")]
    SaltedPassword,
}

impl ScramCredential {
    /// Derives the credential of `password` with `salt`.
    pub fn derive(hash: ScramHash, password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        Self {
            hash,
            iterations,
            salt,
            salted_password: Sensitive::new(salted),
        }
    }

    /// A credential of `password` with a fresh random salt; None if the system RNG failed.
    pub fn generate(hash: ScramHash, password: &str) -> Option<Self> {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::fill(&mut salt).ok()?;
        Some(Self::derive(hash, password, salt, SCRAM_ITERATIONS))
    }

    /// True when this credential was derived from `password` (same salt, same result).
    pub fn matches(&self, password: &str) -> bool {
        let again = self
            .hash
            .salted_password(password.as_bytes(), &self.salt, self.iterations);
        // Both sides are ours; a constant-time compare is still the habit for key material.
        again.len() == self.salted_password.expose().len()
            && again
                .iter()
                .zip(self.salted_password.expose())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// The text form kept in the `<policy>-kafka-scram` Secret.
    pub fn encode(&self) -> Sensitive<String> {
        Sensitive::new(format!(
            "{}${}:{}${}",
            self.hash.mechanism(),
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.salted_password.expose())
        ))
    }

    /// Parses the text form; bounded work whatever the input.
    pub fn parse(text: &str) -> Result<Self, CredentialParseError> {
        if text.len() > 1024 {
            return Err(CredentialParseError::Shape);
        }
        let (mechanism, rest) = text.split_once('$').ok_or(CredentialParseError::Shape)?;
        let (iterations, rest) = rest.split_once(':').ok_or(CredentialParseError::Shape)?;
        let (salt, salted) = rest.split_once('$').ok_or(CredentialParseError::Shape)?;
        let hash = ScramHash::from_mechanism(mechanism)
            .filter(|h| *h != ScramHash::Sha1)
            .ok_or(CredentialParseError::Mechanism)?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|i| (MIN_ITERATIONS..=KAFKA_MAX_ITERATIONS).contains(i))
            .ok_or(CredentialParseError::Iterations)?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(CredentialParseError::Salt)?;
        let salted = B64
            .decode(salted)
            .ok()
            .filter(|s| s.len() == hash.output_len())
            .ok_or(CredentialParseError::SaltedPassword)?;
        Ok(Self {
            hash,
            iterations,
            salt,
            salted_password: Sensitive::new(salted),
        })
    }
}

/// Reads the credentials JSON: entries that do not parse are dropped (and re-derived from the
/// user's password by the operator, or refused by the Job).
pub fn parse_credentials(json: &[u8]) -> BTreeMap<String, ScramCredential> {
    serde_json::from_slice::<BTreeMap<String, String>>(json)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(user, text)| Some((user, ScramCredential::parse(&text).ok()?)))
        .collect()
}

/// Serializes credentials for the Secret and the Job.
pub fn credentials_json(credentials: &BTreeMap<String, ScramCredential>) -> Sensitive<String> {
    let map: BTreeMap<&str, String> = credentials
        .iter()
        .map(|(user, c)| (user.as_str(), c.encode().into_inner()))
        .collect();
    Sensitive::new(serde_json::to_string(&map).expect("a string map serializes"))
}

/// Users (by mechanism) a plan registered or removed before: what a new plan must remove when
/// they are gone from the spec.
pub fn previously_known(plan: &UserPlan) -> BTreeSet<RemovedCredential> {
    plan.users
        .iter()
        .map(|name| RemovedCredential {
            name: name.clone(),
            mechanism: plan.mechanism.clone(),
        })
        .chain(plan.remove.iter().cloned())
        .collect()
}

/// Why the Kafka facet cannot produce its objects. Messages never carry a password.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("spec.kafka.adminSecretRef is not set: the registration Job has no credentials")]
    NoAdminSecretRef,
    #[error(
        "spec.kafka.users[{index}]: Secret name {name:?} is also the name of the policy's {other}; set secretName"
    )]
    NameClash {
        index: usize,
        name: String,
        other: &'static str,
    },
    #[error("the system random number generator failed")]
    Random,
}

impl KafkaError {
    /// Reason of the `KafkaReady=False` condition this error produces.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoAdminSecretRef => "AdminSecretMissing",
            Self::NameClash { .. } => "InvalidSpec",
            Self::Random => "GenerationFailed",
        }
    }
}

/// What exists now. Build it with `..Default::default()` so new fields do not break callers.
#[derive(Clone, Debug, Default)]
pub struct ObservedKafka {
    /// `password` of each existing user Secret, by user name.
    pub passwords: BTreeMap<String, Sensitive<String>>,
    /// The `<policy>-kafka-scram` Secret's data, when it exists.
    pub scram_secret: Option<BTreeMap<String, ByteString>>,
    /// The user asked for new passwords (`bulwark.dev/rotate` with a value not yet handled).
    pub rotate: bool,
}

/// Everything the Kafka facet wants to exist. Debug shows names, never Secret data.
#[derive(Clone)]
pub struct DesiredKafka {
    /// One Secret per user, in spec order.
    pub user_secrets: Vec<Secret>,
    /// SCRAM: `<policy>-kafka-scram` with [`PLAN_KEY`] and [`CREDENTIALS_KEY`].
    pub scram_secret: Option<Secret>,
    /// SCRAM: what the Job registers and removes.
    pub plan: Option<UserPlan>,
    /// SCRAM: short sha256 of plan and credentials, the suffix of the Job's name.
    pub job_hash: Option<String>,
    /// PLAIN: `<policy>-kafka-jaas` with the broker-side JAAS configuration.
    pub jaas_secret: Option<Secret>,
    /// Users whose password this run generated (first time or rotation).
    pub generated: Vec<String>,
    /// [`ObservedKafka::rotate`] was set and is answered by this run.
    pub rotate_handled: bool,
}

impl std::fmt::Debug for DesiredKafka {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.user_secrets.iter().map(|s| s.name_any()).collect();
        f.debug_struct("DesiredKafka")
            .field("user_secrets", &names)
            .field(
                "scram_secret",
                &self.scram_secret.as_ref().map(|s| s.name_any()),
            )
            .field("plan", &self.plan)
            .field("job_hash", &self.job_hash)
            .field(
                "jaas_secret",
                &self.jaas_secret.as_ref().map(|s| s.name_any()),
            )
            .field("generated", &self.generated)
            .field("rotate_handled", &self.rotate_handled)
            .finish()
    }
}

pub fn scram_secret_name(policy: &str) -> String {
    format!("{policy}-kafka-scram")
}

pub fn jaas_secret_name(policy: &str) -> String {
    format!("{policy}-kafka-jaas")
}

/// Secret of a user: `secretName`, else `<policy>-kafka-<user with _ as ->`.
pub fn user_secret_name(policy: &str, user: &KafkaUser) -> String {
    user.secret_name.clone().unwrap_or_else(|| {
        // `_` is not allowed in object names.
        format!("{policy}-kafka-{}", user.name.replace('_', "-"))
    })
}

/// `<policy>-kafka-users-<hash>`, shortened on the policy side to stay a valid label value.
pub fn user_job_name(policy: &str, hash: &str) -> String {
    job_name(policy, "kafka-users", hash)
}

fn hash_of(mechanism: SaslMechanism) -> Option<ScramHash> {
    match mechanism {
        SaslMechanism::ScramSha512 => Some(ScramHash::Sha512),
        SaslMechanism::ScramSha256 => Some(ScramHash::Sha256),
        SaslMechanism::Plain => None,
    }
}

fn mechanism_name(mechanism: SaslMechanism) -> &'static str {
    match mechanism {
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::Plain => "PLAIN",
    }
}

/// The client-side JAAS line of a user.
pub fn client_jaas(mechanism: SaslMechanism, user: &str, password: &str) -> String {
    let module = match mechanism {
        SaslMechanism::Plain => "org.apache.kafka.common.security.plain.PlainLoginModule",
        _ => "org.apache.kafka.common.security.scram.ScramLoginModule",
    };
    format!(
        "{module} required username=\"{}\" password=\"{}\";",
        jaas_quote(user),
        jaas_quote(password)
    )
}

/// Inside a JAAS double-quoted value, `\` and `"` are escaped.
fn jaas_quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A `java.util.Properties` value: backslash, line breaks and a leading blank escaped, so
/// `Properties.load` gives back exactly `value` (a PEM keeps its newlines).
pub fn properties_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 16);
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Leading whitespace (space, tab, form feed) would be skipped by Properties.load.
            '\u{c}' => out.push_str("\\f"),
            ' ' if i == 0 => out.push_str("\\ "),
            // Properties files are read as ISO-8859-1: anything else goes as \uXXXX escapes.
            c if !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `client.properties`: everything a Java client needs, loadable unchanged.
pub fn client_properties(
    kafka: &KafkaSpec,
    policy: &str,
    user: &str,
    password: &str,
    ca_bundle: Option<&str>,
) -> String {
    let mut lines = vec![
        format!(
            "# Kafka client configuration of user {user}, kept by Bulwark (SecurityPolicy {policy})."
        ),
        format!(
            "bootstrap.servers={}",
            properties_value(&kafka.bootstrap_servers)
        ),
        "security.protocol=SASL_SSL".to_string(),
        format!("sasl.mechanism={}", mechanism_name(kafka.mechanism)),
        format!(
            "sasl.jaas.config={}",
            properties_value(&client_jaas(kafka.mechanism, user, password))
        ),
        "ssl.endpoint.identification.algorithm=https".to_string(),
    ];
    if let Some(ca) = ca_bundle {
        lines.push("ssl.truststore.type=PEM".to_string());
        lines.push(format!(
            "ssl.truststore.certificates={}",
            properties_value(ca)
        ));
    }
    lines.join("\n") + "\n"
}

/// Broker-side JAAS for PLAIN: the `KafkaServer` section of a JAAS file, and the same login
/// module as one `sasl.jaas.config` value for `listener.name.<listener>.plain.sasl.jaas.config`.
pub fn plain_server_jaas(users: &[(String, Sensitive<String>)]) -> (String, String) {
    let options: Vec<String> = users
        .iter()
        .map(|(user, pw)| format!("user_{user}=\"{}\"", jaas_quote(pw.expose())))
        .collect();
    let module = "org.apache.kafka.common.security.plain.PlainLoginModule required";
    let file = format!(
        "KafkaServer {{\n  {module}\n  {};\n}};\n",
        options.join("\n  ")
    );
    let line = format!("{module} {};", options.join(" "));
    (file, line)
}

/// Key of the JAAS Secret with the `KafkaServer` file section.
pub const JAAS_FILE_KEY: &str = "kafka_server_jaas.conf";
/// Key of the JAAS Secret with the single-line `sasl.jaas.config` value.
pub const JAAS_CONFIG_KEY: &str = "sasl.jaas.config";

fn secret_data(entries: Vec<(&str, String)>) -> BTreeMap<String, ByteString> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
        .collect()
}

/// The user Secrets and, by mechanism, the salted credentials and plan or the broker JAAS that
/// `policy` asks for; None without a kafka section. Passwords in `observed` are kept unless a
/// rotation was asked for; a stored credential is kept while it still matches its password.
pub fn desired_kafka(
    policy: &SecurityPolicy,
    observed: &ObservedKafka,
    ca_bundle: Option<&str>,
) -> Result<Option<DesiredKafka>, KafkaError> {
    let Some(kafka) = policy.spec.kafka.as_ref() else {
        return Ok(None);
    };
    let name = policy.name_any();
    let reserved = [
        (scram_secret_name(&name), "salted credentials Secret"),
        (jaas_secret_name(&name), "broker JAAS Secret"),
    ];
    let mut passwords = Vec::with_capacity(kafka.users.len());
    let mut generated = Vec::new();
    for (index, user) in kafka.users.iter().enumerate() {
        let secret = user_secret_name(&name, user);
        if let Some((_, other)) = reserved.iter().find(|(r, _)| *r == secret) {
            return Err(KafkaError::NameClash {
                index,
                name: secret,
                other,
            });
        }
        let kept = observed
            .passwords
            .get(&user.name)
            .filter(|p| !observed.rotate && !p.expose().is_empty());
        let password = match kept {
            Some(p) => p.clone(),
            None => {
                generated.push(user.name.clone());
                generate_password().ok_or(KafkaError::Random)?
            }
        };
        passwords.push((user.name.clone(), password));
    }

    let user_secrets = kafka
        .users
        .iter()
        .zip(&passwords)
        .map(|(user, (_, password))| {
            let pw = password.expose();
            let mut entries = vec![
                ("username", user.name.clone()),
                ("password", pw.clone()),
                (
                    "sasl.mechanism",
                    mechanism_name(kafka.mechanism).to_string(),
                ),
                (
                    "sasl.jaas.config",
                    client_jaas(kafka.mechanism, &user.name, pw),
                ),
                ("bootstrap.servers", kafka.bootstrap_servers.clone()),
                (
                    "client.properties",
                    client_properties(kafka, &name, &user.name, pw, ca_bundle),
                ),
            ];
            if let Some(ca) = ca_bundle {
                entries.push(("ca.crt", ca.to_string()));
            }
            Secret {
                metadata: produced_meta(policy, user_secret_name(&name, user), Facet::Kafka),
                type_: Some("Opaque".into()),
                data: Some(secret_data(entries)),
                ..Secret::default()
            }
        })
        .collect();

    let mut desired = DesiredKafka {
        user_secrets,
        scram_secret: None,
        plan: None,
        job_hash: None,
        jaas_secret: None,
        generated,
        rotate_handled: observed.rotate,
    };
    let Some(hash) = hash_of(kafka.mechanism) else {
        let (file, line) = plain_server_jaas(&passwords);
        desired.jaas_secret = Some(Secret {
            metadata: produced_meta(policy, jaas_secret_name(&name), Facet::Kafka),
            type_: Some("Opaque".into()),
            data: Some(secret_data(vec![
                (JAAS_FILE_KEY, file),
                (JAAS_CONFIG_KEY, line),
            ])),
            ..Secret::default()
        });
        return Ok(Some(desired));
    };

    let stored = observed.scram_secret.as_ref();
    let stored_credentials = stored
        .and_then(|d| d.get(CREDENTIALS_KEY))
        .map(|b| parse_credentials(&b.0))
        .unwrap_or_default();
    let previous_plan = stored
        .and_then(|d| d.get(PLAN_KEY))
        .and_then(|b| serde_json::from_slice::<UserPlan>(&b.0).ok());
    let mut credentials = BTreeMap::new();
    for (user, password) in &passwords {
        // A new salt would change the Job's hash: keep the stored credential while it matches.
        let credential = match stored_credentials.get(user) {
            Some(c) if c.hash == hash && c.matches(password.expose()) => c.clone(),
            _ => ScramCredential::generate(hash, password.expose()).ok_or(KafkaError::Random)?,
        };
        credentials.insert(user.clone(), credential);
    }
    let mechanism = hash.mechanism().to_string();
    let current: BTreeSet<RemovedCredential> = passwords
        .iter()
        .map(|(user, _)| RemovedCredential {
            name: user.clone(),
            mechanism: mechanism.clone(),
        })
        .collect();
    let remove: Vec<RemovedCredential> = previous_plan
        .as_ref()
        .map(previously_known)
        .unwrap_or_default()
        .difference(&current)
        .cloned()
        .collect();
    let plan = UserPlan {
        bootstrap_servers: kafka.bootstrap_servers.clone(),
        mechanism,
        users: passwords.iter().map(|(u, _)| u.clone()).collect(),
        remove,
    };
    let plan_json = serde_json::to_string(&plan).expect("a plan serializes");
    let credentials_json = credentials_json(&credentials);
    desired.job_hash = Some(short_hash(&[
        plan_json.as_bytes(),
        credentials_json.expose().as_bytes(),
    ]));
    desired.scram_secret = Some(Secret {
        metadata: produced_meta(policy, scram_secret_name(&name), Facet::Kafka),
        type_: Some("Opaque".into()),
        data: Some(secret_data(vec![
            (PLAN_KEY, plan_json),
            (CREDENTIALS_KEY, credentials_json.into_inner()),
        ])),
        ..Secret::default()
    });
    desired.plan = Some(plan);
    Ok(Some(desired))
}

/// The Job that registers `desired`'s plan: the operator image running `provision kafka`,
/// plan and credentials mounted from the scram Secret, admin credentials from
/// `adminSecretRef`, the trust bundle when the policy has tls. None for PLAIN.
pub fn desired_user_job(
    policy: &SecurityPolicy,
    desired: &DesiredKafka,
    settings: &JobSettings,
) -> Result<Option<Job>, KafkaError> {
    let Some(hash) = desired.job_hash.as_deref() else {
        return Ok(None);
    };
    let admin = policy
        .spec
        .kafka
        .as_ref()
        .and_then(|k| k.admin_secret_ref.as_ref())
        .ok_or(KafkaError::NoAdminSecretRef)?;
    Ok(Some(provision_job(
        policy,
        &ProvisionJob {
            facet: Facet::Kafka,
            target: "kafka",
            name_infix: "kafka-users",
            hash,
            input_secret: scram_secret_name(&policy.name_any()),
            inputs: &[
                (PLAN_KEY, env::PLAN_FILE),
                (CREDENTIALS_KEY, env::CREDENTIALS_FILE),
            ],
            admin_secret: &admin.name,
            admin_env: (env::ADMIN_USER, env::ADMIN_PASSWORD),
            ca_env: env::CA_FILE,
        },
        settings,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::facets::test_policy as policy;

    const SPEC: &str = r#"
tiers:
  data: {podSelector: {matchLabels: {tier: data}}}
tls:
  ca: {secretName: traffic-ca}
kafka:
  bootstrapServers: kafka.traffic.svc:9093
  adminSecretRef: {name: kafka-admin}
  users:
    - {name: backend}
    - {name: stream-processor, secretName: stream-processor-kafka}
"#;
    const CA: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn data(s: &Secret, key: &str) -> String {
        String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    fn observed_from(d: &DesiredKafka) -> ObservedKafka {
        ObservedKafka {
            passwords: d
                .user_secrets
                .iter()
                .map(|s| (data(s, "username"), Sensitive::new(data(s, "password"))))
                .collect(),
            scram_secret: d.scram_secret.as_ref().and_then(|s| s.data.clone()),
            rotate: false,
        }
    }

    fn first(p: &SecurityPolicy) -> DesiredKafka {
        desired_kafka(p, &ObservedKafka::default(), Some(CA))
            .unwrap()
            .unwrap()
    }

    #[test]
    fn user_secret_is_ready_for_a_java_client() {
        let d = first(&policy(SPEC));
        let names: Vec<String> = d.user_secrets.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, ["traffic-kafka-backend", "stream-processor-kafka"]);
        let s = &d.user_secrets[0];
        let pw = data(s, "password");
        assert!(pw.len() >= 32);
        assert_eq!(data(s, "username"), "backend");
        assert_eq!(data(s, "sasl.mechanism"), "SCRAM-SHA-512");
        assert_eq!(data(s, "bootstrap.servers"), "kafka.traffic.svc:9093");
        assert_eq!(data(s, "ca.crt"), CA);
        let jaas = format!(
            "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"backend\" password=\"{pw}\";"
        );
        assert_eq!(data(s, "sasl.jaas.config"), jaas);
        let props = data(s, "client.properties");
        for line in [
            "bootstrap.servers=kafka.traffic.svc:9093",
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            &format!("sasl.jaas.config={jaas}"),
            "ssl.truststore.type=PEM",
            "ssl.truststore.certificates=-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\\n",
        ] {
            assert!(
                props.lines().any(|l| l == line),
                "missing {line:?} in\n{props}"
            );
        }
        assert_ne!(pw, data(&d.user_secrets[1], "password"));
        // Debug names objects, never their content.
        assert!(!format!("{d:?}").contains(&pw));
    }

    #[test]
    fn without_tls_there_is_no_truststore() {
        let p = policy(
            "tiers: {}\nkafka: {bootstrapServers: 'k:9093', adminSecretRef: {name: a}, users: [{name: u}]}",
        );
        let d = desired_kafka(&p, &ObservedKafka::default(), None)
            .unwrap()
            .unwrap();
        let s = &d.user_secrets[0];
        assert!(!s.data.as_ref().unwrap().contains_key("ca.crt"));
        assert!(!data(s, "client.properties").contains("truststore"));
    }

    #[test]
    fn credentials_are_salted_and_stable_until_rotation() {
        let p = policy(SPEC);
        let d = first(&p);
        assert_eq!(d.generated, ["backend", "stream-processor"]);
        let scram = d.scram_secret.as_ref().unwrap();
        assert_eq!(scram.name_any(), "traffic-kafka-scram");
        let creds = parse_credentials(data(scram, CREDENTIALS_KEY).as_bytes());
        assert_eq!(creds.len(), 2);
        for s in &d.user_secrets {
            let c = &creds[&data(s, "username")];
            assert_eq!(c.hash, ScramHash::Sha512);
            assert!(c.iterations >= 4096);
            assert!(c.salt.len() >= 16);
            assert!(c.matches(&data(s, "password")));
            // The plaintext never reaches the credentials Secret.
            assert!(!data(scram, CREDENTIALS_KEY).contains(&data(s, "password")));
        }
        let plan = d.plan.as_ref().unwrap();
        assert_eq!(plan.users, ["backend", "stream-processor"]);
        assert_eq!(plan.mechanism, "SCRAM-SHA-512");
        assert!(plan.remove.is_empty());

        let again = desired_kafka(&p, &observed_from(&d), Some(CA))
            .unwrap()
            .unwrap();
        assert!(again.generated.is_empty());
        assert_eq!(again.job_hash, d.job_hash);
        assert_eq!(again.user_secrets, d.user_secrets);
        assert_eq!(again.scram_secret, d.scram_secret);

        let rotated = desired_kafka(
            &p,
            &ObservedKafka {
                rotate: true,
                ..observed_from(&d)
            },
            Some(CA),
        )
        .unwrap()
        .unwrap();
        assert!(rotated.rotate_handled);
        assert_eq!(rotated.generated.len(), 2);
        assert_ne!(rotated.job_hash, d.job_hash);
        assert_ne!(
            data(&rotated.user_secrets[0], "password"),
            data(&d.user_secrets[0], "password")
        );
    }

    #[test]
    fn a_password_edited_by_hand_gets_a_new_credential_not_a_new_password() {
        let p = policy(SPEC);
        let d = first(&p);
        let mut observed = observed_from(&d);
        observed
            .passwords
            .insert("backend".into(), Sensitive::new("set-by-hand".into()));
        let next = desired_kafka(&p, &observed, Some(CA)).unwrap().unwrap();
        assert_eq!(data(&next.user_secrets[0], "password"), "set-by-hand");
        let creds = parse_credentials(
            data(next.scram_secret.as_ref().unwrap(), CREDENTIALS_KEY).as_bytes(),
        );
        assert!(creds["backend"].matches("set-by-hand"));
        assert_ne!(next.job_hash, d.job_hash);
    }

    #[test]
    fn removed_users_and_mechanisms_are_deleted_on_the_brokers() {
        let d = first(&policy(SPEC));
        let fewer = policy(&SPEC.replace(
            "    - {name: stream-processor, secretName: stream-processor-kafka}\n",
            "",
        ));
        let next = desired_kafka(&fewer, &observed_from(&d), Some(CA))
            .unwrap()
            .unwrap();
        let removed = RemovedCredential {
            name: "stream-processor".into(),
            mechanism: "SCRAM-SHA-512".into(),
        };
        assert_eq!(
            next.plan.as_ref().unwrap().remove,
            std::slice::from_ref(&removed)
        );
        // The removal is remembered by later plans (deleting twice is harmless).
        let later = desired_kafka(&fewer, &observed_from(&next), Some(CA))
            .unwrap()
            .unwrap();
        assert_eq!(later.plan.as_ref().unwrap().remove, [removed]);
        assert_eq!(later.job_hash, next.job_hash);
        // Back in the spec: registered again, no longer removed.
        let back = desired_kafka(&policy(SPEC), &observed_from(&later), Some(CA))
            .unwrap()
            .unwrap();
        assert!(back.plan.as_ref().unwrap().remove.is_empty());

        let sha256 = policy(&SPEC.replace(
            "  bootstrapServers:",
            "  mechanism: SCRAM-SHA-256\n  bootstrapServers:",
        ));
        let switched = desired_kafka(&sha256, &observed_from(&d), Some(CA))
            .unwrap()
            .unwrap();
        let plan = switched.plan.as_ref().unwrap();
        assert_eq!(plan.mechanism, "SCRAM-SHA-256");
        assert_eq!(
            plan.remove
                .iter()
                .map(|r| (r.name.as_str(), r.mechanism.as_str()))
                .collect::<Vec<_>>(),
            [
                ("backend", "SCRAM-SHA-512"),
                ("stream-processor", "SCRAM-SHA-512")
            ]
        );
        // Same passwords, new credentials for the new mechanism.
        assert!(switched.generated.is_empty());
        let creds = parse_credentials(
            data(switched.scram_secret.as_ref().unwrap(), CREDENTIALS_KEY).as_bytes(),
        );
        assert_eq!(creds["backend"].hash, ScramHash::Sha256);
    }

    #[test]
    fn plain_gets_a_broker_jaas_and_no_job() {
        let p = policy(&SPEC.replace(
            "  bootstrapServers:",
            "  mechanism: PLAIN\n  bootstrapServers:",
        ));
        let d = first(&p);
        assert!(d.scram_secret.is_none() && d.plan.is_none() && d.job_hash.is_none());
        assert!(
            desired_user_job(&p, &d, &JobSettings::new("img"))
                .unwrap()
                .is_none()
        );
        let jaas = d.jaas_secret.as_ref().unwrap();
        assert_eq!(jaas.name_any(), "traffic-kafka-jaas");
        let pw = |i: usize| data(&d.user_secrets[i], "password");
        assert_eq!(
            data(jaas, JAAS_CONFIG_KEY),
            format!(
                "org.apache.kafka.common.security.plain.PlainLoginModule required user_backend=\"{}\" user_stream-processor=\"{}\";",
                pw(0),
                pw(1)
            )
        );
        let file = data(jaas, JAAS_FILE_KEY);
        assert!(file.starts_with("KafkaServer {\n"));
        assert!(file.ends_with("};\n"));
        assert!(data(&d.user_secrets[0], "sasl.jaas.config").contains("PlainLoginModule"));
        assert!(data(&d.user_secrets[0], "client.properties").contains("sasl.mechanism=PLAIN"));
    }

    #[test]
    fn default_secret_names_must_not_hit_the_facets_own() {
        let p = policy(
            "tiers: {}\nkafka: {bootstrapServers: 'k:1', adminSecretRef: {name: a}, users: [{name: ok}, {name: scram}]}",
        );
        let err = desired_kafka(&p, &ObservedKafka::default(), None).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(err.to_string().contains("spec.kafka.users[1]"), "{err}");
    }

    #[test]
    fn user_job_mounts_salted_credentials_only() {
        let p = policy(SPEC);
        let d = first(&p);
        let job = desired_user_job(&p, &d, &JobSettings::new("bulwark:dev"))
            .unwrap()
            .unwrap();
        assert_eq!(
            job.name_any(),
            format!("traffic-kafka-users-{}", d.job_hash.as_ref().unwrap())
        );
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let c = &pod.containers[0];
        assert_eq!(
            c.command.as_deref().unwrap(),
            ["bulwark", "provision", "kafka"]
        );
        let env: BTreeMap<&str, Option<&str>> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(env[env::PLAN_FILE], Some("/etc/bulwark/input/plan.json"));
        assert_eq!(
            env[env::CREDENTIALS_FILE],
            Some("/etc/bulwark/input/credentials.json")
        );
        assert_eq!(env[env::CA_FILE], Some("/etc/bulwark/ca/ca.crt"));
        assert!(env.contains_key(env::ADMIN_PASSWORD));
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("traffic-kafka-scram")
        );
        let text = serde_json::to_string(&job).unwrap();
        for s in &d.user_secrets {
            assert!(!text.contains(&data(s, "password")));
        }
        let mut no_admin = p.clone();
        no_admin.spec.kafka.as_mut().unwrap().admin_secret_ref = None;
        let err = desired_user_job(&no_admin, &d, &JobSettings::new("img")).unwrap_err();
        assert_eq!(err.reason(), "AdminSecretMissing");
    }

    #[test]
    fn credential_text_round_trips_and_refuses_junk() {
        let c = ScramCredential::derive(ScramHash::Sha256, "pencil", b"salty".to_vec(), 4096);
        let text = c.encode();
        assert!(text.expose().starts_with("SCRAM-SHA-256$4096:c2FsdHk=$"));
        assert_eq!(ScramCredential::parse(text.expose()).unwrap(), c);
        assert!(format!("{c:?}").contains("SCRAM-SHA-256"));
        assert!(!format!("{c:?}").contains(&text.expose()[20..]));
        for (junk, err) in [
            ("", CredentialParseError::Shape),
            ("SCRAM-SHA-512", CredentialParseError::Shape),
            ("MD5$4096:c2FsdA==$AAAA", CredentialParseError::Mechanism),
            (
                "SCRAM-SHA-1$4096:c2FsdA==$AAAA",
                CredentialParseError::Mechanism,
            ),
            (
                "SCRAM-SHA-256$10:c2FsdA==$AAAA",
                CredentialParseError::Iterations,
            ),
            (
                "SCRAM-SHA-256$99999999999:c2FsdA==$AAAA",
                CredentialParseError::Iterations,
            ),
            ("SCRAM-SHA-256$4096:!!$AAAA", CredentialParseError::Salt),
            ("SCRAM-SHA-256$4096:$AAAA", CredentialParseError::Salt),
            (
                "SCRAM-SHA-256$4096:c2FsdA==$AAAA",
                CredentialParseError::SaltedPassword,
            ),
        ] {
            assert_eq!(ScramCredential::parse(junk), Err(err), "{junk:?}");
        }
        assert!(parse_credentials(b"not json").is_empty());
        assert!(parse_credentials(br#"{"u": "junk"}"#).is_empty());
    }

    #[test]
    fn properties_values_escape_what_properties_load_would_eat() {
        assert_eq!(properties_value("a\\b\nc"), "a\\\\b\\nc");
        assert_eq!(properties_value(" lead"), "\\ lead");
        assert_eq!(properties_value("a=b:c"), "a=b:c");
        assert_eq!(
            properties_value("caf\u{e9}\u{1f600}"),
            "caf\\u00e9\\ud83d\\ude00"
        );
    }
}
