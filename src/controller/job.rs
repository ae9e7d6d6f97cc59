//! Follows a provisioning Job (PostgreSQL roles, Kafka users): created once per plan, never
//! patched, its outcome turned into a facet condition, older Jobs of the facet removed, and a
//! finished Job re-run when the facet's resync interval asks for it.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use kube::{Api, ResourceExt};

use super::status::{ConditionStatus, FacetReport};
use super::{Context, Error};
use crate::api::{ManagedObject, SecurityPolicy};
use crate::kube_io::{Applier, ApplyError, Facet, is_produced_by};

/// A facet's condition and when to look again.
pub struct JobOutcome {
    pub report: FacetReport,
    /// When to look again: a missing input, a foreign object, or the next resync. A running Job
    /// needs none: its own watch events wake the policy.
    pub requeue: Option<Duration>,
}

pub fn outcome(
    facet: Facet,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    requeue: Option<Duration>,
) -> JobOutcome {
    JobOutcome {
        report: FacetReport {
            facet,
            status,
            reason: reason.into(),
            message: message.into(),
        },
        requeue,
    }
}

/// Objects of wanted names that exist without our labels: left untouched, the facet stops, and
/// the policy is looked at again, since no watch of ours sees such objects change.
pub fn conflict(facet: Facet, conflicts: &[String]) -> JobOutcome {
    outcome(
        facet,
        ConditionStatus::False,
        "Conflict",
        format!(
            "spec.{}: {} already exist(s) without Bulwark's labels and was left untouched; rename or remove it",
            facet.label(),
            conflicts.join(", ")
        ),
        Some(Duration::from_secs(15)),
    )
}

/// Where a Job stands.
pub enum JobProgress {
    /// Completed; `requeue` is the next resync, if any.
    Complete {
        name: String,
        requeue: Option<Duration>,
    },
    /// Created, running, failed or blocked: reported as is.
    Pending(JobOutcome),
}

/// A Job to follow and how to speak of it.
pub struct Followed<'a> {
    pub job: Job,
    pub facet: Facet,
    /// Names the Job in messages (`role Job`, `user Job`).
    pub what: &'a str,
    /// Re-run a finished Job this long after it completed.
    pub resync: Option<Duration>,
}

/// Creates the Job unless it exists, removes the facet's other Jobs, and reports its state.
pub async fn follow_job(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    followed: Followed<'_>,
    managed: &mut Vec<ManagedObject>,
) -> Result<JobProgress, Error> {
    let Followed {
        job,
        facet,
        what,
        resync,
    } = followed;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let job_name = job.name_any();
    let pending = |status, reason: &str, message: String, requeue| {
        Ok(JobProgress::Pending(outcome(
            facet, status, reason, message, requeue,
        )))
    };
    let live = applier
        .read(&jobs, &job_name)
        .await
        .map_err(Error::kube("read provisioning Job"))?;
    let live = match live {
        Some(live) if !is_produced_by(&live.metadata, policy) => {
            return pending(
                ConditionStatus::False,
                "Conflict",
                format!(
                    "spec.{}: Job {job_name} already exists without Bulwark's labels and was left untouched",
                    facet.label()
                ),
                Some(Duration::from_secs(15)),
            );
        }
        Some(live) => live,
        None => {
            // A Job's template is immutable: it is created once per plan and never patched.
            match applier.apply(&jobs, job).await {
                Ok(_) => {}
                Err(ApplyError::Conflict { kind, name }) => {
                    return pending(
                        ConditionStatus::False,
                        "Conflict",
                        format!(
                            "spec.{}: {kind} {name} exists without Bulwark's labels",
                            facet.label()
                        ),
                        Some(Duration::from_secs(15)),
                    );
                }
                Err(e) => return Err(e.into()),
            }
            managed.push(managed_job(facet, &job_name));
            return pending(
                ConditionStatus::False,
                "JobRunning",
                format!("{what} {job_name} created"),
                None,
            );
        }
    };
    managed.push(managed_job(facet, &job_name));
    applier
        .delete_stale(&jobs, facet, &BTreeSet::from([job_name.clone()]))
        .await?;

    let status = live.status.clone().unwrap_or_default();
    let condition = |t: &str| {
        status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t && c.status == "True")
            .cloned()
    };
    let failed_attempts = status.failed.unwrap_or(0);
    if failed_attempts > 0 && condition("Complete").is_none() {
        let given_up = condition("Failed").is_some();
        let (reason, detail) = match last_termination_message(ctx, ns, &job_name).await? {
            Some(message) => split_reason(&message),
            None => (
                "JobFailed".to_string(),
                "no termination message".to_string(),
            ),
        };
        let message = if given_up {
            format!(
                "{what} {job_name} failed after {failed_attempts} attempt(s): {detail}; fix the cause, then change the spec or annotate bulwark.dev/rotate to retry"
            )
        } else {
            format!(
                "{what} {job_name} attempt {failed_attempts} failed, the Job controller retries with backoff: {detail}"
            )
        };
        return pending(ConditionStatus::False, &reason, message, None);
    }
    if condition("Complete").is_none() {
        return pending(
            ConditionStatus::False,
            "JobRunning",
            format!("{what} {job_name} has not completed yet"),
            None,
        );
    }
    let completed = status.completion_time.map(|t| t.0);
    let mut requeue = None;
    if let (Some(every), Some(done)) = (resync, completed) {
        let due = done + jiff::SignedDuration::try_from(every).unwrap_or(jiff::SignedDuration::MAX);
        let now = jiff::Timestamp::now();
        if due <= now {
            // Same plan, same name: the finished Job goes so the next reconcile runs it again.
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match jobs.delete(&job_name, &dp).await {
                Ok(_) => ctx.metrics.record_write("Job"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(Error::kube("delete finished provisioning Job")(e)),
            }
            requeue = Some(Duration::from_secs(1));
        } else {
            requeue =
                Some(Duration::try_from(due.duration_since(now)).unwrap_or(Duration::from_secs(1)));
        }
    }
    Ok(JobProgress::Complete {
        name: job_name,
        requeue,
    })
}

