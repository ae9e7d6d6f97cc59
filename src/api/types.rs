use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Every Secret name the spec sets explicitly, as a CEL list expression.
const SECRET_NAMES_CEL: &str = "((has(self.tls) && has(self.tls.ca) && has(self.tls.ca.secretName) ? [self.tls.ca.secretName] : []) + (has(self.tls) && has(self.tls.certificates) ? self.tls.certificates.map(c, c.secretName) : []) + (has(self.kafka) && has(self.kafka.users) ? self.kafka.users.filter(u, has(u.secretName)).map(u, u.secretName) : []) + (has(self.postgres) && has(self.postgres.roles) ? self.postgres.roles.filter(r, has(r.secretName)).map(r, r.secretName) : []) + (has(self.jwt) ? self.jwt.map(j, j.secretName) : []))";

/// CRD validation has no `cel.bind`, so the list is spelled out where it is used.
fn secret_names_unique_rule() -> String {
    format!("{SECRET_NAMES_CEL}.all(n, {SECRET_NAMES_CEL}.filter(m, m == n).size() == 1)")
}

/// Desired security hardening of a three-tier application in this namespace.
///
/// Bulwark produces and keeps in the declared state the NetworkPolicies, TLS Secrets,
/// Kafka SASL credentials, PostgreSQL roles and JWT signing keys this spec describes.
/// Every section except `tiers` is optional; an absent section produces nothing.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "SecurityPolicy",
    plural = "securitypolicies",
    shortname = "secpol",
    doc = "SecurityPolicy describes how a three-tier application is hardened: NetworkPolicies between its tiers, TLS certificates, Kafka SASL users, PostgreSQL roles and JWT signing keys.",
    namespaced,
    status = "SecurityPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: a SecurityPolicy's name is at most 63 characters, as it labels every object it produces")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!has(self.network) || !has(self.network.flows) || self.network.flows.all(f, f.from in self.tiers && f.to in self.tiers)"
    ).message("every flow's from and to must name a tier declared in spec.tiers").field_path(".network.flows"),
    validation = Rule::new(
        "!has(self.network) || !has(self.network.ingress) || self.network.ingress.all(r, r.to in self.tiers)"
    ).message("every ingress rule's to must name a tier declared in spec.tiers").field_path(".network.ingress"),
    validation = Rule::new(
        "!has(self.network) || !has(self.network.egress) || self.network.egress.all(r, r.from in self.tiers)"
    ).message("every egress rule's from must name a tier declared in spec.tiers").field_path(".network.egress"),
    validation = Rule::new(
        "!has(self.tls) || !has(self.tls.certificates) || self.tls.certificates.all(c, !has(c.tier) || c.tier in self.tiers)"
    ).message("a certificate's tier must name a tier declared in spec.tiers").field_path(".tls.certificates"),
    validation = Rule::new(secret_names_unique_rule()).message("secret names must be unique within the policy (tls.ca.secretName, tls.certificates[].secretName, kafka.users[].secretName, postgres.roles[].secretName, jwt[].secretName)")
)]
pub struct SecurityPolicySpec {
    /// What happens to produced Secrets when the policy is deleted. `Retain` (default) orphans
    /// them so running applications keep their credentials; `Delete` lets them be
    /// garbage-collected. NetworkPolicies and Jobs are always removed with the policy.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Tier name to the pods that belong to it. Any names may be used; frontend, backend and
    /// data is the convention. Tiers referenced by rules must be DNS labels of at most 40
    /// characters, because they end up in object names.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    pub tiers: BTreeMap<String, Tier>,

    /// Network isolation between the tiers. Absent: no NetworkPolicy is produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,

    /// Certificate authority and certificates. Absent: no TLS Secret is produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// Kafka SASL users. Absent: no Kafka credential is produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaSpec>,

    /// PostgreSQL roles. Absent: no role or role Job is produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,

    /// JWT signing keys for the API, each with a published JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub jwt: Option<Vec<JwtKeySpec>>,
}

/// Fate of produced Secrets when the policy is deleted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum DeletionPolicy {
    /// Secrets stay and lose their owner reference: credentials remain usable.
    #[default]
    Retain,
    /// Secrets are garbage-collected with the policy.
    Delete,
}

/// The pods that make up one tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Selects the tier's pods in the policy's namespace.
    pub pod_selector: LabelSelector,
}

