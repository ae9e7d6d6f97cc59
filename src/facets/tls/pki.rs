//! Keys, the CA, leaf issuance and reading certificates back: the cryptography of the facet.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, RsaKeySize, SanType, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::oid_registry::OID_SIG_ED25519;
use x509_parser::pem::Pem;
use x509_parser::prelude::{GeneralName, X509Certificate, parse_x509_certificate};
use x509_parser::public_key::PublicKey;

use super::{Sensitive, TlsError};
use crate::api::{KeyAlgorithm, PrivateKeySpec};

/// Certificates start this long before issuance, so a node with a slightly late clock accepts them.
const BACKDATE_SECS: u64 = 300;

/// A key algorithm and size Bulwark can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    Ed25519,
}

impl KeyKind {
    /// The kind a `privateKey` spec asks for; absent means ECDSA P-256.
    pub fn from_spec(spec: Option<&PrivateKeySpec>, field: &str) -> Result<Self, TlsError> {
        let Some(spec) = spec else {
            return Ok(Self::EcdsaP256);
        };
        match (spec.algorithm, spec.size) {
            (KeyAlgorithm::Ecdsa, None | Some(256)) => Ok(Self::EcdsaP256),
            (KeyAlgorithm::Ecdsa, Some(384)) => Ok(Self::EcdsaP384),
            (KeyAlgorithm::Rsa, None | Some(2048)) => Ok(Self::Rsa2048),
            (KeyAlgorithm::Rsa, Some(3072)) => Ok(Self::Rsa3072),
            (KeyAlgorithm::Rsa, Some(4096)) => Ok(Self::Rsa4096),
            (KeyAlgorithm::Ed25519, _) => Ok(Self::Ed25519),
            (algorithm, Some(size)) => Err(TlsError::UnsupportedKey {
                field: field.to_string(),
                algorithm: format!("{algorithm:?}"),
                size,
            }),
        }
    }

    /// A fresh key of this kind. RSA takes tens of milliseconds: callers run this off the async runtime.
    pub fn generate(self) -> Result<KeyPair, rcgen::Error> {
        match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            Self::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
            Self::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
            Self::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
            Self::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        }
    }

    /// The kind of the public key in `cert`, if it is one Bulwark would generate.
    pub fn of_certificate(cert: &X509Certificate<'_>) -> Option<Self> {
        let spki = cert.public_key();
        if spki.algorithm.algorithm == OID_SIG_ED25519 {
            return Some(Self::Ed25519);
        }
        match spki.parsed().ok()? {
            PublicKey::EC(point) => match point.key_size() {
                256 => Some(Self::EcdsaP256),
                384 => Some(Self::EcdsaP384),
                _ => None,
            },
            PublicKey::RSA(rsa) => match rsa.key_size() {
                2048 => Some(Self::Rsa2048),
                3072 => Some(Self::Rsa3072),
                4096 => Some(Self::Rsa4096),
                _ => None,
            },
            _ => None,
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096)
    }
}

/// Extended key usages of a leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usages {
    pub server: bool,
    pub client: bool,
}

/// The DER of every CERTIFICATE block in a PEM buffer, in order; None when any block is malformed.
pub fn pem_certificates(pem: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.ok()?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    Some(out)
}

pub fn parse_certificate(der: &[u8]) -> Option<X509Certificate<'_>> {
    parse_x509_certificate(der).ok().map(|(_, cert)| cert)
}

/// Reads a private key PEM (PKCS#8, or SEC1/PKCS#1 for a CA you bring).
pub fn parse_key(pem: &[u8]) -> Option<Sensitive<KeyPair>> {
    let text = std::str::from_utf8(pem).ok()?;
    KeyPair::from_pem(text).ok().map(Sensitive::new)
}

/// True when `key` is the private half of the public key in `cert`.
pub fn key_matches(key: &KeyPair, cert: &X509Certificate<'_>) -> bool {
    key.public_key_raw() == cert.public_key().subject_public_key.data.as_ref()
}

/// True when the certificate's signature verifies with its own key, as a CA Bulwark generates
/// always does: an edited certificate (say, another curve named in its key) does not.
pub fn self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok()
}

