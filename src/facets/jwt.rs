//! JWT facet: per `spec.jwt` entry, a signing key in a Secret and its public half in a JWKS
//! ConfigMap, rotated on schedule or on request, with a grace period for tokens already issued.
//!
//! The signing Secret is the whole state: the key, when it started signing (`rotated-at`) and
//! the keys it replaced with the time each one stopped signing (`previous-keys.json`). The same
//! Secret data and the same time always give the same objects, so a restart rotates nothing.
//!
//! RSA key generation takes tens of milliseconds: call [`desired_jwt`] from a blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;

use crate::api::{GoDuration, JwtAlgorithm, JwtKeySpec, ParseDurationError, SecurityPolicy};
use crate::facets::tls::Sensitive;
use crate::kube_io::{Facet, produced_meta};

/// PKCS#8 PEM of the signing key.
pub const PRIVATE_PEM: &str = "private.pem";
/// SPKI PEM of the signing key.
pub const PUBLIC_PEM: &str = "public.pem";
/// RFC 7638 thumbprint of the signing key: the `kid` of tokens it signs.
pub const KID: &str = "kid";
/// RFC 3339 time the signing key started signing.
pub const ROTATED_AT: &str = "rotated-at";
/// JSON list of replaced keys still in their grace period: `[{"retiredAt", "jwk"}]`, newest first.
pub const PREVIOUS_KEYS: &str = "previous-keys.json";
/// Key of the JWKS document in the ConfigMap.
pub const JWKS_JSON: &str = "jwks.json";
/// Default grace period: the refresh-token lifetime.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(168 * 3600);
/// Replaced keys kept at most, so rapid rotation requests cannot grow the JWKS without limit.
pub const MAX_PREVIOUS_KEYS: usize = 4;

const SECRET_TYPE_OPAQUE: &str = "Opaque";
const JWK_USE_SIGNATURE: &str = "sig";

pub fn jwks_config_map_name(name: &str) -> String {
    format!("{name}-jwks")
}

/// Why the JWT facet cannot produce its objects. Messages name the field, never the material.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The key library failed unexpectedly on a key's content; reported, never a crash.
    #[error(
        "building the signing keys failed unexpectedly; replace the key Secret or annotate bulwark.dev/rotate"
    )]
    BuilderFailed,
    #[error("{field}: {source}")]
    InvalidDuration {
        field: String,
        #[source]
        source: ParseDurationError,
    },
    #[error("{field}: must be at least 1h")]
    RotationTooFrequent { field: String },
    #[error("jwt key {name:?}: cannot generate a {algorithm:?} key: {source}")]
    KeyGeneration {
        name: String,
        algorithm: JwtAlgorithm,
        #[source]
        source: rcgen::Error,
    },
    #[error("jwt key {name:?}: the generated key has no usable public key")]
    PublicKey { name: String },
}

impl JwtError {
    /// Reason of the `JWTReady=False` condition this error produces.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidDuration { .. } | Self::RotationTooFrequent { .. } => "InvalidSpec",
            Self::KeyGeneration { .. } | Self::PublicKey { .. } | Self::BuilderFailed => {
                "KeyGenerationFailed"
            }
        }
    }
}

/// What exists now, by `spec.jwt[].name`. Build with `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct ObservedJwt {
    pub keys: BTreeMap<String, ObservedJwtKey>,
}

/// One entry's signing Secret and JWKS ConfigMap as read from the cluster, and whether the user
/// asked for a new key.
#[derive(Clone, Debug, Default)]
pub struct ObservedJwtKey {
    /// Data of the signing Secret; None when it does not exist.
    pub secret: Option<Sensitive<BTreeMap<String, ByteString>>>,
    /// Data of the `<name>-jwks` ConfigMap; None when it does not exist. Read only when the
    /// signing key is lost, so the keys it published keep verifying for the grace period.
    pub jwks: Option<BTreeMap<String, String>>,
    /// The user asked for a new key (annotation `bulwark.dev/rotate` carries a value this
    /// entry's Secret was not yet rotated for): this run rotates it, once.
    pub rotate: bool,
}

/// Why this run made a new signing key; one Event each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChange {
    /// No signing Secret existed.
    Created,
    /// `rotateEvery` elapsed.
    Scheduled,
    /// `bulwark.dev/rotate` asked for it.
    Requested,
    /// `algorithm` no longer matches the key.
    AlgorithmChanged,
    /// The Secret's `private.pem` could not be read as a key.
    Unusable,
}