/// Namespace-wide isolation and the flows that are allowed through it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Deny all ingress and egress of every pod in the namespace unless a rule allows it.
    #[serde(default = "default_true")]
    pub default_deny: bool,

    /// Allow every pod egress to kube-dns on port 53 (UDP and TCP).
    #[serde(default = "default_true")]
    pub allow_dns: bool,

    /// Tier-to-tier flows; everything else stays denied.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub flows: Vec<Flow>,

    /// Traffic from outside the namespace into a tier.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub ingress: Vec<ExternalIngress>,

    /// Traffic from a tier to outside the namespace.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub egress: Vec<ExternalEgress>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            default_deny: true,
            allow_dns: true,
            flows: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Pods of tier `from` may open the listed ports on pods of tier `to`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flow {
    /// Client tier (a key of spec.tiers).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub from: String,
    /// Server tier (a key of spec.tiers).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub to: String,
    /// Ports opened on the server tier; at least one.
    #[schemars(length(min = 1, max = 16))]
    pub ports: Vec<PortSpec>,
}

/// External peers (outside the namespace) that may reach a tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalIngress {
    /// Tier that receives the traffic (a key of spec.tiers).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub to: String,
    /// Peers allowed in (namespaceSelector, podSelector or ipBlock).
    #[schemars(length(min = 1, max = 16))]
    pub from: Vec<NetworkPolicyPeer>,
    /// Ports opened on the tier; at least one.
    #[schemars(length(min = 1, max = 16))]
    pub ports: Vec<PortSpec>,
}

/// External peers (outside the namespace) that a tier may reach.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalEgress {
    /// Tier that opens the connections (a key of spec.tiers).
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub from: String,
    /// Peers it may reach (ipBlock, namespaceSelector or podSelector).
    #[schemars(length(min = 1, max = 16))]
    pub to: Vec<NetworkPolicyPeer>,
    /// Destination ports; at least one.
    #[schemars(length(min = 1, max = 16))]
    pub ports: Vec<PortSpec>,
}

/// A port, or a range of ports when `endPort` is set.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endPort) || self.endPort >= self.port").message("endPort must not be below port"))]
pub struct PortSpec {
    /// Port number, 1-65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Last port of a range starting at `port`, 1-65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
    /// Transport protocol.
    #[serde(default)]
    pub protocol: Protocol,
}

/// Transport protocol of a port.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    schemars::JsonSchema,
)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// Certificate authority and the certificates issued under it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.certificates) || self.certificates.all(c, duration(has(c.renewBefore) ? c.renewBefore : (has(self.defaults) && has(self.defaults.renewBefore) ? self.defaults.renewBefore : '720h')) < duration(has(c.duration) ? c.duration : (has(self.defaults) && has(self.defaults.duration) ? self.defaults.duration : '2160h')))"
).message("every certificate's renewBefore must be shorter than its duration (values fall back to tls.defaults)").field_path(".certificates"))]
pub struct TlsSpec {
    /// The CA that signs every certificate: generated and kept by Bulwark, or your own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSpec>,
    /// Defaults for every certificate that does not set its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<CertificateDefaults>,
    /// Serving and client certificates, one Secret each.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub certificates: Vec<CertificateSpec>,
}

/// A generated CA (`secretName`) or a CA you bring (`existingSecret`, never modified).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.secretName) != has(self.existingSecret)").message("set exactly one of secretName (generated CA) or existingSecret (your own CA)"),
    validation = Rule::new("!has(self.renewBefore) || !has(self.duration) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration").field_path(".renewBefore")
)]
pub struct CaSpec {
    /// Secret that holds the generated CA (kubernetes.io/tls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
    /// Secret of your own CA with tls.crt and tls.key; Bulwark reads it and never modifies it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub existing_secret: Option<String>,
    /// Subject common name of a generated CA (no U+FFFE or U+FFFF: Java keystores cannot hold them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[^\x{FFFE}\x{FFFF}]*$"))]
    pub common_name: Option<String>,
    /// Lifetime of a generated CA, e.g. 43800h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub duration: Option<String>,
    /// How long before expiry the CA rolls over, e.g. 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub renew_before: Option<String>,
    /// Key of a generated CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    /// During a CA rollover, how long the new CA is in the trust bundle before leaves move
    /// under it, so every client has reloaded the bundle first (default 5m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub rollover_propagation: Option<String>,
    /// During a CA rollover, how long the old CA stays in the trust bundle after every leaf
    /// moved to the new one (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub rollover_overlap: Option<String>,
}

/// Defaults applied to every certificate that does not set the field itself.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateDefaults {
    /// Certificate lifetime (default 2160h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub duration: Option<String>,
    /// How long before expiry a certificate is re-issued (default 720h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub renew_before: Option<String>,
    /// Key algorithm and size (default ECDSA P-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
}

