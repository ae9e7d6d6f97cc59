//! Whether what exists can stay: the rule behind "nothing rotates by surprise".

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;

use super::pki::{self, KeyKind, LeafRequest};
use super::{TLS_CRT, TLS_KEY};

/// Data of a Secret as read from the cluster.
pub type SecretData = BTreeMap<String, ByteString>;

/// Keep what exists, or replace it with a fresh key and certificate, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reuse {
    Keep,
    Reissue(ReissueReason),
}

/// Why a certificate is (re-)issued; recorded in events, never silent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReissueReason {
    /// No Secret, or it lacks tls.crt / tls.key.
    Missing,
    /// tls.crt or tls.key cannot be parsed.
    Unreadable,
    /// tls.key is not the key of tls.crt.
    KeyMismatch,
    /// The certificate is not signed by a CA clients trust now.
    UntrustedIssuer,
    /// The CA certificate is not a CA.
    NotCa,
    /// The generated CA's certificate does not verify with its own key, or cannot issue.
    UnusableCa,
    SubjectChanged,
    SansChanged,
    UsagesChanged,
    KeyAlgorithmChanged,
    /// Renewal time (notAfter - renewBefore) has come.
    RenewalDue,
    /// A user asked for it (annotation `bulwark.dev/rotate`, or `bulwark.dev/rotate-ca` for
    /// the CA).
    RotationRequested,
    /// The leaf moves under the new CA of a rollover.
    CaRollover,
}

impl ReissueReason {
    /// CamelCase reason, as Kubernetes events and conditions spell them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "Missing",
            Self::Unreadable => "Unreadable",
            Self::KeyMismatch => "KeyMismatch",
            Self::UntrustedIssuer => "UntrustedIssuer",
            Self::NotCa => "NotCA",
            Self::UnusableCa => "UnusableCA",
            Self::SubjectChanged => "SubjectChanged",
            Self::SansChanged => "SANsChanged",
            Self::UsagesChanged => "UsagesChanged",
            Self::KeyAlgorithmChanged => "KeyAlgorithmChanged",
            Self::RenewalDue => "RenewalDue",
            Self::RotationRequested => "RotationRequested",
            Self::CaRollover => "CARollover",
        }
    }
}

/// When a certificate expiring at `not_after` is renewed.
pub fn renewal_time(not_after: Timestamp, renew_before: Duration) -> Timestamp {
    pki::minus(not_after, renew_before)
}

/// Whether the leaf in `observed` can stay: it chains to one of `trusted` (DER), matches
/// `request` (subject, SANs, usages, key algorithm), its key matches it, and `now` is before
/// its renewal time.
pub fn decide_leaf(
    request: &LeafRequest,
    observed: Option<&SecretData>,
    trusted: &[Vec<u8>],
    now: Timestamp,
) -> Reuse {
    use ReissueReason::*;
    with_matching_pair(observed, |cert| {
        if !trusted.iter().any(|ca| pki::signed_by(cert, ca)) {
            return Reuse::Reissue(UntrustedIssuer);
        }
        if KeyKind::of_certificate(cert) != Some(request.key) {
            return Reuse::Reissue(KeyAlgorithmChanged);
        }
        if pki::common_name(cert).as_deref() != Some(request.common_name.as_str()) {
            return Reuse::Reissue(SubjectChanged);
        }
        let (dns, ips) = pki::subject_alt_names(cert);
        if dns != request.dns_names || ips != request.ip_addresses {
            return Reuse::Reissue(SansChanged);
        }
        if pki::usages(cert) != request.usages {
            return Reuse::Reissue(UsagesChanged);
        }
        if now >= renewal_time(pki::not_after(cert), request.renew_before) {
            return Reuse::Reissue(RenewalDue);
        }
        Reuse::Keep
    })
}

/// Whether the generated CA in `observed` can stay: readable, a CA, its key matches, and
/// `now` is before its renewal time. Spec edits (common name, algorithm) do not replace a CA:
/// that would break every client's trust at once.
pub fn decide_ca(observed: Option<&SecretData>, renew_before: Duration, now: Timestamp) -> Reuse {
    use ReissueReason::*;
    let decision = with_matching_pair(observed, |cert| {
        if !pki::is_ca(cert) {
            return Reuse::Reissue(NotCa);
        }
        if !pki::self_signed(cert) {
            return Reuse::Reissue(UnusableCa);
        }
        if now >= renewal_time(pki::not_after(cert), renew_before) {
            return Reuse::Reissue(RenewalDue);
        }
        Reuse::Keep
    });
    let issues = || {
        let data = observed?;
        pki::CertificateAuthority::from_pem(&data.get(TLS_CRT)?.0, &data.get(TLS_KEY)?.0).ok()
    };
    if decision == Reuse::Keep && issues().is_none() {
        return Reuse::Reissue(UnusableCa);
    }
    decision
}

/// Reads `tls.crt` and `tls.key`; hands the first certificate to `check` only when both parse
/// and the key belongs to it.
fn with_matching_pair(
    observed: Option<&SecretData>,
    check: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> Reuse,
) -> Reuse {
    use ReissueReason::*;
    let Some((crt, key)) = observed.and_then(|d| Some((d.get(TLS_CRT)?, d.get(TLS_KEY)?))) else {
        return Reuse::Reissue(Missing);
    };
    let Some(chain) = pki::pem_certificates(&crt.0) else {
        return Reuse::Reissue(Unreadable);
    };
    let Some(cert) = chain.first().and_then(|der| pki::parse_certificate(der)) else {
        return Reuse::Reissue(Unreadable);
    };
    let Some(key) = pki::parse_key(&key.0) else {
        return Reuse::Reissue(Unreadable);
    };
    if !pki::key_matches(key.expose(), &cert) {
        return Reuse::Reissue(KeyMismatch);
    }
    check(&cert)
}