/// Digest of what [`follow_job`] reads from a Job's status: its failed attempts, whether it
/// completed or gave up, and when it completed. Other status updates change nothing it decides.
pub fn outcome_digest(job: &Job) -> u64 {
    use std::hash::{Hash, Hasher};
    let status = job.status.as_ref();
    let condition = |t: &str| {
        status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    let mut h = std::hash::DefaultHasher::new();
    (
        status.and_then(|s| s.failed),
        condition("Complete"),
        condition("Failed"),
        status
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0.as_second()),
        job.metadata.deletion_timestamp.is_some(),
    )
        .hash(&mut h);
    h.finish()
}

/// The newest termination message among the Job's pods: `<Reason>: <message>` from `bulwark provision`.
async fn last_termination_message(
    ctx: &Context,
    ns: &str,
    job_name: &str,
) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job_name}")))
        .await
        .map_err(Error::kube("list provisioning Job pods"))?;
    let newest = listed
        .items
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code != 0)
        .max_by_key(|t| t.finished_at.as_ref().map(|f| f.0))
        .and_then(|t| t.message.clone());
    Ok(newest
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty()))
}

/// `AdminLoginFailed: ...` -> (AdminLoginFailed, ...); anything else keeps reason JobFailed.
fn split_reason(message: &str) -> (String, String) {
    match message.split_once(": ") {
        Some((reason, rest))
            if !reason.is_empty() && reason.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            (reason.to_string(), rest.to_string())
        }
        _ => ("JobFailed".to_string(), message.to_string()),
    }
}

fn managed_job(facet: Facet, name: &str) -> ManagedObject {
    ManagedObject {
        kind: "Job".into(),
        name: name.into(),
        facet: facet.label().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reason;

    #[test]
    fn termination_messages_give_reason_and_detail() {
        assert_eq!(
            split_reason("AdminLoginFailed: password authentication failed for user \"postgres\""),
            (
                "AdminLoginFailed".into(),
                "password authentication failed for user \"postgres\"".into()
            )
        );
        assert_eq!(split_reason("killed: OOM"), ("killed".into(), "OOM".into()));
        assert_eq!(
            split_reason("no colon here"),
            ("JobFailed".into(), "no colon here".into())
        );
        assert_eq!(
            split_reason("two words: x"),
            ("JobFailed".into(), "two words: x".into())
        );
    }
}
