//! Applies the TLS facet: reads what exists, lets the pure builder decide, writes the difference.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};

use super::rotation::{self, Gate, Progress, ROTATE_ALL_MARK, RotationPhase};
use super::status::{ConditionStatus, FacetReport};
use super::{Context, Error, rotation_mark};
use crate::api::{CaSpec, CertificateStatus, GoDuration, ManagedObject, SecurityPolicy};
use crate::facets::tls::{
    NEXT_CRT, ObservedTls, ReissueReason, RolloverPhase, RolloverSettings, SecretData, TLS_KEY,
    TlsError, ca_secret_name, desired_tls,
};
use crate::kube_io::{Applier, ApplyError, Facet, is_produced_by};

/// Annotation whose new value re-issues every leaf once.
pub const ROTATE_ANNOTATION: &str = "bulwark.dev/rotate";
/// Annotation whose new value starts a CA rollover.
pub const ROTATE_CA_ANNOTATION: &str = "bulwark.dev/rotate-ca";
/// On each leaf Secret: the `bulwark.dev/rotate` value it was issued for.
pub(crate) const ROTATION_MARK: &str = "bulwark.dev/rotated-for";
/// On the CA Secret: the `bulwark.dev/rotate-ca` value a rollover was started for.
const ROTATE_CA_MARK: &str = "bulwark.dev/ca-rotated-for";

/// What the TLS facet reports back to the reconciler.
pub struct TlsOutcome {
    pub report: FacetReport,
    pub certificates: Vec<CertificateStatus>,
    pub next_renewal: Option<jiff::Timestamp>,
    /// Something outside our watches (a foreign object, a missing input) must be looked at again.
    pub recheck: bool,
    /// The rotate annotation value this run acted upon.
    pub handled_rotation: Option<String>,
    /// The rotate-ca annotation value this run acted upon.
    pub handled_ca_rotation: Option<String>,
    pub phase: Option<String>,
    /// The trust bundle as published: what the other facets hand to their clients.
    pub bundle: Option<String>,
    /// Where the `CARollover` and `Leaves` phases of a rotate-all request stand.
    pub rotate_all: (Progress, Progress),
}

fn report(status: ConditionStatus, reason: &str, message: String) -> FacetReport {
    FacetReport {
        facet: Facet::Tls,
        status,
        reason: reason.into(),
        message,
    }
}