impl KeyChange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Scheduled => "Scheduled",
            Self::Requested => "Requested",
            Self::AlgorithmChanged => "AlgorithmChanged",
            Self::Unusable => "Unusable",
        }
    }
}

/// Everything one `spec.jwt` entry wants to exist. Debug shows names and kids, never key material.
#[derive(Clone)]
pub struct DesiredJwtKey {
    pub name: String,
    /// `secretName`: private.pem, public.pem, kid, rotated-at and previous-keys.json.
    pub secret: Secret,
    /// `<name>-jwks` with jwks.json.
    pub jwks: ConfigMap,
    pub algorithm: JwtAlgorithm,
    /// kid of the signing key.
    pub kid: String,
    /// When the signing key started signing.
    pub rotated_at: Timestamp,
    /// When `rotateEvery` replaces it; None without `rotateEvery`.
    pub next_rotation: Option<Timestamp>,
    /// kids still published for verification only, newest first.
    pub previous_kids: Vec<String>,
    /// Earliest of the next rotation and the next retirement of a previous key: when to requeue.
    pub next_event: Option<Timestamp>,
    /// Why this run made a new key; None when the key is kept. Set whenever
    /// [`ObservedJwtKey::rotate`] was, so the request counts as handled.
    pub change: Option<KeyChange>,
}

impl fmt::Debug for DesiredJwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredJwtKey")
            .field("name", &self.name)
            .field("secret", &self.secret.name_any())
            .field("jwks", &self.jwks.name_any())
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .field("rotated_at", &self.rotated_at)
            .field("next_rotation", &self.next_rotation)
            .field("previous_kids", &self.previous_kids)
            .field("next_event", &self.next_event)
            .field("change", &self.change)
            .finish()
    }
}

/// Earliest [`DesiredJwtKey::next_event`] of all entries: the facet's scheduled requeue.
pub fn next_event(keys: &[DesiredJwtKey]) -> Option<Timestamp> {
    keys.iter().filter_map(|k| k.next_event).min()
}

/// A public JSON Web Key as published in jwks.json (RFC 7517, RFC 8037 for Ed25519).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default)]
    pub kid: String,
    #[serde(default)]
    pub alg: String,
    #[serde(rename = "use", default)]
    pub use_: String,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kty", &self.kty)
            .field("crv", &self.crv)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Jwk {
    /// RFC 7638 thumbprint (SHA-256, base64url); None when a required member is missing or the
    /// key type is not one Bulwark publishes.
    pub fn thumbprint(&self) -> Option<String> {
        fn safe(v: &Option<String>) -> Option<&str> {
            v.as_deref().filter(|s| is_base64url(s))
        }
        let canonical = match self.kty.as_str() {
            "EC" => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                safe(&self.crv)?,
                safe(&self.x)?,
                safe(&self.y)?
            ),
            "OKP" => format!(
                r#"{{"crv":"{}","kty":"OKP","x":"{}"}}"#,
                safe(&self.crv)?,
                safe(&self.x)?
            ),
            "RSA" => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                safe(&self.e)?,
                safe(&self.n)?
            ),
            _ => return None,
        };
        Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
    }

    /// The algorithm this key verifies, when it is a well-formed key of one Bulwark makes.
    fn algorithm(&self) -> Option<JwtAlgorithm> {
        fn len(v: &Option<String>) -> Option<usize> {
            v.as_deref()
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .map(|b| b.len())
        }
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some("P-256")) if len(&self.x) == Some(32) && len(&self.y) == Some(32) => {
                Some(JwtAlgorithm::ES256)
            }
            ("OKP", Some("Ed25519")) if len(&self.x) == Some(32) => Some(JwtAlgorithm::EdDSA),
            ("RSA", None) if len(&self.n).is_some_and(|n| n >= 256) && len(&self.e).is_some() => {
                Some(JwtAlgorithm::RS256)
            }
            _ => None,
        }
    }

    /// A key read back from our own state or a published JWKS, with kid, alg and use recomputed;
    /// None unless it is a public key Bulwark could have made.
    fn checked(mut self) -> Option<Jwk> {
        let algorithm = self.algorithm()?;
        self.kid = self.thumbprint()?;
        self.alg = alg_name(algorithm).to_string();
        self.use_ = JWK_USE_SIGNATURE.to_string();
        Some(self)
    }
}

/// `{"keys": [...]}` as in jwks.json.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct JwkSet {
    #[serde(default)]
    keys: Vec<serde_json::Value>,
}