/// Key algorithm and size.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.size) || (self.algorithm == 'ECDSA' && self.size in [256, 384]) || (self.algorithm == 'RSA' && self.size in [2048, 3072, 4096]) || (self.algorithm == 'Ed25519')"
).message("size must be 256 or 384 for ECDSA, 2048, 3072 or 4096 for RSA").field_path(".size"))]
pub struct PrivateKeySpec {
    /// ECDSA (default), RSA or Ed25519.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// ECDSA curve size (256, 384) or RSA modulus (2048, 3072, 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
}

/// Key algorithm.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum KeyAlgorithm {
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    #[serde(rename = "RSA")]
    Rsa,
    Ed25519,
}

/// A certificate issued by the policy's CA into a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.dnsNames) && size(self.dnsNames) > 0) || (has(self.ipAddresses) && size(self.ipAddresses) > 0) || has(self.commonName)").message("a certificate needs at least one of dnsNames, ipAddresses or commonName"),
    validation = Rule::new("!has(self.renewBefore) || !has(self.duration) || duration(self.renewBefore) < duration(self.duration)").message("renewBefore must be shorter than duration").field_path(".renewBefore")
)]
pub struct CertificateSpec {
    /// Name of the certificate inside the policy (unique).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Secret that receives the certificate (kubernetes.io/tls).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// Tier whose pods serve with this certificate (a key of spec.tiers), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 40),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub tier: Option<String>,
    /// Subject common name (no U+FFFE or U+FFFF: Java keystores cannot hold them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[^\x{FFFE}\x{FFFF}]*$"))]
    pub common_name: Option<String>,
    /// DNS subject alternative names; a leading `*.` wildcard is allowed.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub dns_names: Vec<DnsName>,
    /// IP subject alternative names.
    #[serde(default)]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(a, isIP(a))").message("every IP address must be a valid IPv4 or IPv6 address"))]
    pub ip_addresses: Vec<IpAddress>,
    /// Extended key usages (default: server).
    #[serde(default = "default_usages")]
    #[schemars(length(min = 1, max = 2))]
    pub usages: Vec<Usage>,
    /// Extra formats written into the Secret. PKCS12 adds keystore.p12, truststore.p12 and keystore.password.
    #[serde(default)]
    #[schemars(length(max = 1))]
    pub formats: Vec<KeystoreFormat>,
    /// Certificate lifetime; falls back to tls.defaults.duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub duration: Option<String>,
    /// Re-issue this long before expiry; falls back to tls.defaults.renewBefore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub renew_before: Option<String>,
    /// Key algorithm; falls back to tls.defaults.privateKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
}

/// A DNS subject alternative name: a lowercase RFC 1123 name (labels of at most 63
/// characters), optionally starting with `*.`.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
pub struct DnsName(
    #[schemars(
        length(min = 1, max = 253),
        regex(
            pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
        )
    )]
    pub String,
);

/// An IPv4 or IPv6 address.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
pub struct IpAddress(#[schemars(length(min = 2, max = 45))] pub String);

/// A valid unquoted PostgreSQL identifier.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
pub struct PgIdentifier(
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_$]*$"))] pub String,
);

fn default_usages() -> Vec<Usage> {
    vec![Usage::Server]
}

/// Extended key usage of a certificate.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Usage {
    Server,
    Client,
}

/// Extra keystore format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum KeystoreFormat {
    #[serde(rename = "PKCS12")]
    Pkcs12,
}

/// A reference to a Secret in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kafka SASL users and the brokers they are registered with.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// SASL mechanism of every user.
    #[serde(default)]
    pub mechanism: SaslMechanism,
    /// Broker addresses (host:port, comma-separated) clients and the registration Job connect to.
    #[schemars(length(min = 1, max = 1024))]
    pub bootstrap_servers: String,
    /// Admin credentials (keys username, password) the registration Job logs in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<SecretRef>,
    /// SASL users, one Secret each.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub users: Vec<KafkaUser>,
}

/// SASL mechanism.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

/// A Kafka SASL user.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaUser {
    /// User name as the brokers see it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9._]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Secret with the user's credentials (default `<policy>-kafka-<user>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
}

/// PostgreSQL server and the least-privilege roles kept in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Server host name, as covered by its certificate.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Server port.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Database the roles are granted on.
    #[schemars(length(min = 1, max = 63))]
    pub database: String,
    /// TLS mode of the role Job and the connection Secrets.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Admin credentials (keys username, password) the role Job connects with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_secret_ref: Option<SecretRef>,
    /// How often the idempotent role Job re-runs to repair drift inside the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub resync_interval: Option<String>,
    /// Roles, one Secret each.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<PostgresRole>,
}

fn default_pg_port() -> i32 {
    5432
}

/// libpq sslmode.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    VerifyFull,
    VerifyCa,
    Require,
}

