//! CA rollover in phases that never break trust, as a pure step function.
//!
//! A generated CA moves through
//!
//! 1. [`RolloverPhase::Stable`]: the bundle holds the signing CA only.
//! 2. [`RolloverPhase::NewCaTrusted`]: a new CA exists and joined the bundle; the old CA still
//!    signs, every leaf stays under it. Entered at the CA's renewal time or on request
//!    (`bulwark.dev/rotate-ca`).
//! 3. [`RolloverPhase::LeavesReissued`]: once the new CA has been in the bundle for the
//!    propagation delay, it becomes the signing CA and every leaf is re-issued under it; the old
//!    CA stays in the bundle.
//! 4. Back to `Stable` once the overlap has passed since the last leaf moved: the old CA leaves
//!    the bundle.
//!
//! Each reconcile advances at most one phase, so a client that reads the bundle one step late
//! still trusts every served chain. All state lives in the CA Secret itself (nothing in memory):
//!
//! | key / annotation | phase | content |
//! |---|---|---|
//! | `tls.crt`, `tls.key` | all | the signing CA (old CA in `NewCaTrusted`, new CA after) |
//! | `next.crt`, `next.key` | `NewCaTrusted` | the incoming CA, trusted but not yet signing |
//! | `previous.crt` | `LeavesReissued` | the outgoing CA certificate (no key: it signs nothing) |
//! | `ca.crt` | all | the bundle: `previous.crt`, `tls.crt`, `next.crt`, oldest first |
//! | `bulwark.dev/ca-rollover-phase` | all | [`RolloverPhase::as_str`], informational |
//! | `bulwark.dev/ca-rollover-since` | not `Stable` | RFC 3339 time the phase was entered |
//!
//! The phase is read from which keys exist, not from the annotation; the annotation only tells
//! humans. A CA you bring (`existingSecret`) never rolls over: Bulwark does not own its key.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::pki::{self, CaRequest, CertificateAuthority};
use super::reuse::{ReissueReason, Reuse, SecretData, decide_ca, renewal_time};
use super::{TLS_CRT, TLS_KEY, TlsError};

/// Key of the CA Secret holding the outgoing CA certificate during `LeavesReissued`.
pub const PREVIOUS_CRT: &str = "previous.crt";
/// Keys of the CA Secret holding the incoming CA during `NewCaTrusted`.
pub const NEXT_CRT: &str = "next.crt";
pub const NEXT_KEY: &str = "next.key";
/// Annotation on the CA Secret: the rollover phase, for humans (the data keys decide).
pub const ANNOTATION_ROLLOVER_PHASE: &str = "bulwark.dev/ca-rollover-phase";
/// Annotation on the CA Secret: when the current non-stable phase was entered (RFC 3339).
pub const ANNOTATION_ROLLOVER_SINCE: &str = "bulwark.dev/ca-rollover-since";

/// Default minimum time the old CA stays in the bundle after the last leaf moved.
pub const DEFAULT_ROLLOVER_OVERLAP: Duration = Duration::from_secs(24 * 3600);
/// Default minimum time the new CA is in the bundle before any leaf is issued under it: the
/// kubelet takes up to a minute or two to refresh a mounted ConfigMap, clients then reload.
pub const DEFAULT_ROLLOVER_PROPAGATION: Duration = Duration::from_secs(5 * 60);

/// Where a generated CA is in its rollover; shown in status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RolloverPhase {
    /// One CA, in the bundle and signing every leaf.
    #[default]
    Stable,
    /// A new CA joined the bundle; leaves are still signed by the old CA.
    NewCaTrusted,
    /// Every leaf is signed by the new CA; the old CA is still in the bundle until the overlap
    /// has passed.
    LeavesReissued,
}

impl RolloverPhase {
    /// CamelCase, as status and events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stable => "Stable",
            Self::NewCaTrusted => "NewCATrusted",
            Self::LeavesReissued => "LeavesReissued",
        }
    }
}

