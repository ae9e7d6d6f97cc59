//! TLS facet: a CA, leaf certificates and the trust bundle, as pure functions of the spec, what
//! exists and the time. Nothing here talks to the cluster; the reconciler applies what it returns.
//!
//! RSA key generation takes tens of milliseconds: call [`desired_tls`] from a blocking pool.

mod keystore;
mod pki;
mod reuse;
mod sensitive;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::{
    CaSpec, CertificateSpec, GoDuration, KeystoreFormat, ParseDurationError, SecurityPolicy,
    TlsSpec, Usage,
};
use crate::kube_io::{Facet, produced_meta};

pub use keystore::{generate_password, keystore_p12, truststore_p12};
pub use pki::{CaRequest, CertificateAuthority, IssuedLeaf, KeyKind, LeafRequest, Usages};
pub use reuse::{ReissueReason, Reuse, SecretData, decide_ca, decide_leaf, renewal_time};
pub use sensitive::Sensitive;

pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const KEYSTORE_P12: &str = "keystore.p12";
pub const TRUSTSTORE_P12: &str = "truststore.p12";
pub const KEYSTORE_PASSWORD: &str = "keystore.password";
pub const SECRET_TYPE_TLS: &str = "kubernetes.io/tls";

const DEFAULT_CA_DURATION: &str = "43800h";
const DEFAULT_DURATION: &str = "2160h";
const DEFAULT_RENEW_BEFORE: &str = "720h";
/// A generated CA without renewBefore rolls over in the last fifth of its life (8760h of 43800h).
const CA_RENEW_FRACTION: u32 = 5;
/// Name of the certificate entry of the CA in the inventory and in events.
pub const CA_INVENTORY_NAME: &str = "ca";

/// Why the TLS facet cannot produce its objects. Messages name the field, never the material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: {source}")]
    InvalidDuration {
        field: String,
        #[source]
        source: ParseDurationError,
    },
    #[error("{field}: renewBefore ({renew_before}) must be shorter than duration ({duration})")]
    RenewBeforeTooLong {
        field: String,
        renew_before: String,
        duration: String,
    },
    #[error("{field}: {algorithm} keys cannot have size {size}")]
    UnsupportedKey {
        field: String,
        algorithm: String,
        size: u32,
    },
    #[error("{field}: {value:?} is not an IP address")]
    InvalidIpAddress { field: String, value: String },
    #[error("spec.tls.ca.existingSecret: Secret {secret:?} does not exist")]
    ExistingCaMissing { secret: String },
    #[error("spec.tls.ca.existingSecret: Secret {secret:?} cannot be used as a CA: {problem}")]
    ExistingCaInvalid { secret: String, problem: String },
    #[error("certificate {name:?}: {source}")]
    Issue {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate {name:?}: cannot write PKCS#12: {message}")]
    Keystore { name: String, message: String },
    #[error("a certificate time is out of range")]
    TimeOutOfRange,
    #[error("the system random number generator failed")]
    Random,
}

impl TlsError {
    fn ca(source: rcgen::Error) -> Self {
        Self::Issue {
            name: CA_INVENTORY_NAME.to_string(),
            source,
        }
    }

    /// Reason of the `TLSReady=False` condition this error produces.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidDuration { .. }
            | Self::RenewBeforeTooLong { .. }
            | Self::UnsupportedKey { .. }
            | Self::InvalidIpAddress { .. } => "InvalidSpec",
            Self::ExistingCaMissing { .. } => "CASecretMissing",
            Self::ExistingCaInvalid { .. } => "CASecretInvalid",
            Self::Issue { .. } | Self::Keystore { .. } | Self::TimeOutOfRange | Self::Random => {
                "IssuanceFailed"
            }
        }
    }
}

/// One certificate in status: what it is, where it lives, when it expires and renews.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateInventory {
    pub name: String,
    pub secret_name: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339; absent for a CA you bring (Bulwark never renews it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
}

/// What exists now: the data of the CA Secret and of each leaf Secret, by Secret name.
#[derive(Clone, Debug, Default)]
pub struct ObservedTls<'a> {
    /// The generated CA's Secret, or the `existingSecret` for a CA you bring.
    pub ca: Option<&'a SecretData>,
    pub leaves: BTreeMap<String, &'a SecretData>,
    /// The user asked for new leaves (annotation `bulwark.dev/rotate` carries a value status
    /// has not recorded as handled): every leaf is re-issued once, the CA stays.
    pub rotate_leaves: bool,
}

