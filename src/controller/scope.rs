//! Which facets a reconcile rebuilds.
//!
//! When the watches show that only objects of some facets changed since the policy's last
//! reconcile (a deleted NetworkPolicy, an edited Secret), and the policy, its status and its
//! deadlines are as that reconcile left them, only those facets are rebuilt. Every other facet
//! keeps what the status says of it: its condition, its produced objects, and for TLS and JWT
//! the certificates and keys. Kafka and PostgreSQL build on the CA bundle the TLS facet hands
//! them, so they never run without it, and they run again whenever the bundle is not the one
//! they last got.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::api::{ManagedObject, SecurityPolicy, SecurityPolicyStatus};
use crate::kube_io::{Facet, Settled, hash_of, status_digest};

use super::rotation;
use super::status::{ConditionStatus, FacetReport};

/// The facets a reconcile rebuilds; the others carry over what the status says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// None: every facet.
    only: Option<BTreeSet<Facet>>,
}

impl Scope {
    pub fn everything() -> Self {
        Self { only: None }
    }

    /// The facets to rebuild for `policy` (its status as the last reconcile left it) when only
    /// objects of `changed` moved since `last` was settled; None when every facet must be.
    pub fn partial(
        policy: &SecurityPolicy,
        changed: BTreeSet<Facet>,
        last: &Settled,
    ) -> Option<Self> {
        // A rotate-all request runs the facets in order, each waiting for the ones before it.
        if rotation::requested(policy).is_some() {
            return None;
        }
        // The status must be the very one the last reconcile left: it stands in for the facets
        // not rebuilt.
        let status = policy.status.as_ref()?;
        if last.status != Some(status_digest(Some(status))) {
            return None;
        }
        let mut only = changed;
        if only.contains(&Facet::Kafka) || only.contains(&Facet::Postgres) {
            only.insert(Facet::Tls);
        }
        Some(Self { only: Some(only) })
    }

    pub fn is_partial(&self) -> bool {
        self.only.is_some()
    }

    /// The facets rebuilt, for logs; None: all.
    pub fn facets(&self) -> Option<&BTreeSet<Facet>> {
        self.only.as_ref()
    }