/// A key that no longer signs and still verifies until `retired_at + gracePeriod`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetiredKey {
    retired_at: Timestamp,
    jwk: Jwk,
}

/// The JWKS `alg` of an algorithm.
pub fn alg_name(algorithm: JwtAlgorithm) -> &'static str {
    match algorithm {
        JwtAlgorithm::ES256 => "ES256",
        JwtAlgorithm::EdDSA => "EdDSA",
        JwtAlgorithm::RS256 => "RS256",
    }
}

/// The objects every `spec.jwt` entry asks for, in spec order. Empty without a jwt section.
pub fn desired_jwt(
    policy: &SecurityPolicy,
    observed: &ObservedJwt,
    now: Timestamp,
) -> Result<Vec<DesiredJwtKey>, JwtError> {
    let Some(entries) = policy.spec.jwt.as_ref() else {
        return Ok(Vec::new());
    };
    // Whole seconds: what is stored in rotated-at reads back as exactly what was decided on.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let nothing = ObservedJwtKey::default();
    entries
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let seen = observed.keys.get(&spec.name).unwrap_or(&nothing);
            desired_key(policy, index, spec, seen, now)
        })
        .collect()
}

/// A signing key together with what is published about it.
struct SigningKey {
    private_pem: Sensitive<String>,
    public_pem: String,
    algorithm: JwtAlgorithm,
    jwk: Jwk,
}

enum Current {
    Missing,
    /// The Secret exists but private.pem is not a key; public.pem may still say what it was.
    Unusable {
        public: Option<Jwk>,
    },
    Usable {
        key: SigningKey,
        rotated_at: Option<Timestamp>,
    },
}

fn desired_key(
    policy: &SecurityPolicy,
    index: usize,
    spec: &JwtKeySpec,
    seen: &ObservedJwtKey,
    now: Timestamp,
) -> Result<DesiredJwtKey, JwtError> {
    let field = |name: &str| format!("spec.jwt[{index}].{name}");
    let rotate_every = spec
        .rotate_every
        .as_deref()
        .map(|text| rotation_interval(&field("rotateEvery"), text))
        .transpose()?;
    let grace = spec
        .grace_period
        .as_deref()
        .map(|text| duration(&field("gracePeriod"), text))
        .transpose()?
        .unwrap_or(DEFAULT_GRACE_PERIOD);

    let data = seen.secret.as_ref().map(|s| s.expose());
    let mut retired = data.map(previous_keys).unwrap_or_default();
    let current = match data {
        None => Current::Missing,
        Some(data) => read_current(data),
    };

    let retire = |jwk: Jwk, retired: &mut Vec<RetiredKey>| {
        retired.push(RetiredKey {
            retired_at: now,
            jwk,
        })
    };
    let (kept, change) = match current {
        Current::Usable { key, .. } if key.algorithm != spec.algorithm => {
            retire(key.jwk, &mut retired);
            (None, Some(KeyChange::AlgorithmChanged))
        }
        Current::Usable { key, rotated_at } => {
            let rotated_at = rotated_at.unwrap_or(now);
            let due = rotate_every.is_some_and(|every| now >= plus(rotated_at, every));
            if seen.rotate || due {
                retire(key.jwk, &mut retired);
                let change = if seen.rotate {
                    KeyChange::Requested
                } else {
                    KeyChange::Scheduled
                };
                (None, Some(change))
            } else {
                (Some((key, rotated_at)), None)
            }
        }
        lost @ (Current::Missing | Current::Unusable { .. }) => {
            // The key is gone, but tokens it signed are out there: whatever was published for it
            // keeps verifying for the grace period.
            let change = match lost {
                Current::Unusable { public } => {
                    if let Some(jwk) = public {
                        retire(jwk, &mut retired);
                    }
                    KeyChange::Unusable
                }
                _ => KeyChange::Created,
            };
            for jwk in published_keys(seen.jwks.as_ref()) {
                retire(jwk, &mut retired);
            }
            (None, Some(change))
        }
    };
    let (key, rotated_at) = match kept {
        Some(kept) => kept,
        None => (generate(&spec.name, spec.algorithm)?, now),
    };

    let previous = still_verifying(retired, &key.jwk.kid, grace, now);
    let next_rotation = rotate_every.map(|every| plus(rotated_at, every));
    let next_retirement = previous.iter().map(|r| plus(r.retired_at, grace)).min();
    let next_event = [next_rotation, next_retirement].into_iter().flatten().min();

    let secret = signing_secret(policy, spec, &key, rotated_at, &previous);
    let jwks = jwks_config_map(policy, spec, &key, &previous);
    Ok(DesiredJwtKey {
        name: spec.name.clone(),
        secret,
        jwks,
        algorithm: key.algorithm,
        kid: key.jwk.kid.clone(),
        rotated_at,
        next_rotation,
        previous_kids: previous.iter().map(|r| r.jwk.kid.clone()).collect(),
        next_event,
        change,
    })
}

