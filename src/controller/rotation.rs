//! Emergency rotation of everything a policy produced (`bulwark.dev/rotate-all`), as an ordered
//! sequence of phases over the facets' own rotation machinery.
//!
//! One request value walks through
//!
//! 1. `CARollover`: the generated CA rolls over (the `rollover` module of the TLS facet): the new
//!    CA joins the bundle, and after the propagation delay it starts signing.
//! 2. `Leaves`: every leaf is re-issued under the new CA (the rollover does this in the step the
//!    new CA starts signing; with a CA you bring, the leaves are re-issued under it).
//! 3. `Kafka`: new passwords for every user, done once the user Job that registers them succeeded.
//! 4. `PostgreSQL`: new passwords for every role, done once the role Job that applies them
//!    succeeded.
//! 5. `JWT`: a new signing key for every entry; the previous key stays in the JWKS for its grace
//!    period.
//!
//! A phase starts only once every earlier phase is done (or absent from the policy). What was done
//! for which request lives on the produced Secrets, read fresh on every reconcile, never in memory:
//!
//! | Secret | annotation `bulwark.dev/rotated-all-for` means |
//! |---|---|
//! | generated CA | a rollover was started for this value |
//! | leaf | re-issued for this value, under the CA that signs after the rollover |
//! | Kafka user, PostgreSQL role, JWT signing key | its password or key was replaced for this value |
//! | `<policy>-kafka-scram`, `<policy>-pg-verifiers` | the Job with the replaced credentials succeeded |
//!
//! So a restart resumes where the sequence stood, a Secret rotates at most once per value, and a
//! new value starts the sequence over. The old CA leaves the bundle when the rollover's overlap
//! ends, and the previous JWT key leaves the JWKS when its grace period ends: both after
//! `Complete`, reported by `caRolloverPhase` and the JWKS.

pub mod cli;

use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Resource, ResourceExt};

use super::Context;
use super::status::{ConditionStatus, FacetReport};
use crate::api::{RotationStatus, SecurityPolicy};
use crate::kube_io::Facet;

/// Annotation on a policy whose new value rotates everything it produced, in order.
pub const ROTATE_ALL_ANNOTATION: &str = "bulwark.dev/rotate-all";
/// On produced Secrets: the `bulwark.dev/rotate-all` value they were rotated (or confirmed) for.
pub const ROTATE_ALL_MARK: &str = "bulwark.dev/rotated-all-for";

/// One step of a rotate-all request, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RotationPhase {
    CaRollover,
    Leaves,
    Kafka,
    Postgres,
    Jwt,
    /// Every phase is done.
    Complete,
}

impl RotationPhase {
    /// The phases that do work, in order.
    pub const SEQUENCE: [RotationPhase; 5] = [
        RotationPhase::CaRollover,
        RotationPhase::Leaves,
        RotationPhase::Kafka,
        RotationPhase::Postgres,
        RotationPhase::Jwt,
    ];

    /// As status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CaRollover => "CARollover",
            Self::Leaves => "Leaves",
            Self::Kafka => "Kafka",
            Self::Postgres => "PostgreSQL",
            Self::Jwt => "JWT",
            Self::Complete => "Complete",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::SEQUENCE
            .into_iter()
            .chain([Self::Complete])
            .find(|p| p.as_str() == text)
    }

    /// The facet whose condition tells how this phase fares.
    pub fn facet(self) -> Option<Facet> {
        match self {
            Self::CaRollover | Self::Leaves => Some(Facet::Tls),
            Self::Kafka => Some(Facet::Kafka),
            Self::Postgres => Some(Facet::Postgres),
            Self::Jwt => Some(Facet::Jwt),
            Self::Complete => None,
        }
    }

    fn index(self) -> usize {
        Self::SEQUENCE
            .iter()
            .position(|p| *p == self)
            .unwrap_or(Self::SEQUENCE.len())
    }
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one phase stands for the current request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// The policy has nothing this phase would rotate.
    #[default]
    Absent,
    /// Not done yet (or not started).
    Pending,
    /// Done for the current request, as the marks on the produced Secrets say.
    Done,
}

impl Progress {
    pub fn of(done: bool) -> Self {
        if done { Self::Done } else { Self::Pending }
    }

    fn passed(self) -> bool {
        self != Self::Pending
    }
}

/// What the facets found for the current request, filled in as they run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    progress: [Progress; 5],
}

impl Facts {
    pub fn set(&mut self, phase: RotationPhase, progress: Progress) {
        if let Some(slot) = self.progress.get_mut(phase.index()) {
            *slot = progress;
        }
    }