pub async fn reconcile_tls(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
) -> Result<Option<TlsOutcome>, Error> {
    let Some(tls) = policy.spec.tls.as_ref() else {
        return Ok(None);
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let mut conflicts = Vec::new();

    // Only objects this policy produced count as observed: a foreign Secret is neither read as ours nor written.
    let mut observed_ca: Option<SecretData> = None;
    let byo_ca = tls.ca.as_ref().and_then(|c| c.existing_secret.clone());
    let mut ca_annotations: Option<BTreeMap<String, String>> = None;
    let ca_name = byo_ca.clone().or_else(|| ca_secret_name(policy));
    // The CA and every leaf are read side by side: a repair waits for one round trip, not five.
    let ca_read = async {
        match &ca_name {
            Some(name) => applier
                .read(&secrets, name)
                .await
                .map_err(Error::kube("read CA Secret")),
            None => Ok(None),
        }
    };
    let leaf_reads = futures::future::try_join_all(tls.certificates.iter().map(|cert| async {
        applier
            .read(&secrets, &cert.secret_name)
            .await
            .map_err(Error::kube("read certificate Secret"))
    }));
    let (ca_secret, leaf_secrets) = futures::future::try_join(ca_read, leaf_reads).await?;
    if let Some(name) = ca_name
        && let Some(secret) = ca_secret
    {
        if byo_ca.is_some() || is_produced_by(&secret.metadata, policy) {
            ca_annotations = secret.metadata.annotations;
            observed_ca = secret.data;
        } else {
            conflicts.push(format!("Secret {name}"));
        }
    }
    let mut observed_leaves: BTreeMap<String, SecretData> = BTreeMap::new();
    let mut leaf_marks: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut leaf_all_marks: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (cert, secret) in tls.certificates.iter().zip(leaf_secrets) {
        if let Some(secret) = secret {
            if is_produced_by(&secret.metadata, policy) {
                let mark = secret.annotations().get(ROTATION_MARK).cloned();
                leaf_marks.insert(cert.secret_name.clone(), mark);
                let all_mark = secret.annotations().get(ROTATE_ALL_MARK).cloned();
                leaf_all_marks.insert(cert.secret_name.clone(), all_mark);
                observed_leaves.insert(cert.secret_name.clone(), secret.data.unwrap_or_default());
            } else {
                conflicts.push(format!("Secret {}", cert.secret_name));
            }
        }
    }

    // Which request was acted upon is recorded on the produced Secrets themselves: they are read
    // fresh, while the policy (and its status) may come from a cache a step behind our own writes.
    let requested_rotation = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let handled = policy
        .status
        .as_ref()
        .and_then(|s| s.handled_rotation.clone());
    let rotate_leaves =
        requested_rotation.is_some() && leaf_marks.values().any(|m| *m != requested_rotation);
    let requested_ca_rotation = policy.annotations().get(ROTATE_CA_ANNOTATION).cloned();
    let handled_ca = policy
        .status
        .as_ref()
        .and_then(|s| s.handled_ca_rotation.clone());
    let ca_observed = observed_ca.is_some() && byo_ca.is_none();
    let ca_mark = ca_annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_CA_MARK).cloned());
    let rotate_ca_requested =
        ca_observed && requested_ca_rotation.is_some() && requested_ca_rotation != ca_mark;
    // rotate-all: the CA rollover is the first phase; one rollover answers both requests.
    let all = Gate::new(
        policy,
        &rotation::Facts::default(),
        RotationPhase::CaRollover,
    );
    let ca_all_mark = ca_annotations
        .as_ref()
        .and_then(|a| a.get(ROTATE_ALL_MARK).cloned());
    let rotate_ca_for_all = ca_observed && all.rotates(ca_all_mark.as_ref());
    let rotate_ca = rotate_ca_requested || rotate_ca_for_all;
    // Leaves move for rotate-all once the new CA signs (a CA you bring never rolls over). The
    // rollover moves them itself; a leaf still unmarked then (a write lost halfway) is re-issued
    // alone: without its key it cannot be kept, while its keystore password survives.
    let leaves_turn = all.requested.is_some()
        && (byo_ca.is_some()
            || (ca_observed
                && all.is_done(ca_all_mark.as_ref())
                && !observed_ca
                    .as_ref()
                    .is_some_and(|d| d.contains_key(NEXT_CRT))));
    let mut forced: Vec<String> = Vec::new();
    if leaves_turn {
        for (name, data) in observed_leaves.iter_mut() {
            if !all.is_done(leaf_all_marks.get(name).and_then(Option::as_ref)) {
                data.remove(TLS_KEY);
                forced.push(name.clone());
            }
        }
    }
    let rollover = match rollover_settings(tls.ca.as_ref()) {
        Ok(settings) => settings,
        Err(e) => return Ok(Some(failed(e, handled, handled_ca))),
    };

    let owned_policy = policy.clone();
    let now = jiff::Timestamp::now();
    // Key generation (RSA especially) is CPU-bound: keep it off the async workers.
    let rsa = super::may_generate_rsa(policy);
    let desired = ctx
        .build_keys(rsa, move || {
            let observed = ObservedTls {
                ca: observed_ca.as_ref(),
                leaves: observed_leaves
                    .iter()
                    .map(|(k, v)| (k.clone(), v))
                    .collect(),
                rotate_leaves,
                ca_annotations: ca_annotations.as_ref(),
                rotate_ca,
                rollover,
            };
            desired_tls(&owned_policy, &observed, now)
        })
        .await;
    let Ok(desired) = desired else {
        // A panic in the certificate library on a CA's content (a certificate it parses but
        // cannot issue from) must not take the operator down: it is a condition like any other.
        return Ok(Some(TlsOutcome {
            report: report(
                ConditionStatus::False,
                "IssuanceFailed",
                "issuing under the CA failed unexpectedly: its certificate cannot be used to issue; replace the CA Secret (or annotate bulwark.dev/rotate-ca for a generated CA)".into(),
            ),
            certificates: Vec::new(),
            next_renewal: None,
            recheck: false,
            handled_rotation: handled,
            handled_ca_rotation: handled_ca,
            phase: None,
            bundle: None,
            rotate_all: (Progress::Pending, Progress::Pending),
        }));
    };

    let mut desired = match desired {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => return Ok(Some(failed(e, handled, handled_ca))),
    };
    for issued in desired.issued.iter_mut() {
        if forced.contains(&issued.secret_name) && issued.reason == ReissueReason::Missing {
            issued.reason = ReissueReason::RotationRequested;
        }
    }
    // What rotate-ca asked is answered when the rollover it started began (or the CA is new).
    let rotate_ca_handled = desired.rotate_ca_handled && rotate_ca_requested;
    let ca_all_mark = if (desired.rotate_ca_handled && rotate_ca_for_all) || !ca_observed {
        all.requested.clone()
    } else {
        ca_all_mark
    };
    // A leaf counts for rotate-all when issued under the CA that signs after the rollover.
    let leaves_may_move = all.requested.is_some()
        && (byo_ca.is_some()
            || (all.is_done(ca_all_mark.as_ref()) && desired.phase != RolloverPhase::NewCaTrusted));

    let mut writes = Vec::new();
    if let Some(mut ca) = desired.ca_secret.clone() {
        let mark = if rotate_ca_handled || !ca_observed {
            requested_ca_rotation.clone()
        } else {
            ca_mark.clone()
        };
        set_mark(&mut ca, ROTATE_CA_MARK, mark);
        set_mark(&mut ca, ROTATE_ALL_MARK, ca_all_mark.clone());
        writes.push(ca);
    }
    let mut leaves_moved = true;
    for mut leaf in desired.leaf_secrets.iter().cloned() {
        let name = leaf.name_any();
        let observed_mark = leaf_marks.get(&name).cloned();
        let mark = rotation_mark(&requested_rotation, observed_mark, rotate_leaves);
        set_mark(&mut leaf, ROTATION_MARK, mark);
        let issued_now = desired.issued.iter().any(|i| i.secret_name == name);
        let all_mark = match leaf_all_marks.get(&name).cloned() {
            Some(mark) if !(leaves_may_move && issued_now) => mark,
            None if !leaves_may_move => None,
            _ => all.requested.clone(),
        };
        leaves_moved &= all.is_done(all_mark.as_ref());
        set_mark(&mut leaf, ROTATE_ALL_MARK, all_mark);
        writes.push(leaf);
    }
    for secret in writes {
        let name = secret.name_any();
        if conflicts.iter().any(|c| c == &format!("Secret {name}")) {
            continue;
        }
        match applier.apply(&secrets, secret).await {
            Ok(_) => managed.push(managed_object("Secret", &name)),
            Err(ApplyError::Conflict { kind, name }) => conflicts.push(format!("{kind} {name}")),
            Err(e) => return Err(e.into()),
        }
    }
    let bundle_name = desired.trust_bundle.name_any();
    match applier
        .apply(&configmaps, desired.trust_bundle.clone())
        .await
    {
        Ok(_) => managed.push(managed_object("ConfigMap", &bundle_name)),
        Err(ApplyError::Conflict { kind, name }) => conflicts.push(format!("{kind} {name}")),
        Err(e) => return Err(e.into()),
    }

    // One event names every certificate this reconcile issued: a new policy's CA and leaves
    // are one record, not a series whose later notes the API server would fold away.
    if !desired.issued.is_empty() {
        let issued: Vec<String> = desired
            .issued
            .iter()
            .map(|i| {
                format!(
                    "{} (Secret {}): {}",
                    i.name,
                    i.secret_name,
                    i.reason.as_str()
                )
            })
            .collect();
        let event = KubeEvent {
            type_: EventType::Normal,
            reason: "Issued".into(),
            note: Some(truncate_note(format!(
                "issued {} certificate(s): {}",
                issued.len(),
                issued.join("; ")
            ))),
            action: "Issue".into(),
            secondary: None,
        };
        if let Err(e) = ctx
            .recorder()
            .publish(&event, &policy.object_ref(&()))
            .await
        {
            tracing::warn!(error = %e, "could not record event");
        }
    }

    let certificates = std::iter::once(&desired.ca)
        .chain(desired.certificates.iter())
        .cloned()
        .collect();
    leaves_moved &= conflicts.is_empty();
    let ca_progress = if byo_ca.is_some() {
        Progress::Absent
    } else {
        Progress::of(
            conflicts.is_empty()
                && all.is_done(ca_all_mark.as_ref())
                && (desired.phase != RolloverPhase::NewCaTrusted || leaves_moved),
        )
    };
    let leaves_progress = if desired.leaf_secrets.is_empty() {
        Progress::Absent
    } else {
        Progress::of(leaves_moved)
    };
    let report = if conflicts.is_empty() {
        report(
            ConditionStatus::True,
            "Issued",
            format!(
                "CA and {} certificate(s) valid and trusted",
                desired.certificates.len()
            ),
        )
    } else {
        report(
            ConditionStatus::False,
            "Conflict",
            format!(
                "spec.tls: {} already exist(s) without Bulwark's labels and was left untouched; rename or remove it",
                conflicts.join(", ")
            ),
        )
    };
    Ok(Some(TlsOutcome {
        recheck: !conflicts.is_empty(),
        report,
        certificates,
        next_renewal: desired.next_renewal,
        handled_rotation: if conflicts.is_empty() {
            requested_rotation
        } else {
            handled
        },
        handled_ca_rotation: if !conflicts.is_empty() {
            handled_ca
        } else if rotate_ca_handled || !ca_observed {
            requested_ca_rotation
        } else {
            ca_mark
        },
        phase: Some(desired.phase.as_str().to_string()),
        bundle: desired
            .trust_bundle
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt").cloned()),
        rotate_all: (ca_progress, leaves_progress),
    }))
}

