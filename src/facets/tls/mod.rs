//! TLS facet: a CA, leaf certificates and the trust bundle, as pure functions of the spec, what
//! exists and the time. Nothing here talks to the cluster; the reconciler applies what it returns.
//!
//! RSA key generation takes tens of milliseconds: call [`desired_tls`] from a blocking pool.

mod keystore;
mod pki;
mod reuse;
mod rollover;
mod sensitive;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;

use crate::api::{
    CaSpec, CertificateSpec, GoDuration, KeystoreFormat, ParseDurationError, SecurityPolicy,
    TlsSpec, Usage,
};
use crate::kube_io::{Facet, produced_meta};

pub use keystore::{generate_password, keystore_p12, truststore_p12};
pub use pki::{CaRequest, CertificateAuthority, IssuedLeaf, KeyKind, LeafRequest, Usages};
pub use reuse::{ReissueReason, Reuse, SecretData, decide_ca, decide_leaf, renewal_time};
pub use rollover::{
    ANNOTATION_ROLLOVER_PHASE, ANNOTATION_ROLLOVER_SINCE, DEFAULT_ROLLOVER_OVERLAP,
    DEFAULT_ROLLOVER_PROPAGATION, NEXT_CRT, NEXT_KEY, PREVIOUS_CRT, RolloverPhase,
    RolloverSettings,
};
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
/// Shortest lifetime of a CA or certificate: shorter ones would be renewed faster than the
/// inventory and the clients that load them can follow.
const MIN_LIFETIME: Duration = Duration::from_secs(3600);
/// Longest lifetime: 100 years, well inside what X.509 time encodes (the year 9999).
const MAX_LIFETIME: Duration = Duration::from_secs(876_000 * 3600);
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
    #[error("{field}: {value} is outside {min} to {max}")]
    LifetimeOutOfRange {
        field: String,
        value: String,
        min: String,
        max: String,
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
            | Self::LifetimeOutOfRange { .. }
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
pub use crate::api::CertificateStatus as CertificateInventory;

/// What exists now: the data of the CA Secret and of each leaf Secret, by Secret name, plus the
/// requests and settings that steer rotation. Build it with `..Default::default()` so new fields
/// do not break callers.
#[derive(Clone, Debug, Default)]
pub struct ObservedTls<'a> {
    /// The generated CA's Secret, or the `existingSecret` for a CA you bring.
    pub ca: Option<&'a SecretData>,
    /// Annotations of the generated CA's Secret: they carry when the current rollover phase
    /// began ([`ANNOTATION_ROLLOVER_SINCE`]). Without them a rollover in progress restarts its
    /// current wait (never shortens it).
    pub ca_annotations: Option<&'a BTreeMap<String, String>>,
    pub leaves: BTreeMap<String, &'a SecretData>,
    /// The user asked for new leaves (annotation `bulwark.dev/rotate` carries a value status
    /// has not recorded as handled): every leaf is re-issued once, the CA stays.
    pub rotate_leaves: bool,
    /// The user asked for a new CA (annotation `bulwark.dev/rotate-ca` carries a value status
    /// has not recorded as handled): a rollover starts now, before the CA's renewal time.
    /// Record the value as handled only when [`DesiredTls::rotate_ca_handled`] says so.
    pub rotate_ca: bool,
    /// Overlap and propagation delay of a CA rollover.
    pub rollover: RolloverSettings,
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
    /// Rollover phase of the generated CA after this run; always `Stable` for a CA you bring.
    pub phase: RolloverPhase,
    /// [`ObservedTls::rotate_ca`] was set and is answered by this run: a rollover started (or a
    /// fresh CA replaced a lost one), or the CA is one you bring, which Bulwark never rotates.
    /// False while a rollover is still running: the request then starts the next one.
    pub rotate_ca_handled: bool,
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
            .field("phase", &self.phase)
            .field("rotate_ca_handled", &self.rotate_ca_handled)
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

/// The lifetime at `field`, refused outside one hour to 100 years.
fn lifetime(field: String, value: Option<&str>, default: &str) -> Result<Duration, TlsError> {
    let d = duration(field.clone(), value, default)?;
    if !(MIN_LIFETIME..=MAX_LIFETIME).contains(&d) {
        return Err(TlsError::LifetimeOutOfRange {
            field,
            value: GoDuration(d).to_string(),
            min: GoDuration(MIN_LIFETIME).to_string(),
            max: GoDuration(MAX_LIFETIME).to_string(),
        });
    }
    Ok(d)
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
    let lifetime = lifetime(
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
    let lifetime = lifetime(
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

/// The trust bundle as PEM text and as the DER of each CA.
struct Bundle {
    pem: String,
    der: Vec<Vec<u8>>,
}

impl Bundle {
    fn from_pems(pems: &[&str]) -> Self {
        let mut pem = String::new();
        for p in pems {
            pem.push_str(p);
            if !pem.ends_with('\n') {
                pem.push('\n');
            }
        }
        let der = pki::pem_certificates(pem.as_bytes()).unwrap_or_default();
        Self { pem, der }
    }
}

/// A CA you bring: it signs, its own `ca.crt` (or its chain) is the bundle, nothing rotates.
struct ExistingCa {
    ca: CertificateAuthority,
    bundle: Bundle,
}

fn existing_ca(
    secret: String,
    observed: Option<&SecretData>,
    now: Timestamp,
) -> Result<ExistingCa, TlsError> {
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
    let bundle = match data.get(CA_CRT) {
        Some(anchor) => {
            let der = pki::pem_certificates(&anchor.0)
                .filter(|d| !d.is_empty())
                .ok_or_else(|| invalid("its ca.crt holds no readable certificate"))?;
            let pem = String::from_utf8(anchor.0.clone())
                .map_err(|_| invalid("its ca.crt is not text"))?;
            Bundle { pem, der }
        }
        None => Bundle {
            der: pki::pem_certificates(ca.chain_pem.as_bytes()).unwrap_or_default(),
            pem: ca.chain_pem.clone(),
        },
    };
    Ok(ExistingCa { ca, bundle })
}

/// The CA side of one reconcile: generated (with its rollover state) or brought by the user.
enum CaSide {
    Generated {
        request: CaRequest,
        step: Box<rollover::CaStep>,
    },
    Existing(ExistingCa),
}

impl CaSide {
    fn signing(&self) -> &CertificateAuthority {
        match self {
            Self::Generated { step, .. } => &step.state.signing,
            Self::Existing(e) => &e.ca,
        }
    }

    fn phase(&self) -> RolloverPhase {
        match self {
            Self::Generated { step, .. } => step.state.phase(),
            Self::Existing(_) => RolloverPhase::Stable,
        }
    }

    fn bundle(&self) -> Bundle {
        match self {
            Self::Generated { step, .. } => Bundle::from_pems(&step.state.bundle_pems()),
            Self::Existing(e) => Bundle {
                pem: e.bundle.pem.clone(),
                der: e.bundle.der.clone(),
            },
        }
    }

    /// The outgoing CA certificate while leaves move away from it.
    fn previous_der(&self) -> Option<&[u8]> {
        match self {
            Self::Generated { step, .. } => step.state.previous.as_ref().map(|p| p.der.as_slice()),
            Self::Existing(_) => None,
        }
    }
}

/// A leaf after this run's decision, before its Secret is written.
struct LeafOutcome<'r> {
    request: &'r LeafRequest,
    observed: Option<&'r SecretData>,
    chain_pem: Vec<u8>,
    key_pem: Sensitive<Vec<u8>>,
    reissued: bool,
}

/// The CA Secret, the leaf Secrets, the trust bundle and the inventory `policy` asks for, given
/// what exists (`observed`) at `now`. None when the policy has no `tls` section.
///
/// Existing keys and certificates are kept byte for byte unless [`decide_ca`] / [`decide_leaf`]
/// or the CA rollover say otherwise, so calling this again with its own output changes nothing.
/// A generated CA rolls over in phases ([`RolloverPhase`]), at most one per call: see the
/// `rollover` module for the steps and for what the CA Secret stores between calls.
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
    let settings = &observed.rollover;

    let ca_spec = tls.ca.as_ref();
    let (mut side, secret_name) = match ca_spec.and_then(|c| c.existing_secret.clone()) {
        Some(secret) => (
            CaSide::Existing(existing_ca(secret.clone(), observed.ca, now)?),
            secret,
        ),
        None => {
            let request = ca_request(&policy_name, ca_spec)?;
            let state = rollover::observe(observed.ca, observed.ca_annotations, now);
            let step = rollover::advance(&request, state, observed.rotate_ca, settings, now)?;
            let name = ca_spec
                .and_then(|c| c.secret_name.clone())
                .unwrap_or_else(|| default_ca_secret_name(&policy_name));
            (
                CaSide::Generated {
                    request,
                    step: Box::new(step),
                },
                name,
            )
        }
    };

    let mut issued = Vec::new();
    if let CaSide::Generated { step, .. } = &side
        && let Some(reason) = &step.generated
    {
        issued.push(Issuance {
            name: CA_INVENTORY_NAME.to_string(),
            secret_name: secret_name.clone(),
            reason: *reason,
        });
    }

    // Leaves: while they move to a new CA, only that CA keeps them; otherwise any CA of the
    // bundle as it stands after this step's CA change (the old CA while the new one propagates).
    let phase = side.phase();
    let trusted = if phase == RolloverPhase::LeavesReissued {
        vec![side.signing().cert_der.clone()]
    } else {
        side.bundle().der
    };
    let mut leaf_moved = false;
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in &requests {
        let observed_leaf = observed.leaves.get(&request.secret_name).copied();
        let decision = if observed.rotate_leaves {
            Reuse::Reissue(ReissueReason::RotationRequested)
        } else {
            decide_leaf(request, observed_leaf, &trusted, now)
        };
        let outcome = match (decision, observed_leaf) {
            (Reuse::Keep, Some(data)) => LeafOutcome {
                request,
                observed: observed_leaf,
                chain_pem: data[TLS_CRT].0.clone(),
                key_pem: Sensitive::new(data[TLS_KEY].0.clone()),
                reissued: false,
            },
            (decision, _) => {
                let mut reason = match decision {
                    Reuse::Reissue(reason) => reason,
                    Reuse::Keep => ReissueReason::Missing,
                };
                if let Some(previous) = side.previous_der()
                    && leaf_signed_by(observed_leaf, previous)
                {
                    leaf_moved = true;
                    if reason == ReissueReason::UntrustedIssuer {
                        reason = ReissueReason::CaRollover;
                    }
                }
                let leaf = side.signing().issue(request, now)?;
                issued.push(Issuance {
                    name: request.name.clone(),
                    secret_name: request.secret_name.clone(),
                    reason,
                });
                LeafOutcome {
                    request,
                    observed: observed_leaf,
                    chain_pem: leaf.chain_pem.into_bytes(),
                    key_pem: Sensitive::new(leaf.key_pem.into_inner().into_bytes()),
                    reissued: true,
                }
            }
        };
        outcomes.push(outcome);
    }

    // The old CA leaves the bundle only now that every leaf is known to be under the new one.
    if let CaSide::Generated { step, .. } = &mut side {
        rollover::finish(step, leaf_moved, settings, now);
    }
    let phase = side.phase();
    let bundle = side.bundle();
    let ca = side.signing();

    let (ca_secret, ca_renewal, ca_next_step, rotate_ca_handled) = match &side {
        CaSide::Generated { request, step } => {
            let state = &step.state;
            let mut data = BTreeMap::from([
                (TLS_CRT.to_string(), bytes(&ca.chain_pem)),
                (TLS_KEY.to_string(), bytes(ca.key_pem.expose())),
                (CA_CRT.to_string(), bytes(&bundle.pem)),
            ]);
            if let Some(Some(next)) = &state.next {
                data.insert(NEXT_CRT.to_string(), bytes(&next.chain_pem));
                data.insert(NEXT_KEY.to_string(), bytes(next.key_pem.expose()));
            }
            if let Some(previous) = &state.previous {
                data.insert(PREVIOUS_CRT.to_string(), bytes(&previous.pem));
            }
            let mut secret = tls_secret(policy, &secret_name, data);
            secret.metadata.annotations = Some(state.annotations());
            (
                Some(secret),
                Some(renewal_time(ca.not_after, request.renew_before)),
                Some(rollover::next_step_at(state, request, settings, now)),
                observed.rotate_ca && step.rotation_started,
            )
        }
        // Bulwark never rotates a CA it does not own: the request is answered by doing nothing.
        CaSide::Existing(_) => (None, None, None, observed.rotate_ca),
    };
    let ca_inventory = CertificateInventory {
        name: CA_INVENTORY_NAME.to_string(),
        secret_name: secret_name.clone(),
        serial: ca.serial.clone(),
        not_after: rfc3339(ca.not_after),
        renewal_time: ca_renewal.map(rfc3339),
    };

    let mut next_renewal = ca_next_step;
    if observed.rotate_ca && !rotate_ca_handled {
        // A request that arrived mid-rollover starts the next one as soon as this one ends.
        if phase == RolloverPhase::Stable {
            next_renewal = Some(now);
        }
    }
    let mut leaf_secrets = Vec::new();
    let mut certificates = Vec::new();
    for outcome in outcomes {
        let request = outcome.request;
        let chain_der = pki::pem_certificates(&outcome.chain_pem).unwrap_or_default();
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
            (TLS_CRT.to_string(), ByteString(outcome.chain_pem.clone())),
            (
                TLS_KEY.to_string(),
                ByteString(outcome.key_pem.expose().clone()),
            ),
            (CA_CRT.to_string(), bytes(&bundle.pem)),
        ]);
        if request.pkcs12 {
            let stores = pkcs12_data(
                request,
                outcome.observed,
                outcome.reissued,
                &bundle,
                &outcome.key_pem,
                &chain_der,
            )?;
            data.extend(stores);
        }
        leaf_secrets.push(tls_secret(policy, &request.secret_name, data));
    }
    // A time already passed means "now": never ask for a requeue in the past.
    let next_renewal = next_renewal.map(|t| t.max(now));

    Ok(Some(DesiredTls {
        ca_secret,
        leaf_secrets,
        trust_bundle: trust_bundle_configmap(policy, &bundle.pem),
        ca: ca_inventory,
        certificates,
        next_renewal,
        issued,
        phase,
        rotate_ca_handled,
    }))
}