/// A PostgreSQL role.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresRole {
    /// Role name: a valid unquoted PostgreSQL identifier (lowercase letters, digits, _ and $,
    /// not starting with a digit or `pg_`), at most 63 characters.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_$]*$"))]
    #[x_kube(validation = Rule::new("!self.startsWith('pg_') && !(self in ['public', 'postgres', 'none', 'current_user', 'session_user', 'current_role'])").message("role name is reserved by PostgreSQL"))]
    pub name: String,
    /// Privileges of the role.
    pub access: RoleAccess,
    /// Schemas the grants cover (default: public).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub schemas: Vec<PgIdentifier>,
    /// Maximum concurrent connections (-1: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1, max = 10000))]
    pub connection_limit: Option<i32>,
    /// Secret with the role's credentials (default `<policy>-pg-<role>` with `_` as `-`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: Option<String>,
}

/// Privilege level of a PostgreSQL role.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum RoleAccess {
    /// Owns the schemas (DDL allowed); not superuser, no CREATEROLE.
    Admin,
    /// SELECT/INSERT/UPDATE/DELETE on tables, no DDL, no TRUNCATE.
    ReadWrite,
    /// SELECT only, read-only transactions.
    ReadOnly,
}

/// A JWT signing key with a published JWKS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtKeySpec {
    /// Name of the key; the JWKS ConfigMap is `<name>-jwks`.
    #[schemars(
        length(min = 1, max = 58),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Secret with private.pem, public.pem and kid.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// Signing algorithm.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// How often the signing key rotates, e.g. 720h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub rotate_every: Option<String>,
    /// How long a previous key stays in the JWKS after rotation (default 168h, the refresh-token lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(h|m|s))+$"), length(max = 32))]
    pub grace_period: Option<String>,
}

/// JWT signing algorithm.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum JwtAlgorithm {
    #[default]
    ES256,
    EdDSA,
    RS256,
}

/// Observed state of a SecurityPolicy. Nothing here changes unless the world does.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready plus one condition per facet present: TLSReady, NetworkReady, KafkaReady,
    /// PostgresReady, JWTReady; and Consistent (cross-facet checks of the spec, a warning that
    /// never makes Ready False).
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Objects this policy produces, by kind and name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_objects: Vec<ManagedObject>,
    /// The CA and every certificate: where it lives, when it expires and when it renews.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
    /// Findings of `bulwark audit` the operator already knows while reconciling, counted by
    /// finding type at severity low or above: `Inconsistency` (the checks behind the
    /// `Consistent` condition), `CertificateExpiry` (the CA or a certificate expires within 30
    /// days) and `Drift` (a facet in `Conflict` or `Contested`). Types with no finding are left out.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub findings: BTreeMap<String, u32>,
    /// The last `bulwark.dev/rotate` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_rotation: Option<String>,
    /// The last `bulwark.dev/rotate-ca` annotation value acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_ca_rotation: Option<String>,
    /// Each JWT signing key: the kid that signs now and when it rotates next.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt: Vec<JwtKeyStatus>,
    /// Phase of the CA rollover: Stable, NewCATrusted (new CA in the bundle, leaves still under
    /// the old one) or LeavesReissued (leaves under the new CA, old CA still trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rollover_phase: Option<String>,
    /// Progress of the last `bulwark.dev/rotate-all` request (`bulwark rotate --all`); kept
    /// after the annotation is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,
}

/// Progress of a `bulwark.dev/rotate-all` request: CA rollover, leaves, Kafka, PostgreSQL and
/// JWT rotation, one after the other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The `bulwark.dev/rotate-all` value this progress belongs to.
    pub requested: String,
    /// The phase running now: CARollover, Leaves, Kafka, PostgreSQL or JWT; Complete once every
    /// phase is done. Phases the policy has nothing for are skipped.
    pub phase: String,
    /// Why the current phase does not progress: its facet's condition, when False for a reason
    /// other than a Job still running. Absent while things move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One JWT signing key in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtKeyStatus {
    /// Name in spec.jwt.
    pub name: String,
    /// RFC 7638 thumbprint of the key that signs now.
    pub kid: String,
    /// When the key rotates next, RFC 3339; absent without rotateEvery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
}

/// One certificate in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Certificate name in spec.tls.certificates, or `ca`.
    pub name: String,
    /// Secret holding it.
    pub secret_name: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// Expiry, RFC 3339.
    pub not_after: String,
    /// When Bulwark re-issues it, RFC 3339; absent for a CA you bring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
}

/// One produced object.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedObject {
    /// Kind, e.g. NetworkPolicy.
    pub kind: String,
    /// Name in the policy's namespace.
    pub name: String,
    /// Facet that produces it.
    pub facet: String,
}