impl std::fmt::Display for RolloverPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Timing of a rollover. Not in the API yet: `spec.tls.ca.rolloverOverlap` would feed `overlap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RolloverSettings {
    /// Minimum time the old CA stays in the bundle after every leaf moved (default 24h).
    pub overlap: Duration,
    /// Minimum time the new CA is in the bundle before leaves move under it (default 5m).
    pub propagation: Duration,
}

impl Default for RolloverSettings {
    fn default() -> Self {
        Self {
            overlap: DEFAULT_ROLLOVER_OVERLAP,
            propagation: DEFAULT_ROLLOVER_PROPAGATION,
        }
    }
}

/// A CA certificate kept only to be trusted (no key).
#[derive(Clone, Debug)]
pub(super) struct TrustedOnly {
    pub pem: String,
    pub der: Vec<u8>,
}

/// The generated CA's state: what its Secret holds, or will hold after this step.
#[derive(Debug)]
pub(super) struct CaState {
    pub signing: CertificateAuthority,
    /// `Some(None)`: the Secret names an incoming CA that cannot be read.
    pub next: Option<Option<CertificateAuthority>>,
    pub previous: Option<TrustedOnly>,
    pub since: Option<Timestamp>,
}

impl CaState {
    pub fn phase(&self) -> RolloverPhase {
        if self.next.is_some() {
            RolloverPhase::NewCaTrusted
        } else if self.previous.is_some() {
            RolloverPhase::LeavesReissued
        } else {
            RolloverPhase::Stable
        }
    }

    /// The PEMs clients must trust, oldest first, so the bundle's bytes do not change when the
    /// incoming CA starts signing.
    pub fn bundle_pems(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if let Some(p) = &self.previous {
            out.push(p.pem.as_str());
        }
        out.push(self.signing.chain_pem.as_str());
        if let Some(Some(n)) = &self.next {
            out.push(n.chain_pem.as_str());
        }
        out
    }

    /// The annotations of the CA Secret.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::from([(
            ANNOTATION_ROLLOVER_PHASE.to_string(),
            self.phase().as_str().to_string(),
        )]);
        if let (false, Some(since)) = (self.phase() == RolloverPhase::Stable, self.since) {
            out.insert(ANNOTATION_ROLLOVER_SINCE.to_string(), since.to_string());
        }
        out
    }
}

/// Reads the CA Secret. Err: there is no usable signing CA (missing, unreadable, not a CA,
/// expired), so a fresh CA must replace it outright.
pub(super) fn observe(
    data: Option<&SecretData>,
    annotations: Option<&BTreeMap<String, String>>,
    now: Timestamp,
) -> Result<CaState, ReissueReason> {
    // renewBefore zero: only an expired CA is refused here; renewal starts a rollover instead.
    if let Reuse::Reissue(reason) = decide_ca(data, Duration::ZERO, now) {
        return Err(reason);
    }
    let data = data.ok_or(ReissueReason::Missing)?;
    let signing = CertificateAuthority::from_pem(&data[TLS_CRT].0, &data[TLS_KEY].0)
        .map_err(|_| ReissueReason::Unreadable)?;
    let next = match (data.get(NEXT_CRT), data.get(NEXT_KEY)) {
        (None, None) => None,
        (Some(crt), Some(key)) => Some(
            CertificateAuthority::from_pem(&crt.0, &key.0)
                .ok()
                .filter(|ca| now < ca.not_after),
        ),
        _ => Some(None),
    };
    let previous = data.get(PREVIOUS_CRT).and_then(|crt| {
        let pem = String::from_utf8(crt.0.clone()).ok()?;
        let der = pki::pem_certificates(crt.0.as_slice())?
            .into_iter()
            .next()?;
        let cert = pki::parse_certificate(&der)?;
        (pki::is_ca(&cert) && now < pki::not_after(&cert)).then_some(())?;
        Some(TrustedOnly {
            pem,
            der: der.clone(),
        })
    });
    let since = annotations
        .and_then(|a| a.get(ANNOTATION_ROLLOVER_SINCE))
        .and_then(|s| s.parse::<Timestamp>().ok());
    let mut state = CaState {
        signing,
        next,
        previous,
        since,
    };
    if state.phase() == RolloverPhase::Stable {
        state.since = None;
    } else if state.since.is_none_or(|s| s > now) {
        // Lost or future: restart the wait, the safe direction.
        state.since = Some(now);
    }
    Ok(state)
}

/// The CA part of one reconcile.
#[derive(Debug)]
pub(super) struct CaStep {
    pub state: CaState,
    /// A CA was generated in this step, and why.
    pub generated: Option<ReissueReason>,
    /// The phase changed in this step (at most once per step).
    pub advanced: bool,
    /// A new CA exists because of this step (a rollover started, or a fresh CA replaced a lost one).
    pub rotation_started: bool,
}

/// Advances the CA at most one phase, before the leaves are looked at. The end of
/// `LeavesReissued` depends on the leaves: see [`finish`].
pub(super) fn advance(
    request: &CaRequest,
    observed: Result<CaState, ReissueReason>,
    rotate_ca: bool,
    settings: &RolloverSettings,
    now: Timestamp,
) -> Result<CaStep, TlsError> {
    let mut state = match observed {
        Ok(state) => state,
        Err(reason) => {
            // Nothing to roll over from: the old CA cannot sign or is gone.
            return Ok(CaStep {
                state: CaState {
                    signing: CertificateAuthority::generate(request, now)?,
                    next: None,
                    previous: None,
                    since: None,
                },
                generated: Some(reason),
                advanced: false,
                rotation_started: true,
            });
        }
    };
    let step = |state: CaState, generated, advanced, rotation_started| CaStep {
        state,
        generated,
        advanced,
        rotation_started,
    };
    match state.phase() {
        RolloverPhase::Stable => {
            let due = now >= renewal_time(state.signing.not_after, request.renew_before);
            if !(due || rotate_ca) {
                return Ok(step(state, None, false, false));
            }
            state.next = Some(Some(CertificateAuthority::generate(request, now)?));
            state.since = Some(now);
            let reason = if rotate_ca {
                ReissueReason::RotationRequested
            } else {
                ReissueReason::RenewalDue
            };
            Ok(step(state, Some(reason), true, true))
        }
        RolloverPhase::NewCaTrusted => {
            let Some(Some(next)) = state.next.take() else {
                // The incoming CA was damaged: a fresh one starts its propagation wait again.
                state.next = Some(Some(CertificateAuthority::generate(request, now)?));
                state.since = Some(now);
                return Ok(step(state, Some(ReissueReason::Unreadable), false, false));
            };
            let since = state.since.unwrap_or(now);
            if now < pki::plus(since, settings.propagation) {
                state.next = Some(Some(next));
                return Ok(step(state, None, false, false));
            }
            let old = std::mem::replace(&mut state.signing, next);
            state.previous = Some(TrustedOnly {
                pem: old.chain_pem,
                der: old.cert_der,
            });
            state.since = Some(now);
            Ok(step(state, None, true, false))
        }
        RolloverPhase::LeavesReissued => Ok(step(state, None, false, false)),
    }
}

/// Ends `LeavesReissued` once no leaf had to move in this step and the overlap has passed since
/// the last one did; a leaf found under the old CA restarts the overlap.
pub(super) fn finish(
    step: &mut CaStep,
    leaf_moved: bool,
    settings: &RolloverSettings,
    now: Timestamp,
) {
    let state = &mut step.state;
    if state.phase() != RolloverPhase::LeavesReissued || step.advanced {
        return;
    }
    if leaf_moved {
        state.since = Some(now);
        return;
    }
    let since = state.since.unwrap_or(now);
    if now >= pki::plus(since, settings.overlap) {
        state.previous = None;
        state.since = None;
        step.advanced = true;
    }
}

/// When this CA next needs a reconcile by itself: its renewal in `Stable`, the end of the
/// propagation wait in `NewCaTrusted`, the end of the overlap in `LeavesReissued`.
pub(super) fn next_step_at(
    state: &CaState,
    request: &CaRequest,
    settings: &RolloverSettings,
    now: Timestamp,
) -> Timestamp {
    let since = state.since.unwrap_or(now);
    match state.phase() {
        RolloverPhase::Stable => renewal_time(state.signing.not_after, request.renew_before),
        RolloverPhase::NewCaTrusted => pki::plus(since, settings.propagation),
        RolloverPhase::LeavesReissued => pki::plus(since, settings.overlap),
    }
}