    pub fn runs(&self, facet: Facet) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&facet))
    }

    /// When to look again (`until`: what the facets rebuilt asked for), and since when every
    /// facet counts as looked at, for the record of this reconcile. A partial one keeps the
    /// deadlines of the facets it did not rebuild (the last record's, which covers them) and
    /// the time of the last reconcile that looked at every facet.
    pub fn times(
        &self,
        last: Option<&Settled>,
        until: Option<Instant>,
        started: Instant,
    ) -> (Option<Instant>, Instant) {
        match last {
            Some(last) if self.is_partial() => {
                let until = match (until, last.until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                (until, last.at.unwrap_or(started))
            }
            _ => (until, started),
        }
    }

    /// After the TLS facet ran: when the bundle it hands on is not the one the last reconcile
    /// handed on, the facets that build on it are rebuilt too.
    pub fn bundle_built(&mut self, bundle: Option<u64>, last: Option<u64>) {
        if let Some(only) = &mut self.only
            && bundle != last
        {
            only.extend([Facet::Kafka, Facet::Postgres]);
        }
    }

    /// For a facet not rebuilt: its report and its produced objects as `status` records them.
    pub fn carry(
        facet: Facet,
        status: &SecurityPolicyStatus,
        reports: &mut Vec<FacetReport>,
        managed: &mut Vec<ManagedObject>,
    ) {
        if let Some(c) = status
            .conditions
            .iter()
            .find(|c| c.type_ == facet.condition_type())
        {
            reports.push(FacetReport {
                facet,
                status: match c.status.as_str() {
                    "True" => ConditionStatus::True,
                    "False" => ConditionStatus::False,
                    _ => ConditionStatus::Unknown,
                },
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
        }
        managed.extend(
            status
                .managed_objects
                .iter()
                .filter(|o| o.facet == facet.label())
                .cloned(),
        );
    }
}

/// Digest of the CA bundle the TLS facet hands on.
pub fn bundle_digest(bundle: Option<&str>) -> Option<u64> {
    bundle.map(hash_of)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::HashMap;
    use std::time::Duration;

    fn reports() -> Vec<FacetReport> {
        vec![
            FacetReport {
                facet: Facet::Tls,
                status: ConditionStatus::True,
                reason: "Issued".into(),
                message: "3 certificates".into(),
            },
            FacetReport {
                facet: Facet::Network,
                status: ConditionStatus::False,
                reason: "Conflict".into(),
                message: "NetworkPolicy x already exists".into(),
            },
        ]
    }

    fn policy_with(status: SecurityPolicyStatus) -> (SecurityPolicy, Settled) {
        let mut p =
            crate::facets::test_policy("tiers: {web: {podSelector: {matchLabels: {app: web}}}}");
        let mut last = Settled::new(HashMap::new(), None, Instant::now());
        last.status = Some(status_digest(Some(&status)));
        p.status = Some(status);
        (p, last)
    }

    fn status_of(reports: &[FacetReport]) -> SecurityPolicyStatus {
        SecurityPolicyStatus {
            conditions: status::conditions(&[], reports, Some(1), Time(jiff::Timestamp::now())),
            managed_objects: vec![
                ManagedObject {
                    kind: "Secret".into(),
                    name: "web-tls".into(),
                    facet: "tls".into(),
                },
                ManagedObject {
                    kind: "NetworkPolicy".into(),
                    name: "p-default-deny".into(),
                    facet: "network".into(),
                },
            ],
            ..SecurityPolicyStatus::default()
        }
    }

    #[test]
    fn a_facet_not_rebuilt_keeps_its_condition_and_objects_exactly() {
        let reports = reports();
        let status = status_of(&reports);
        for facet in [Facet::Tls, Facet::Network] {
            let (mut carried, mut managed) = (Vec::new(), Vec::new());
            Scope::carry(facet, &status, &mut carried, &mut managed);
            assert_eq!(
                carried,
                vec![reports[usize::from(facet == Facet::Network)].clone()]
            );
            assert_eq!(managed.len(), 1);
            assert_eq!(managed[0].facet, facet.label());
        }
        // A facet the status does not report is absent: nothing carried.
        let (mut carried, mut managed) = (Vec::new(), Vec::new());
        Scope::carry(Facet::Jwt, &status, &mut carried, &mut managed);
        assert!(carried.is_empty() && managed.is_empty());
    }

    #[test]
    fn only_the_changed_facets_run_and_kafka_or_postgres_bring_tls() {
        let (p, last) = policy_with(status_of(&reports()));
        let scope = Scope::partial(&p, BTreeSet::from([Facet::Network]), &last).unwrap();
        assert!(scope.runs(Facet::Network));
        assert!(!scope.runs(Facet::Tls) && !scope.runs(Facet::Jwt));

        let mut scope = Scope::partial(&p, BTreeSet::from([Facet::Postgres]), &last).unwrap();
        assert!(scope.runs(Facet::Postgres) && scope.runs(Facet::Tls));
        assert!(!scope.runs(Facet::Kafka));
        // The same bundle: Kafka stays as it was; another one: Kafka is rebuilt too.
        scope.bundle_built(Some(1), Some(1));
        assert!(!scope.runs(Facet::Kafka));
        scope.bundle_built(Some(2), Some(1));
        assert!(scope.runs(Facet::Kafka));
    }

    #[test]
    fn a_partial_reconcile_keeps_the_last_deadline_and_the_last_complete_look() {
        let (p, mut last) = policy_with(status_of(&reports()));
        let complete = Instant::now();
        let started = complete + Duration::from_secs(60);
        let renewal = complete + Duration::from_secs(3600);
        last.at = Some(complete);
        last.until = Some(renewal);
        let partial = Scope::partial(&p, BTreeSet::from([Facet::Network]), &last).unwrap();
        // The facet rebuilt asks for nothing: the renewal of a facet not rebuilt stays.
        assert_eq!(
            partial.times(Some(&last), None, started),
            (Some(renewal), complete)
        );
        // It asks for an earlier look: that one.
        let recheck = started + Duration::from_secs(15);
        assert_eq!(
            partial.times(Some(&last), Some(recheck), started),
            (Some(recheck), complete)
        );
        // A complete reconcile starts afresh.
        assert_eq!(
            Scope::everything().times(Some(&last), None, started),
            (None, started)
        );
    }

    #[test]
    fn everything_runs_when_the_status_is_not_the_last_ones_or_rotate_all_is_asked() {
        let (mut p, last) = policy_with(status_of(&reports()));
        // Someone else's status, or one older than the last reconcile's.
        p.status.as_mut().unwrap().handled_rotation = Some("x".into());
        assert_eq!(
            Scope::partial(&p, BTreeSet::from([Facet::Network]), &last),
            None
        );
        let (mut p, last) = policy_with(status_of(&reports()));
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert(rotation::ROTATE_ALL_ANNOTATION.into(), "now".into());
        assert_eq!(
            Scope::partial(&p, BTreeSet::from([Facet::Network]), &last),
            None
        );
        let (mut p, last) = policy_with(status_of(&reports()));
        p.status = None;
        assert_eq!(
            Scope::partial(&p, BTreeSet::from([Facet::Network]), &last),
            None
        );
        assert!(Scope::everything().runs(Facet::Jwt));
    }
}