fn failed(e: TlsError, handled: Option<String>, handled_ca: Option<String>) -> TlsOutcome {
    let recheck = matches!(
        e,
        TlsError::ExistingCaMissing { .. } | TlsError::ExistingCaInvalid { .. }
    );
    TlsOutcome {
        report: report(ConditionStatus::False, e.reason(), e.to_string()),
        certificates: Vec::new(),
        next_renewal: None,
        recheck,
        handled_rotation: handled,
        handled_ca_rotation: handled_ca,
        phase: None,
        bundle: None,
        rotate_all: (Progress::Pending, Progress::Pending),
    }
}

fn set_mark(secret: &mut Secret, key: &str, value: Option<String>) {
    if let Some(value) = value {
        secret.annotations_mut().insert(key.to_string(), value);
    }
}

/// Rollover timing from the spec. Admission parses both with CEL; a value too large for a
/// duration gets past it and is refused here, naming the field.
fn rollover_settings(ca: Option<&CaSpec>) -> Result<RolloverSettings, TlsError> {
    let mut settings = RolloverSettings::default();
    let parse = |field: &str, value: Option<&String>| {
        value
            .map(|v| v.parse::<GoDuration>())
            .transpose()
            .map_err(|source| TlsError::InvalidDuration {
                field: format!("spec.tls.ca.{field}"),
                source,
            })
    };
    if let Some(d) = parse(
        "rolloverOverlap",
        ca.and_then(|c| c.rollover_overlap.as_ref()),
    )? {
        settings.overlap = d.0;
    }
    if let Some(d) = parse(
        "rolloverPropagation",
        ca.and_then(|c| c.rollover_propagation.as_ref()),
    )? {
        settings.propagation = d.0;
    }
    Ok(settings)
}

fn managed_object(kind: &str, name: &str) -> ManagedObject {
    ManagedObject {
        kind: kind.into(),
        name: name.into(),
        facet: Facet::Tls.label().into(),
    }
}

/// An Event's note is at most 1 KiB; a long list of issued certificates is cut at a character
/// boundary and says so.
fn truncate_note(note: String) -> String {
    const MAX: usize = 1024;
    if note.len() <= MAX {
        return note;
    }
    let mut end = MAX - 4;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ...", &note[..end])
}