/// True when the leaf in `observed` is signed by the CA certificate `ca_der`.
fn leaf_signed_by(observed: Option<&SecretData>, ca_der: &[u8]) -> bool {
    observed
        .and_then(|d| d.get(TLS_CRT))
        .and_then(|crt| pki::pem_certificates(&crt.0))
        .and_then(|chain| chain.into_iter().next())
        .is_some_and(|der| pki::parse_certificate(&der).is_some_and(|c| pki::signed_by(&c, ca_der)))
}

/// keystore.p12, truststore.p12 and keystore.password: kept as they are while the leaf and the
/// bundle are unchanged (PKCS#12 files are salted, rewriting would change them every time).
fn pkcs12_data(
    request: &LeafRequest,
    observed: Option<&SecretData>,
    reissued: bool,
    bundle: &Bundle,
    key_pem: &Sensitive<Vec<u8>>,
    chain_der: &[Vec<u8>],
) -> Result<SecretData, TlsError> {
    let keys = [KEYSTORE_P12, TRUSTSTORE_P12, KEYSTORE_PASSWORD];
    if let Some(data) = observed {
        let same_bundle = data.get(CA_CRT).map(|b| b.0.as_slice()) == Some(bundle.pem.as_bytes());
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
    // An existing password survives re-issuance: applications may have it configured. One
    // edited into what PKCS#12 cannot encode (BMP characters below U+FFFE) cannot protect
    // stores and is replaced.
    let existing = observed
        .and_then(|d| d.get(KEYSTORE_PASSWORD))
        .and_then(|p| String::from_utf8(p.0.clone()).ok())
        .filter(|p| !p.is_empty() && p.chars().all(|c| u32::from(c) < 0xFFFE));
    let password = match existing {
        Some(p) => Sensitive::new(p),
        None => generate_password().ok_or(TlsError::Random)?,
    };
    let key_der = pki::parse_key(key_pem.expose())
        .map(|k| Sensitive::new(k.expose().serialize_der()))
        .ok_or_else(|| keystore_err("tls.key is not readable".to_string()))?;
    let keystore =
        keystore_p12(&request.name, &key_der, chain_der, &password).map_err(keystore_err)?;
    let truststore = truststore_p12(&bundle.der, &password).map_err(keystore_err)?;
    Ok(BTreeMap::from([
        (KEYSTORE_P12.to_string(), ByteString(keystore)),
        (TRUSTSTORE_P12.to_string(), ByteString(truststore)),
        (KEYSTORE_PASSWORD.to_string(), bytes(password.expose())),
    ]))
}

#[cfg(test)]
mod tests;
