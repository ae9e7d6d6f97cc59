//! Pure status computation: conditions that change only when the world does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::kube_io::Facet;

/// How one facet of a policy stands after a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FacetReport {
    pub facet: Facet,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

pub const READY: &str = "Ready";
/// Cross-facet consistency of the spec. A warning only: it never makes `Ready` False.
pub const CONSISTENT: &str = "Consistent";

/// The conditions for `reports`: one per facet plus `Ready`, which is True when no facet is
/// False.
///
/// `lastTransitionTime` is carried over from `previous` unless status changed, so a reconcile
/// that finds nothing new computes exactly the conditions already stored.
pub fn conditions(
    previous: &[Condition],
    reports: &[FacetReport],
    generation: Option<i64>,
    now: Time,
) -> Vec<Condition> {
    let failing: Vec<&FacetReport> = reports
        .iter()
        .filter(|r| r.status == ConditionStatus::False)
        .collect();
    let ready = if let Some(first) = failing.first() {
        (
            ConditionStatus::False,
            first.reason.clone(),
            failing
                .iter()
                .map(|r| format!("{}: {}", r.facet.condition_type(), r.message))
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else {
        (
            ConditionStatus::True,
            "Reconciled".to_string(),
            "every facet is in its declared state".to_string(),
        )
    };

    let mut out = vec![condition(
        previous, READY, ready.0, &ready.1, &ready.2, generation, &now,
    )];
    for r in reports {
        out.push(condition(
            previous,
            r.facet.condition_type(),
            r.status,
            &r.reason,
            &r.message,
            generation,
            &now,
        ));
    }
    out
}

fn condition(
    previous: &[Condition],
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status.as_str())
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The `Consistent` condition for the spec's `found` inconsistencies: True with reason
/// `Consistent` when there are none, otherwise False with the first one's reason and every
/// message. Unlike a facet condition it does not feed `Ready`: a spec that works but could be
/// safer is a warning, not an outage.
pub fn consistent_condition(
    previous: &[Condition],
    found: &[crate::controller::consistency::Inconsistency],
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match found.first() {
        None => (
            ConditionStatus::True,
            "Consistent".to_string(),
            "the sections of the spec fit together".to_string(),
        ),
        Some(first) => (
            ConditionStatus::False,
            first.reason.to_string(),
            found
                .iter()
                .map(|i| i.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    condition(
        previous, CONSISTENT, status, &reason, &message, generation, &now,
    )
}

/// Conditions whose status or reason differ from `previous`: each is worth an Event.
pub fn transitions<'a>(previous: &[Condition], current: &'a [Condition]) -> Vec<&'a Condition> {
    current
        .iter()
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: i64) -> Time {
        Time(jiff::Timestamp::from_second(secs).unwrap())
    }

    fn report(facet: Facet, status: ConditionStatus, reason: &str) -> FacetReport {
        FacetReport {
            facet,
            status,
            reason: reason.into(),
            message: format!("{reason} message"),
        }
    }

    #[test]
    fn unchanged_world_gives_identical_conditions() {
        let reports = [report(Facet::Network, ConditionStatus::True, "Applied")];
        let first = conditions(&[], &reports, Some(1), time(100));
        let second = conditions(&first, &reports, Some(1), time(200));
        assert_eq!(first, second);
        assert!(transitions(&first, &second).is_empty());
    }

    #[test]
    fn failing_facet_makes_ready_false_with_its_reason() {
        let reports = [
            report(Facet::Network, ConditionStatus::False, "Conflict"),
            report(Facet::Tls, ConditionStatus::Unknown, "NotImplemented"),
        ];
        let conds = conditions(&[], &reports, Some(2), time(100));
        assert_eq!(conds[0].type_, "Ready");
        assert_eq!(conds[0].status, "False");
        assert_eq!(conds[0].reason, "Conflict");
        assert!(
            conds[0]
                .message
                .starts_with("NetworkReady: Conflict message")
        );
        assert_eq!(conds.len(), 3);
    }

    #[test]
    fn consistent_condition_is_stable_and_names_the_first_reason() {
        use crate::controller::consistency::Inconsistency;
        let ok = consistent_condition(&[], &[], Some(1), time(100));
        assert_eq!(
            (ok.status.as_str(), ok.reason.as_str()),
            ("True", "Consistent")
        );
        let found = [
            Inconsistency {
                reason: "WeakSslMode",
                field: "spec.postgres.sslMode".into(),
                message: "spec.postgres.sslMode: require".into(),
            },
            Inconsistency {
                reason: "FrontendToData",
                field: "spec.network.flows[1]".into(),
                message: "spec.network.flows[1]: direct".into(),
            },
        ];
        let bad = consistent_condition(std::slice::from_ref(&ok), &found, Some(1), time(200));
        assert_eq!(bad.status, "False");
        assert_eq!(bad.reason, "WeakSslMode");
        assert_eq!(
            bad.message,
            "spec.postgres.sslMode: require; spec.network.flows[1]: direct"
        );
        assert_eq!(bad.last_transition_time, time(200));
        let again = consistent_condition(std::slice::from_ref(&bad), &found, Some(1), time(300));
        assert_eq!(
            again, bad,
            "an unchanged spec computes the stored condition"
        );
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let ok = [report(Facet::Network, ConditionStatus::True, "Applied")];
        let bad = [report(Facet::Network, ConditionStatus::False, "Conflict")];
        let first = conditions(&[], &ok, Some(1), time(100));
        let second = conditions(&first, &bad, Some(1), time(200));
        assert_eq!(second[1].last_transition_time, time(200));
        assert_eq!(transitions(&first, &second).len(), 2);
    }
}