/// A certificate that this run issues, and why; one Event each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issuance {
    pub name: String,
    pub secret_name: String,
    pub reason: ReissueReason,
}

/// Everything the TLS facet wants to exist. Debug shows object names, never Secret data.
#[derive(Clone)]
pub struct DesiredTls {
    /// The generated CA's Secret; None for a CA you bring, which is never modified.
    pub ca_secret: Option<Secret>,
    /// One Secret per certificate, in spec order.
    pub leaf_secrets: Vec<Secret>,
    /// `<policy>-trust-bundle` with `ca.crt`.
    pub trust_bundle: ConfigMap,
    pub ca: CertificateInventory,
    /// In spec order.
    pub certificates: Vec<CertificateInventory>,
    /// Earliest renewal time of the generated CA and every leaf: when to requeue.
    pub next_renewal: Option<Timestamp>,
    /// What this run (re-)issues; empty when everything is kept.
    pub issued: Vec<Issuance>,
}

impl std::fmt::Debug for DesiredTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |secrets: &[Secret]| secrets.iter().map(|s| s.name_any()).collect::<Vec<_>>();
        f.debug_struct("DesiredTls")
            .field("ca_secret", &self.ca_secret.as_ref().map(|s| s.name_any()))
            .field("leaf_secrets", &names(&self.leaf_secrets))
            .field("trust_bundle", &self.trust_bundle.name_any())
            .field("ca", &self.ca)
            .field("certificates", &self.certificates)
            .field("next_renewal", &self.next_renewal)
            .field("issued", &self.issued)
            .finish()
    }
}

pub fn trust_bundle_name(policy: &str) -> String {
    format!("{policy}-trust-bundle")
}

pub fn default_ca_secret_name(policy: &str) -> String {
    format!("{policy}-ca")
}

/// Secret name the CA is read from: the generated CA's, or your own.
pub fn ca_secret_name(policy: &SecurityPolicy) -> Option<String> {
    let tls = policy.spec.tls.as_ref()?;
    let ca = tls.ca.as_ref();
    Some(
        ca.and_then(|c| c.existing_secret.clone().or_else(|| c.secret_name.clone()))
            .unwrap_or_else(|| default_ca_secret_name(&policy.name_any())),
    )
}

fn duration(field: String, value: Option<&str>, default: &str) -> Result<Duration, TlsError> {
    value
        .unwrap_or(default)
        .parse::<GoDuration>()
        .map(|d| d.0)
        .map_err(|source| TlsError::InvalidDuration { field, source })
}

fn check_renew_before(
    field: String,
    duration: Duration,
    renew_before: Duration,
) -> Result<(), TlsError> {
    if renew_before >= duration {
        return Err(TlsError::RenewBeforeTooLong {
            field,
            renew_before: GoDuration(renew_before).to_string(),
            duration: GoDuration(duration).to_string(),
        });
    }
    Ok(())
}

/// The generated CA `ca` asks for, defaults applied (43800h, renewBefore a fifth of it, P-256).
pub fn ca_request(policy_name: &str, ca: Option<&CaSpec>) -> Result<CaRequest, TlsError> {
    let field = "spec.tls.ca";
    let lifetime = duration(
        format!("{field}.duration"),
        ca.and_then(|c| c.duration.as_deref()),
        DEFAULT_CA_DURATION,
    )?;
    let renew_before = match ca.and_then(|c| c.renew_before.as_deref()) {
        Some(v) => duration(format!("{field}.renewBefore"), Some(v), "")?,
        None => lifetime / CA_RENEW_FRACTION,
    };
    check_renew_before(format!("{field}.renewBefore"), lifetime, renew_before)?;
    let common_name = ca
        .and_then(|c| c.common_name.clone().or_else(|| c.secret_name.clone()))
        .unwrap_or_else(|| default_ca_secret_name(policy_name));
    Ok(CaRequest {
        common_name,
        key: KeyKind::from_spec(
            ca.and_then(|c| c.private_key.as_ref()),
            &format!("{field}.privateKey"),
        )?,
        duration: lifetime,
        renew_before,
    })
}