/// Replaced keys still inside their grace period, newest first, one per kid, at most
/// [`MAX_PREVIOUS_KEYS`].
fn still_verifying(
    mut retired: Vec<RetiredKey>,
    current_kid: &str,
    grace: Duration,
    now: Timestamp,
) -> Vec<RetiredKey> {
    retired.retain(|r| r.jwk.kid != current_kid && plus(r.retired_at, grace) > now);
    retired.sort_by(|a, b| {
        b.retired_at
            .cmp(&a.retired_at)
            .then_with(|| a.jwk.kid.cmp(&b.jwk.kid))
    });
    let mut seen = BTreeSet::new();
    retired.retain(|r| seen.insert(r.jwk.kid.clone()));
    retired.truncate(MAX_PREVIOUS_KEYS);
    retired
}

fn signing_secret(
    policy: &SecurityPolicy,
    spec: &JwtKeySpec,
    key: &SigningKey,
    rotated_at: Timestamp,
    previous: &[RetiredKey],
) -> Secret {
    let mut data = BTreeMap::new();
    let mut put = |k: &str, v: String| data.insert(k.to_string(), ByteString(v.into_bytes()));
    put(PRIVATE_PEM, key.private_pem.expose().clone());
    put(PUBLIC_PEM, key.public_pem.clone());
    put(KID, key.jwk.kid.clone());
    put(ROTATED_AT, rotated_at.to_string());
    if !previous.is_empty() {
        let json = serde_json::to_string(previous).expect("JWKs serialize");
        put(PREVIOUS_KEYS, json);
    }
    Secret {
        metadata: produced_meta(policy, spec.secret_name.clone(), Facet::Jwt),
        type_: Some(SECRET_TYPE_OPAQUE.to_string()),
        data: Some(data),
        ..Secret::default()
    }
}

fn jwks_config_map(
    policy: &SecurityPolicy,
    spec: &JwtKeySpec,
    key: &SigningKey,
    previous: &[RetiredKey],
) -> ConfigMap {
    let keys: Vec<&Jwk> = std::iter::once(&key.jwk)
        .chain(previous.iter().map(|r| &r.jwk))
        .collect();
    let json = serde_json::to_string(&serde_json::json!({ "keys": keys })).expect("JWKs serialize");
    ConfigMap {
        metadata: produced_meta(policy, jwks_config_map_name(&spec.name), Facet::Jwt),
        data: Some(BTreeMap::from([(JWKS_JSON.to_string(), json)])),
        ..ConfigMap::default()
    }
}

fn read_current(data: &BTreeMap<String, ByteString>) -> Current {
    let text = |k: &str| data.get(k).and_then(|v| std::str::from_utf8(&v.0).ok());
    // PKCS#8 only: rcgen keeps the DER it was given, and private.pem promises PKCS#8.
    let key = text(PRIVATE_PEM)
        .filter(|pem| pem.trim_start().starts_with("-----BEGIN PRIVATE KEY-----"))
        .and_then(|pem| KeyPair::from_pem(pem).ok())
        .and_then(|pair| signing_key(&pair));
    match key {
        Some(key) => Current::Usable {
            key,
            rotated_at: text(ROTATED_AT).and_then(|t| t.trim().parse().ok()),
        },
        None => Current::Unusable {
            public: text(PUBLIC_PEM)
                .and_then(|pem| rcgen::SubjectPublicKeyInfo::from_pem(pem).ok())
                .and_then(|spki| public_jwk(spki.algorithm(), spki.der_bytes()))
                .map(|(_, jwk)| jwk),
        },
    }
}

fn previous_keys(data: &BTreeMap<String, ByteString>) -> Vec<RetiredKey> {
    let Some(raw) = data.get(PREVIOUS_KEYS) else {
        return Vec::new();
    };
    let list: Vec<RetiredKey> = serde_json::from_slice(&raw.0).unwrap_or_default();
    list.into_iter()
        .filter_map(|r| {
            Some(RetiredKey {
                retired_at: r.retired_at,
                jwk: r.jwk.checked()?,
            })
        })
        .collect()
}