    pub fn get(&self, phase: RotationPhase) -> Progress {
        self.progress
            .get(phase.index())
            .copied()
            .unwrap_or(Progress::Absent)
    }

    /// Every phase before `phase` is done or absent: `phase` may act.
    pub fn may_start(&self, phase: RotationPhase) -> bool {
        self.progress[..phase.index().min(self.progress.len())]
            .iter()
            .all(|p| p.passed())
    }

    /// The first phase not done; `Complete` when none is left. A later phase found done (a
    /// Secret created after the request) does not let an earlier one be skipped.
    pub fn current(&self) -> RotationPhase {
        RotationPhase::SEQUENCE
            .into_iter()
            .find(|p| !self.get(*p).passed())
            .unwrap_or(RotationPhase::Complete)
    }
}

/// What a facet may do about a rotate-all request in this reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// The `bulwark.dev/rotate-all` value, if any.
    pub requested: Option<String>,
    /// Every earlier phase is done: this facet may rotate for `requested` now.
    pub turn: bool,
}

impl Gate {
    pub fn new(policy: &SecurityPolicy, facts: &Facts, phase: RotationPhase) -> Self {
        Self {
            requested: requested(policy),
            turn: facts.may_start(phase),
        }
    }

    /// Whether a Secret carrying `mark` still has to rotate, now.
    pub fn rotates(&self, mark: Option<&String>) -> bool {
        self.turn && self.requested.is_some() && mark != self.requested.as_ref()
    }

    /// The mark `mark` (None: the Secret is new) is for the current request.
    pub fn is_done(&self, mark: Option<&String>) -> bool {
        self.requested.is_some() && mark == self.requested.as_ref()
    }

    /// The mark a Secret records after this run: the request when it was rotated for it now,
    /// or when it is new (created after the request); otherwise what it already recorded.
    pub fn mark(&self, observed: Option<Option<String>>, rotated_now: bool) -> Option<String> {
        match observed {
            Some(mark) if !(rotated_now && self.turn && self.requested.is_some()) => mark,
            _ => self.requested.clone(),
        }
    }
}

/// The `bulwark.dev/rotate-all` value of the policy.
pub fn requested(policy: &SecurityPolicy) -> Option<String> {
    policy.annotations().get(ROTATE_ALL_ANNOTATION).cloned()
}

/// Why the current phase does not progress: its facet's condition, when it is False for a
/// reason other than a Job still running. None while things move, and once complete.
pub fn failure(phase: RotationPhase, reports: &[FacetReport]) -> Option<String> {
    let facet = phase.facet()?;
    reports
        .iter()
        .find(|r| r.facet == facet)
        .filter(|r| r.status == ConditionStatus::False && r.reason != "JobRunning")
        .map(|r| {
            format!(
                "{} is False ({}): {}",
                facet.condition_type(),
                r.reason,
                r.message
            )
        })
}

/// `status.rotation` after this reconcile: the progress of the current request, or the last
/// one recorded when the annotation is gone. Nothing in it changes unless the world does.
pub fn rotation_status(
    previous: Option<&RotationStatus>,
    requested: Option<&str>,
    facts: &Facts,
    reports: &[FacetReport],
) -> Option<RotationStatus> {
    let Some(requested) = requested else {
        return previous.cloned();
    };
    let phase = facts.current();
    Some(RotationStatus {
        requested: requested.to_string(),
        phase: phase.as_str().to_string(),
        failure: failure(phase, reports),
    })
}

/// The phases of a request `policy` has something to rotate in; the others are skipped.
pub fn applicable_phases(policy: &SecurityPolicy) -> Vec<RotationPhase> {
    let spec = &policy.spec;
    let tls = spec.tls.as_ref();
    let generated_ca = tls.is_some_and(|t| {
        t.ca.as_ref()
            .and_then(|c| c.existing_secret.as_ref())
            .is_none()
    });
    let mut out = Vec::new();
    if generated_ca {
        out.push(RotationPhase::CaRollover);
    }
    if tls.is_some_and(|t| !t.certificates.is_empty()) {
        out.push(RotationPhase::Leaves);
    }
    if spec.kafka.as_ref().is_some_and(|k| !k.users.is_empty()) {
        out.push(RotationPhase::Kafka);
    }
    if spec.postgres.as_ref().is_some_and(|p| !p.roles.is_empty()) {
        out.push(RotationPhase::Postgres);
    }
    if spec.jwt.as_ref().is_some_and(|j| !j.is_empty()) {
        out.push(RotationPhase::Jwt);
    }
    out
}