/// Signs a throwaway certificate under the CA `cert_der` with `key` and keeps nothing: proof that
/// the certificate library can issue under this CA. It reads some certificates it cannot issue
/// under, and panics on a few (a subject attribute it cannot encode); either way the answer is
/// no. A CA that passed is remembered, so a resync costs no signature.
pub fn can_issue(cert_der: &[u8], key: &KeyPair) -> bool {
    use sha2::{Digest, Sha256};
    use std::sync::{Mutex, OnceLock};
    static PASSED: OnceLock<Mutex<BTreeSet<[u8; 32]>>> = OnceLock::new();
    let passed = PASSED.get_or_init(Default::default);
    let fingerprint: [u8; 32] = Sha256::digest(cert_der).into();
    if passed.lock().is_ok_and(|p| p.contains(&fingerprint)) {
        return true;
    }
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let issuer = Issuer::from_ca_cert_der(&cert_der.into(), key).ok()?;
        CertificateParams::default().signed_by(key, &issuer).ok()
    }));
    let ok = matches!(attempt, Ok(Some(_)));
    if ok && let Ok(mut p) = passed.lock() {
        // Bounded: a CA per policy, and far fewer policies than this.
        if p.len() >= 100_000 {
            p.clear();
        }
        p.insert(fingerprint);
    }
    ok
}