/// Valid public keys of a jwks.json; anything else in it is ignored.
fn published_keys(jwks: Option<&BTreeMap<String, String>>) -> Vec<Jwk> {
    let Some(set) = jwks
        .and_then(|data| data.get(JWKS_JSON))
        .and_then(|json| serde_json::from_str::<JwkSet>(json).ok())
    else {
        return Vec::new();
    };
    set.keys
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Jwk>(v).ok()?.checked())
        .collect()
}

fn generate(name: &str, algorithm: JwtAlgorithm) -> Result<SigningKey, JwtError> {
    let alg: &'static SignatureAlgorithm = match algorithm {
        JwtAlgorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        JwtAlgorithm::EdDSA => &rcgen::PKCS_ED25519,
        JwtAlgorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
    };
    let pair = KeyPair::generate_for(alg).map_err(|source| JwtError::KeyGeneration {
        name: name.to_string(),
        algorithm,
        source,
    })?;
    signing_key(&pair).ok_or_else(|| JwtError::PublicKey {
        name: name.to_string(),
    })
}

fn signing_key(pair: &KeyPair) -> Option<SigningKey> {
    let (algorithm, jwk) = public_jwk(pair.algorithm(), pair.public_key_raw())?;
    Some(SigningKey {
        private_pem: Sensitive::new(pair.serialize_pem()),
        public_pem: pair.public_key_pem(),
        algorithm,
        jwk,
    })
}

/// The JWK of a raw public key as rcgen holds it: an uncompressed point for P-256, 32 bytes for
/// Ed25519, a PKCS#1 RSAPublicKey for RSA.
fn public_jwk(alg: &SignatureAlgorithm, raw: &[u8]) -> Option<(JwtAlgorithm, Jwk)> {
    let b64 = |bytes: &[u8]| Some(URL_SAFE_NO_PAD.encode(bytes));
    let mut jwk = Jwk {
        kty: String::new(),
        crv: None,
        x: None,
        y: None,
        n: None,
        e: None,
        kid: String::new(),
        alg: String::new(),
        use_: JWK_USE_SIGNATURE.to_string(),
    };
    let algorithm = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        let point = raw.strip_prefix(&[0x04])?;
        if point.len() != 64 {
            return None;
        }
        jwk.kty = "EC".into();
        jwk.crv = Some("P-256".into());
        jwk.x = b64(&point[..32]);
        jwk.y = b64(&point[32..]);
        JwtAlgorithm::ES256
    } else if alg == &rcgen::PKCS_ED25519 {
        if raw.len() != 32 {
            return None;
        }
        jwk.kty = "OKP".into();
        jwk.crv = Some("Ed25519".into());
        jwk.x = b64(raw);
        JwtAlgorithm::EdDSA
    } else if [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_RSA_SHA384,
        &rcgen::PKCS_RSA_SHA512,
    ]
    .contains(&alg)
    {
        let (_, rsa) = RSAPublicKey::from_der(raw).ok()?;
        let unsigned = |b: &[u8]| {
            let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[start..].to_vec()
        };
        jwk.kty = "RSA".into();
        jwk.n = b64(&unsigned(rsa.modulus));
        jwk.e = b64(&unsigned(rsa.exponent));
        JwtAlgorithm::RS256
    } else {
        return None;
    };
    jwk.alg = alg_name(algorithm).to_string();
    let jwk = jwk.checked()?;
    Some((algorithm, jwk))
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn duration(field: &str, text: &str) -> Result<Duration, JwtError> {
    text.parse::<GoDuration>()
        .map(|d| d.0)
        .map_err(|source| JwtError::InvalidDuration {
            field: field.to_string(),
            source,
        })
}

/// `rotateEvery`: at least an hour, so a key signs long enough for its tokens to be verified
/// and its rotations stay rare next to the reconciles around them.
fn rotation_interval(field: &str, text: &str) -> Result<Duration, JwtError> {
    let d = duration(field, text)?;
    if d < Duration::from_secs(3600) {
        return Err(JwtError::RotationTooFrequent {
            field: field.to_string(),
        });
    }
    Ok(d)
}

fn plus(at: Timestamp, after: Duration) -> Timestamp {
    let secs = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
    at.checked_add(SignedDuration::from_secs(secs))
        .unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests;