/// The certificate `cert` (at `index` in spec.tls.certificates) asks for, with `tls.defaults`
/// and the built-in defaults (2160h, 720h, ECDSA P-256) applied.
pub fn leaf_request(
    tls: &TlsSpec,
    cert: &CertificateSpec,
    index: usize,
) -> Result<LeafRequest, TlsError> {
    let field = format!("spec.tls.certificates[{index}]");
    let defaults = tls.defaults.as_ref();
    let lifetime = duration(
        format!("{field}.duration"),
        cert.duration
            .as_deref()
            .or(defaults.and_then(|d| d.duration.as_deref())),
        DEFAULT_DURATION,
    )?;
    let renew_before = duration(
        format!("{field}.renewBefore"),
        cert.renew_before
            .as_deref()
            .or(defaults.and_then(|d| d.renew_before.as_deref())),
        DEFAULT_RENEW_BEFORE,
    )?;
    check_renew_before(format!("{field}.renewBefore"), lifetime, renew_before)?;
    let key = KeyKind::from_spec(
        cert.private_key
            .as_ref()
            .or(defaults.and_then(|d| d.private_key.as_ref())),
        &format!("{field}.privateKey"),
    )?;
    let ip_addresses = cert
        .ip_addresses
        .iter()
        .map(|ip| {
            ip.0.parse::<IpAddr>()
                .map_err(|_| TlsError::InvalidIpAddress {
                    field: format!("{field}.ipAddresses"),
                    value: ip.0.clone(),
                })
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    // Without a commonName, the first name stands in: some clients still log or check it.
    let common_name = cert
        .common_name
        .clone()
        .or_else(|| cert.dns_names.first().map(|n| n.0.clone()))
        .or_else(|| cert.ip_addresses.first().map(|a| a.0.clone()))
        .unwrap_or_else(|| cert.name.clone());
    Ok(LeafRequest {
        name: cert.name.clone(),
        secret_name: cert.secret_name.clone(),
        common_name,
        dns_names: cert.dns_names.iter().map(|n| n.0.clone()).collect(),
        ip_addresses,
        usages: Usages {
            server: cert.usages.contains(&Usage::Server),
            client: cert.usages.contains(&Usage::Client),
        },
        key,
        duration: lifetime,
        renew_before,
        pkcs12: cert.formats.contains(&KeystoreFormat::Pkcs12),
    })
}

fn tls_secret(policy: &SecurityPolicy, name: &str, data: SecretData) -> Secret {
    Secret {
        metadata: produced_meta(policy, name, Facet::Tls),
        type_: Some(SECRET_TYPE_TLS.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

/// The `<policy>-trust-bundle` ConfigMap: `ca.crt` holds every CA a client must trust now.
pub fn trust_bundle_configmap(policy: &SecurityPolicy, bundle_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: produced_meta(policy, trust_bundle_name(&policy.name_any()), Facet::Tls),
        data: Some(BTreeMap::from([(
            CA_CRT.to_string(),
            bundle_pem.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

fn bytes(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

fn rfc3339(ts: Timestamp) -> String {
    ts.to_string()
}

/// The CA, the trust bundle (PEM and DER of each CA) and the CA's Secret data, if generated.
struct ResolvedCa {
    ca: CertificateAuthority,
    bundle_pem: String,
    bundle_der: Vec<Vec<u8>>,
    secret_name: String,
    renewal: Option<Timestamp>,
    reissued: Option<ReissueReason>,
}

fn resolve_ca(
    policy_name: &str,
    spec: Option<&CaSpec>,
    observed: Option<&SecretData>,
    now: Timestamp,
) -> Result<ResolvedCa, TlsError> {
    if let Some(secret) = spec.and_then(|c| c.existing_secret.clone()) {
        return existing_ca(secret, observed, now);
    }
    let secret_name = spec
        .and_then(|c| c.secret_name.clone())
        .unwrap_or_else(|| default_ca_secret_name(policy_name));
    let request = ca_request(policy_name, spec)?;
    let kept = match decide_ca(observed, request.renew_before, now) {
        Reuse::Keep => observed
            .and_then(|d| Some((d.get(TLS_CRT)?, d.get(TLS_KEY)?)))
            .and_then(|(crt, key)| CertificateAuthority::from_pem(&crt.0, &key.0).ok())
            .ok_or(ReissueReason::Unreadable),
        Reuse::Reissue(reason) => Err(reason),
    };
    let (ca, reissued) = match kept {
        Ok(ca) => (ca, None),
        Err(reason) => (CertificateAuthority::generate(&request, now)?, Some(reason)),
    };
    Ok(ResolvedCa {
        bundle_pem: ca.chain_pem.clone(),
        bundle_der: vec![ca.cert_der.clone()],
        renewal: Some(renewal_time(ca.not_after, request.renew_before)),
        ca,
        secret_name,
        reissued,
    })
}

fn existing_ca(
    secret: String,
    observed: Option<&SecretData>,
    now: Timestamp,
) -> Result<ResolvedCa, TlsError> {
    let Some(data) = observed else {
        return Err(TlsError::ExistingCaMissing { secret });
    };
    let invalid = |problem: &str| TlsError::ExistingCaInvalid {
        secret: secret.clone(),
        problem: problem.to_string(),
    };
    let crt = data
        .get(TLS_CRT)
        .ok_or_else(|| invalid("it has no tls.crt"))?;
    let key = data
        .get(TLS_KEY)
        .ok_or_else(|| invalid("it has no tls.key"))?;
    let ca = CertificateAuthority::from_pem(&crt.0, &key.0).map_err(invalid)?;
    if now >= ca.not_after {
        return Err(invalid(&format!(
            "its certificate expired at {}",
            ca.not_after
        )));
    }
    // Its own ca.crt, when present, is the trust anchor; otherwise the whole tls.crt chain.
    let (bundle_pem, bundle_der) = match data.get(CA_CRT) {
        Some(anchor) => {
            let der = pki::pem_certificates(&anchor.0)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| invalid("its ca.crt holds no readable certificate"))?;
            let pem = String::from_utf8(anchor.0.clone())
                .map_err(|_| invalid("its ca.crt is not text"))?;
            (pem, der)
        }
        None => (
            ca.chain_pem.clone(),
            pki::pem_certificates(ca.chain_pem.as_bytes()).unwrap_or_default(),
        ),
    };
    Ok(ResolvedCa {
        ca,
        bundle_pem,
        bundle_der,
        secret_name: secret,
        renewal: None,
        reissued: None,
    })
}

/// The CA Secret, the leaf Secrets, the trust bundle and the inventory `policy` asks for, given
/// what exists (`observed`) at `now`. None when the policy has no `tls` section.
///
/// Existing keys and certificates are kept byte for byte unless [`decide_ca`] / [`decide_leaf`]
/// say otherwise, so calling this again with its own output changes nothing.
pub fn desired_tls(
    policy: &SecurityPolicy,
    observed: &ObservedTls<'_>,
    now: Timestamp,
) -> Result<Option<DesiredTls>, TlsError> {
    let Some(tls) = policy.spec.tls.as_ref() else {
        return Ok(None);
    };
    let policy_name = policy.name_any();
    let requests = tls
        .certificates
        .iter()
        .enumerate()
        .map(|(i, c)| leaf_request(tls, c, i))
        .collect::<Result<Vec<_>, _>>()?;

    let resolved = resolve_ca(&policy_name, tls.ca.as_ref(), observed.ca, now)?;
    let ca = &resolved.ca;
    let mut issued = Vec::new();
    if let Some(reason) = resolved.reissued {
        issued.push(Issuance {
            name: CA_INVENTORY_NAME.to_string(),
            secret_name: resolved.secret_name.clone(),
            reason,
        });
    }
    let is_generated = tls.ca.as_ref().is_none_or(|c| c.existing_secret.is_none());
    let ca_secret = is_generated.then(|| {
        tls_secret(
            policy,
            &resolved.secret_name,
            BTreeMap::from([
                (TLS_CRT.to_string(), bytes(&ca.chain_pem)),
                (TLS_KEY.to_string(), bytes(ca.key_pem.expose())),
                (CA_CRT.to_string(), bytes(&resolved.bundle_pem)),
            ]),
        )
    });
    let ca_inventory = CertificateInventory {
        name: CA_INVENTORY_NAME.to_string(),
        secret_name: resolved.secret_name.clone(),
        serial: ca.serial.clone(),
        not_after: rfc3339(ca.not_after),
        renewal_time: resolved.renewal.map(rfc3339),
    };

    let mut trusted = resolved.bundle_der.clone();
    if !trusted.contains(&ca.cert_der) {
        trusted.push(ca.cert_der.clone());
    }

    let mut next_renewal = resolved.renewal;
    let mut leaf_secrets = Vec::new();
    let mut certificates = Vec::new();
    for request in &requests {
        let observed_leaf = observed.leaves.get(&request.secret_name).copied();
        let decision = if observed.rotate_leaves {
            Reuse::Reissue(ReissueReason::RotationRequested)
        } else {
            decide_leaf(request, observed_leaf, &trusted, now)
        };
        let (chain_pem, key_pem, reissued) = match (decision, observed_leaf) {
            (Reuse::Keep, Some(data)) => (
                data[TLS_CRT].0.clone(),
                Sensitive::new(data[TLS_KEY].0.clone()),
                false,
            ),
            (decision, _) => {
                let reason = match decision {
                    Reuse::Reissue(reason) => reason,
                    Reuse::Keep => ReissueReason::Missing,
                };
                let leaf = ca.issue(request, now)?;
                issued.push(Issuance {
                    name: request.name.clone(),
                    secret_name: request.secret_name.clone(),
                    reason,
                });
                (
                    leaf.chain_pem.into_bytes(),
                    Sensitive::new(leaf.key_pem.into_inner().into_bytes()),
                    true,
                )
            }
        };
        let chain_der = pki::pem_certificates(&chain_pem).unwrap_or_default();
        let leaf_cert = chain_der.first().and_then(|d| pki::parse_certificate(d));
        let (not_after, serial) = leaf_cert
            .map(|c| (pki::not_after(&c), pki::serial_hex(&c)))
            .ok_or_else(|| TlsError::Issue {
                name: request.name.clone(),
                source: rcgen::Error::CouldNotParseCertificate,
            })?;
        let renewal = renewal_time(not_after, request.renew_before);
        next_renewal = Some(next_renewal.map_or(renewal, |n| n.min(renewal)));
        certificates.push(CertificateInventory {
            name: request.name.clone(),
            secret_name: request.secret_name.clone(),
            serial,
            not_after: rfc3339(not_after),
            renewal_time: Some(rfc3339(renewal)),
        });

        let mut data = BTreeMap::from([
            (TLS_CRT.to_string(), ByteString(chain_pem)),
            (TLS_KEY.to_string(), ByteString(key_pem.expose().clone())),
            (CA_CRT.to_string(), bytes(&resolved.bundle_pem)),
        ]);
        if request.pkcs12 {
            let stores = pkcs12_data(
                request,
                observed_leaf,
                reissued,
                &resolved,
                &key_pem,
                &chain_der,
            )?;
            data.extend(stores);
        }
        leaf_secrets.push(tls_secret(policy, &request.secret_name, data));
    }

    Ok(Some(DesiredTls {
        ca_secret,
        leaf_secrets,
        trust_bundle: trust_bundle_configmap(policy, &resolved.bundle_pem),
        ca: ca_inventory,
        certificates,
        next_renewal,
        issued,
    }))
}

/// keystore.p12, truststore.p12 and keystore.password: kept as they are while the leaf and the
/// bundle are unchanged (PKCS#12 files are salted, rewriting would change them every time).
fn pkcs12_data(
    request: &LeafRequest,
    observed: Option<&SecretData>,
    reissued: bool,
    resolved: &ResolvedCa,
    key_pem: &Sensitive<Vec<u8>>,
    chain_der: &[Vec<u8>],
) -> Result<SecretData, TlsError> {
    let keys = [KEYSTORE_P12, TRUSTSTORE_P12, KEYSTORE_PASSWORD];
    if let Some(data) = observed {
        let same_bundle =
            data.get(CA_CRT).map(|b| b.0.as_slice()) == Some(resolved.bundle_pem.as_bytes());
        if !reissued && same_bundle && keys.iter().all(|k| data.contains_key(*k)) {
            return Ok(keys
                .iter()
                .map(|k| (k.to_string(), data[*k].clone()))
                .collect());
        }
    }
    let keystore_err = |message: String| TlsError::Keystore {
        name: request.name.clone(),
        message,
    };
    // An existing password survives re-issuance: applications may have it configured.
    let existing = observed
        .and_then(|d| d.get(KEYSTORE_PASSWORD))
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
        .filter(|p| !p.is_empty());
    let password = match existing {
        Some(p) => Sensitive::new(p),
        None => generate_password().ok_or(TlsError::Random)?,
    };
    let key_der = pki::parse_key(key_pem.expose())
        .map(|k| Sensitive::new(k.expose().serialize_der()))
        .ok_or_else(|| keystore_err("tls.key is not readable".to_string()))?;
    let keystore =
        keystore_p12(&request.name, &key_der, chain_der, &password).map_err(keystore_err)?;
    let truststore = truststore_p12(&resolved.bundle_der, &password).map_err(keystore_err)?;
    Ok(BTreeMap::from([
        (KEYSTORE_P12.to_string(), ByteString(keystore)),
        (TRUSTSTORE_P12.to_string(), ByteString(truststore)),
        (KEYSTORE_PASSWORD.to_string(), bytes(password.expose())),
    ]))
}

#[cfg(test)]
mod tests;