/// True when `issuer_der` is the certificate whose key signed `cert`.
pub fn signed_by(cert: &X509Certificate<'_>, issuer_der: &[u8]) -> bool {
    let Some(issuer) = parse_certificate(issuer_der) else {
        return false;
    };
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

pub fn not_after(cert: &X509Certificate<'_>) -> Timestamp {
    timestamp(cert.validity().not_after.timestamp())
}

pub fn serial_hex(cert: &X509Certificate<'_>) -> String {
    cert.raw_serial_as_string().replace(':', "")
}

pub fn common_name(cert: &X509Certificate<'_>) -> Option<String> {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// DNS and IP subject alternative names of `cert`.
pub fn subject_alt_names(cert: &X509Certificate<'_>) -> (BTreeSet<String>, BTreeSet<IpAddr>) {
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => {
                    dns.insert(n.to_string());
                }
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ips.insert(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ips.insert(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    (dns, ips)
}

pub fn usages(cert: &X509Certificate<'_>) -> Usages {
    match cert.extended_key_usage() {
        Ok(Some(eku)) => Usages {
            server: eku.value.server_auth,
            client: eku.value.client_auth,
        },
        _ => Usages::default(),
    }
}

pub fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// `at - before`, saturating at the epoch.
pub fn minus(at: Timestamp, before: Duration) -> Timestamp {
    timestamp(at.as_second().saturating_sub(secs(before)))
}

/// `at + after`, saturating at the end of time.
pub fn plus(at: Timestamp, after: Duration) -> Timestamp {
    timestamp(at.as_second().saturating_add(secs(after)))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn timestamp(second: i64) -> Timestamp {
    Timestamp::from_second(second).unwrap_or(if second < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

fn offset(ts: Timestamp) -> Result<OffsetDateTime, TlsError> {
    OffsetDateTime::from_unix_timestamp(ts.as_second()).map_err(|_| TlsError::TimeOutOfRange)
}

fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|_| TlsError::Random)?;
    // Positive and never zero: top bit clear, lowest bit set.
    bytes[0] &= 0x7f;
    bytes[15] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A CA able to sign leaves: its certificate (with the chain above it, for a CA you bring) and key.
#[derive(Debug)]
pub struct CertificateAuthority {
    /// DER of the CA certificate itself.
    pub cert_der: Vec<u8>,
    /// PEM of the CA certificate followed by any chain above it, as stored in its Secret.
    pub chain_pem: String,
    pub key: Sensitive<KeyPair>,
    /// PEM of the key, as stored in its Secret.
    pub key_pem: Sensitive<String>,
    pub not_after: Timestamp,
    pub serial: String,
}

/// What a generated CA looks like.
#[derive(Clone, Debug, PartialEq)]
pub struct CaRequest {
    pub common_name: String,
    pub key: KeyKind,
    pub duration: Duration,
    pub renew_before: Duration,
}

impl CertificateAuthority {
    /// A new self-signed CA valid from `now` for the requested duration.
    pub fn generate(request: &CaRequest, now: Timestamp) -> Result<Self, TlsError> {
        let key = request.key.generate().map_err(TlsError::ca)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = offset(minus(now, Duration::from_secs(BACKDATE_SECS)))?;
        params.not_after = offset(plus(now, request.duration))?;
        let cert = params.self_signed(&key).map_err(TlsError::ca)?;
        let key_pem = Sensitive::new(key.serialize_pem());
        let chain_pem = cert.pem();
        Self::from_parts(cert.der().to_vec(), chain_pem, Sensitive::new(key), key_pem)
    }

    /// Reads a CA from the PEM of its Secret; `problem` explains a refusal without quoting the material.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, &'static str> {
        let chain = pem_certificates(cert_pem).ok_or("tls.crt is not valid PEM")?;
        let first = chain.first().ok_or("tls.crt holds no certificate")?.clone();
        let cert = parse_certificate(&first).ok_or("tls.crt is not an X.509 certificate")?;
        if !is_ca(&cert) {
            return Err("tls.crt is not a CA certificate (basicConstraints CA:TRUE missing)");
        }
        let key = parse_key(key_pem).ok_or("tls.key is not a readable private key")?;
        if !key_matches(key.expose(), &cert) {
            return Err("tls.key does not belong to tls.crt");
        }
        let key_text = String::from_utf8(key_pem.to_vec()).map_err(|_| "tls.key is not text")?;
        let chain_pem = String::from_utf8(cert_pem.to_vec()).map_err(|_| "tls.crt is not text")?;
        if !can_issue(&first, key.expose()) {
            return Err("tls.crt cannot be used as an issuer");
        }
        Self::from_parts(first, chain_pem, key, Sensitive::new(key_text))
            .map_err(|_| "tls.crt cannot be used as an issuer")
    }

    fn from_parts(
        cert_der: Vec<u8>,
        chain_pem: String,
        key: Sensitive<KeyPair>,
        key_pem: Sensitive<String>,
    ) -> Result<Self, TlsError> {
        let cert = parse_certificate(&cert_der)
            .ok_or_else(|| TlsError::ca(rcgen::Error::CouldNotParseCertificate))?;
        let not_after = not_after(&cert);
        let serial = serial_hex(&cert);
        Ok(Self {
            cert_der,
            chain_pem,
            key,
            key_pem,
            not_after,
            serial,
        })
    }

    /// Signs a new leaf with a fresh key of the requested kind.
    pub fn issue(&self, request: &LeafRequest, now: Timestamp) -> Result<IssuedLeaf, TlsError> {
        let issue_err = |e| TlsError::Issue {
            name: request.name.clone(),
            source: e,
        };
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), self.key.expose())
            .map_err(issue_err)?;
        let key = request.key.generate().map_err(issue_err)?;

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.common_name.as_str());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(minus(now, Duration::from_secs(BACKDATE_SECS)))?;
        params.not_after = offset(plus(now, request.duration))?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if request.key.is_rsa() {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if request.usages.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if request.usages.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for name in &request.dns_names {
            let ia5 = name.clone().try_into().map_err(issue_err)?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &request.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }

        let cert = params.signed_by(&key, &issuer).map_err(issue_err)?;
        let parsed = parse_certificate(cert.der())
            .ok_or_else(|| issue_err(rcgen::Error::CouldNotParseCertificate))?;
        let mut chain_pem = cert.pem();
        if !chain_pem.ends_with('\n') {
            chain_pem.push('\n');
        }
        chain_pem.push_str(&self.chain_pem);
        Ok(IssuedLeaf {
            chain_pem,
            key_pem: Sensitive::new(key.serialize_pem()),
            not_after: not_after(&parsed),
            serial: serial_hex(&parsed),
        })
    }
}

/// A certificate as the spec asks for it, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct LeafRequest {
    pub name: String,
    pub secret_name: String,
    pub common_name: String,
    pub dns_names: BTreeSet<String>,
    pub ip_addresses: BTreeSet<IpAddr>,
    pub usages: Usages,
    pub key: KeyKind,
    pub duration: Duration,
    pub renew_before: Duration,
    pub pkcs12: bool,
}

/// A freshly signed leaf.
#[derive(Debug)]
pub struct IssuedLeaf {
    /// Leaf PEM followed by the CA chain.
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: Sensitive<String>,
    pub not_after: Timestamp,
    pub serial: String,
}