/// The phases finished when status moves from `from` to `to`, in order; empty when it did not
/// move forward (a new request starts over at the first phase).
pub fn finished_between(from: Option<RotationPhase>, to: RotationPhase) -> Vec<RotationPhase> {
    RotationPhase::SEQUENCE
        .into_iter()
        .filter(|p| from.is_none_or(|f| f <= *p) && *p < to)
        .collect()
}

/// One Event per phase change of a request, naming the phase and the request, nothing else.
pub async fn record_transition(
    ctx: &Context,
    policy: &SecurityPolicy,
    previous: Option<&RotationStatus>,
    next: Option<&RotationStatus>,
) {
    let Some(next) = next else { return };
    let same = previous.is_some_and(|p| p.requested == next.requested && p.phase == next.phase);
    if same {
        return;
    }
    let note = if next.phase == RotationPhase::Complete.as_str() {
        format!("rotate-all {:?}: every phase is done", next.requested)
    } else {
        format!("rotate-all {:?}: phase {}", next.requested, next.phase)
    };
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "RotationPhase".into(),
        note: Some(note),
        action: "Rotate".into(),
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

#[cfg(test)]
mod tests {
    use super::RotationPhase::*;
    use super::*;

    fn facts(progress: [Progress; 5]) -> Facts {
        let mut f = Facts::default();
        for (phase, p) in RotationPhase::SEQUENCE.into_iter().zip(progress) {
            f.set(phase, p);
        }
        f
    }

    use Progress::{Absent as A, Done as D, Pending as P};

    #[test]
    fn phases_run_in_order_and_wait_for_every_earlier_one() {
        let mut f = facts([P, P, P, P, P]);
        assert_eq!(f.current(), CaRollover);
        assert!(f.may_start(CaRollover));
        for later in [Leaves, Kafka, Postgres, Jwt] {
            assert!(!f.may_start(later), "{later} must wait for the CA rollover");
        }
        f.set(CaRollover, D);
        assert_eq!(f.current(), Leaves);
        assert!(f.may_start(Leaves) && !f.may_start(Kafka));
        f.set(Leaves, D);
        assert_eq!(f.current(), Kafka);
        assert!(f.may_start(Kafka) && !f.may_start(Postgres));
        f.set(Kafka, D);
        assert_eq!(f.current(), Postgres);
        assert!(!f.may_start(Jwt));
        f.set(Postgres, D);
        assert_eq!(f.current(), Jwt);
        assert!(f.may_start(Jwt));
        f.set(Jwt, D);
        assert_eq!(f.current(), Complete);
    }

    #[test]
    fn a_later_phase_found_done_does_not_skip_an_earlier_one() {
        // A JWT key created after the request counts as rotated, but Kafka still runs first.
        let f = facts([D, D, P, P, D]);
        assert_eq!(f.current(), Kafka);
        assert!(!f.may_start(Postgres));
        assert!(!f.may_start(Jwt));
    }

    #[test]
    fn absent_facets_are_skipped() {
        let f = facts([A, D, A, P, D]);
        assert_eq!(f.current(), Postgres);
        assert!(f.may_start(Postgres));
        assert_eq!(facts([A; 5]).current(), Complete);
    }

    #[test]
    fn a_secret_rotates_once_per_request_value() {
        let gate = Gate {
            requested: Some("incident-1".into()),
            turn: true,
        };
        assert!(gate.rotates(None), "a Secret never rotated for any request");
        assert!(
            gate.rotates(Some(&"incident-0".to_string())),
            "an older request"
        );
        assert!(
            !gate.rotates(Some(&"incident-1".to_string())),
            "already done"
        );
        assert!(gate.is_done(Some(&"incident-1".to_string())));
        assert!(!gate.is_done(Some(&"incident-0".to_string())));
        let waiting = Gate {
            turn: false,
            ..gate.clone()
        };
        assert!(
            !waiting.rotates(None),
            "not before the earlier phases are done"
        );
        assert!(!Gate::default().rotates(None), "nothing without a request");
        assert!(!Gate::default().is_done(None));
    }

    #[test]
    fn marks_record_the_request_only_when_acted_upon_or_new() {
        let gate = Gate {
            requested: Some("b".into()),
            turn: true,
        };
        assert_eq!(gate.mark(Some(Some("a".into())), false), Some("a".into()));
        assert_eq!(gate.mark(Some(Some("a".into())), true), Some("b".into()));
        assert_eq!(gate.mark(Some(None), false), None);
        assert_eq!(gate.mark(None, false), Some("b".into()), "a new Secret");
        let waiting = Gate {
            turn: false,
            ..gate.clone()
        };
        assert_eq!(
            waiting.mark(Some(Some("a".into())), true),
            Some("a".into()),
            "rotated for another reason before its turn: not this request's rotation"
        );
        let none = Gate::default();
        assert_eq!(none.mark(Some(Some("a".into())), true), Some("a".into()));
        assert_eq!(none.mark(None, true), None);
    }

    fn report(facet: Facet, status: ConditionStatus, reason: &str) -> FacetReport {
        FacetReport {
            facet,
            status,
            reason: reason.into(),
            message: "details".into(),
        }
    }

    #[test]
    fn status_names_the_phase_and_a_failure_of_its_facet_only() {
        let reports = vec![
            report(Facet::Tls, ConditionStatus::True, "Issued"),
            report(Facet::Kafka, ConditionStatus::False, "AdminLoginFailed"),
            report(Facet::Postgres, ConditionStatus::False, "JobRunning"),
        ];
        let at_kafka = rotation_status(None, Some("x"), &facts([D, D, P, P, P]), &reports).unwrap();
        assert_eq!(at_kafka.requested, "x");
        assert_eq!(at_kafka.phase, "Kafka");
        assert_eq!(
            at_kafka.failure.as_deref(),
            Some("KafkaReady is False (AdminLoginFailed): details")
        );
        let at_pg = rotation_status(None, Some("x"), &facts([D, D, D, P, P]), &reports).unwrap();
        assert_eq!(at_pg.phase, "PostgreSQL");
        assert_eq!(
            at_pg.failure, None,
            "a running Job is progress, not failure"
        );
        let done = rotation_status(None, Some("x"), &facts([D, D, D, D, D]), &reports).unwrap();
        assert_eq!(done.phase, "Complete");
        assert_eq!(done.failure, None);
        // Same world, same status: nothing that changes from one reconcile to the next.
        assert_eq!(
            rotation_status(
                Some(&at_kafka),
                Some("x"),
                &facts([D, D, P, P, P]),
                &reports
            ),
            Some(at_kafka.clone())
        );
        // Annotation removed: the last request stays on record.
        assert_eq!(
            rotation_status(Some(&done), None, &Facts::default(), &[]),
            Some(done.clone())
        );
        assert_eq!(rotation_status(None, None, &Facts::default(), &[]), None);
    }

    #[test]
    fn a_new_value_starts_over_at_the_first_phase() {
        // Marks of the previous value do not count for the new one: every facet is pending.
        let previous = RotationStatus {
            requested: "one".into(),
            phase: "Complete".into(),
            failure: None,
        };
        let next =
            rotation_status(Some(&previous), Some("two"), &facts([P, P, P, P, P]), &[]).unwrap();
        assert_eq!(
            (next.requested.as_str(), next.phase.as_str()),
            ("two", "CARollover")
        );
    }

    #[test]
    fn finished_phases_between_two_observations() {
        assert_eq!(finished_between(None, Kafka), vec![CaRollover, Leaves]);
        assert_eq!(
            finished_between(Some(Leaves), Postgres),
            vec![Leaves, Kafka]
        );
        assert_eq!(finished_between(Some(Jwt), Complete), vec![Jwt]);
        assert!(finished_between(Some(Kafka), Kafka).is_empty());
        assert!(finished_between(Some(Complete), Complete).is_empty());
        assert!(finished_between(Some(Kafka), CaRollover).is_empty());
    }

    #[test]
    fn phase_names_round_trip() {
        for p in RotationPhase::SEQUENCE.into_iter().chain([Complete]) {
            assert_eq!(RotationPhase::parse(p.as_str()), Some(p));
        }
        assert_eq!(RotationPhase::parse("Stable"), None);
    }

    #[test]
    fn applicable_phases_follow_the_policy() {
        let mut policy: SecurityPolicy = serde_yaml::from_str(include_str!(
            "../../deploy/examples/traffic-prediction.yaml"
        ))
        .unwrap();
        assert_eq!(
            applicable_phases(&policy),
            vec![CaRollover, Leaves, Kafka, Postgres, Jwt]
        );
        policy
            .spec
            .tls
            .as_mut()
            .unwrap()
            .ca
            .as_mut()
            .unwrap()
            .existing_secret = Some("my-ca".into());
        policy.spec.kafka = None;
        assert_eq!(applicable_phases(&policy), vec![Leaves, Postgres, Jwt]);
    }
}
