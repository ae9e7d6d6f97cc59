//! Applies the PostgreSQL facet: role Secrets, the verifiers Secret, and the role Job whose
//! outcome `PostgresReady` follows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PropagationPolicy};
use kube::{Api, ResourceExt};

use super::status::{ConditionStatus, FacetReport};
use super::tls::{ROTATE_ANNOTATION, ROTATION_MARK};
use super::{Context, Error, rotation_mark};
use crate::api::{GoDuration, ManagedObject, SecurityPolicy};
use crate::facets::postgres::{
    ObservedPostgres, PgError, RoleJobSettings, desired_postgres, desired_role_job,
    role_secret_name, verifiers_secret_name,
};
use crate::facets::tls::Sensitive;
use crate::kube_io::{Applier, ApplyError, Facet, is_produced_by};

pub struct PgOutcome {
    pub report: FacetReport,
    /// When to look again: a running Job, a missing input, or the next resync.
    pub requeue: Option<Duration>,
}

fn report(status: ConditionStatus, reason: &str, message: impl Into<String>) -> FacetReport {
    FacetReport {
        facet: Facet::Postgres,
        status,
        reason: reason.into(),
        message: message.into(),
    }
}

fn outcome(
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    requeue: Option<Duration>,
) -> PgOutcome {
    PgOutcome {
        report: report(status, reason, message),
        requeue,
    }
}

/// A spec or generation problem: reported, not retried until something changes.
fn invalid(e: PgError) -> PgOutcome {
    outcome(ConditionStatus::False, e.reason(), e.to_string(), None)
}

pub async fn reconcile_postgres(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
    ca_bundle: Option<&str>,
) -> Result<Option<PgOutcome>, Error> {
    let Some(pg) = policy.spec.postgres.as_ref() else {
        return Ok(None);
    };
    let policy_name = policy.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let mut conflicts = Vec::new();
    let mut observed = ObservedPostgres::default();
    let mut marks: BTreeMap<String, Option<String>> = BTreeMap::new();

    for role in &pg.roles {
        let name = role_secret_name(&policy_name, role);
        if let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(Error::kube("read role Secret"))?
        {
            if !is_produced_by(&secret.metadata, policy) {
                conflicts.push(format!("Secret {name}"));
                continue;
            }
            marks.insert(
                name.clone(),
                secret.annotations().get(ROTATION_MARK).cloned(),
            );
            let password = secret
                .data
                .as_ref()
                .and_then(|d| d.get("password"))
                .map(|p| String::from_utf8_lossy(&p.0).into_owned());
            if let Some(password) = password {
                observed
                    .passwords
                    .insert(role.name.clone(), Sensitive::new(password));
            }
        }
    }
    let verifiers_name = verifiers_secret_name(&policy_name);
    if let Some(secret) = secrets
        .get_opt(&verifiers_name)
        .await
        .map_err(Error::kube("read verifiers Secret"))?
    {
        if is_produced_by(&secret.metadata, policy) {
            observed.verifiers_secret = secret.data;
        } else {
            conflicts.push(format!("Secret {verifiers_name}"));
        }
    }
    if !conflicts.is_empty() {
        // Without our own verifiers and passwords, a plan could only reset credentials: stop here.
        let message = format!(
            "spec.postgres: {} already exist(s) without Bulwark's labels and was left untouched; rename or remove it",
            conflicts.join(", ")
        );
        return Ok(Some(outcome(
            ConditionStatus::False,
            "Conflict",
            message,
            Some(Duration::from_secs(15)),
        )));
    }
    observed.rotate = requested.is_some() && marks.values().any(|m| *m != requested);

    let desired = match desired_postgres(policy, &observed, ca_bundle) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => return Ok(Some(invalid(e))),
    };
    for mut secret in desired.role_secrets.iter().cloned() {
        let name = secret.name_any();
        let mark = rotation_mark(&requested, marks.get(&name).cloned(), observed.rotate);
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATION_MARK.to_string(), mark);
        }
        apply_secret(applier, &secrets, secret, managed).await?;
    }
    apply_secret(applier, &secrets, desired.verifiers_secret.clone(), managed).await?;

    let Some(admin) = pg.admin_secret_ref.as_ref() else {
        return Ok(Some(invalid(PgError::NoAdminSecretRef)));
    };
    // Only the admin Secret's existence is checked here; its content goes to the Job, never to us.
    if secrets
        .get_metadata_opt(&admin.name)
        .await
        .map_err(Error::kube("read admin Secret"))?
        .is_none()
    {
        let message = format!(
            "spec.postgres.adminSecretRef: Secret {:?} does not exist; no role Job is created",
            admin.name
        );
        return Ok(Some(outcome(
            ConditionStatus::False,
            "AdminSecretMissing",
            message,
            Some(Duration::from_secs(15)),
        )));
    }

    let job = match desired_role_job(
        policy,
        &desired,
        &RoleJobSettings::new(ctx.job_image.clone()),
    ) {
        Ok(job) => job,
        Err(e) => return Ok(Some(invalid(e))),
    };
    let job_name = job.name_any();
    let live = jobs
        .get_opt(&job_name)
        .await
        .map_err(Error::kube("read role Job"))?;
    let live = match live {
        Some(live) if !is_produced_by(&live.metadata, policy) => {
            let message = format!(
                "spec.postgres: Job {job_name} already exists without Bulwark's labels and was left untouched"
            );
            return Ok(Some(outcome(
                ConditionStatus::False,
                "Conflict",
                message,
                Some(Duration::from_secs(15)),
            )));
        }
        Some(live) => live,
        None => {
            // A Job's template is immutable: it is created once per plan and never patched.
            match applier.apply(&jobs, job).await {
                Ok(_) => {}
                Err(ApplyError::Conflict { kind, name }) => {
                    let message =
                        format!("spec.postgres: {kind} {name} exists without Bulwark's labels");
                    return Ok(Some(outcome(
                        ConditionStatus::False,
                        "Conflict",
                        message,
                        Some(Duration::from_secs(15)),
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            managed.push(managed_object("Job", &job_name));
            return Ok(Some(outcome(
                ConditionStatus::False,
                "JobRunning",
                format!("role Job {job_name} created"),
                None,
            )));
        }
    };
    managed.push(managed_object("Job", &job_name));
    applier
        .delete_stale(&jobs, Facet::Postgres, &BTreeSet::from([job_name.clone()]))
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
                "role Job {job_name} failed after {failed_attempts} attempt(s): {detail}; fix the cause, then change the spec or annotate bulwark.dev/rotate to retry"
            )
        } else {
            format!(
                "role Job {job_name} attempt {failed_attempts} failed, the Job controller retries with backoff: {detail}"
            )
        };
        return Ok(Some(outcome(
            ConditionStatus::False,
            &reason,
            message,
            None,
        )));
    }
    if condition("Complete").is_none() {
        return Ok(Some(outcome(
            ConditionStatus::False,
            "JobRunning",
            format!("role Job {job_name} has not completed yet"),
            None,
        )));
    }
    let resync = pg
        .resync_interval
        .as_deref()
        .and_then(|v| v.parse::<GoDuration>().ok())
        .map(|d| d.0);
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
                Err(e) => return Err(Error::kube("delete finished role Job")(e)),
            }
            requeue = Some(Duration::from_secs(1));
        } else {
            requeue =
                Some(Duration::try_from(due.duration_since(now)).unwrap_or(Duration::from_secs(1)));
        }
    }
    Ok(Some(outcome(
        ConditionStatus::True,
        "RolesApplied",
        format!("{} role(s) applied by Job {job_name}", pg.roles.len()),
        requeue,
    )))
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
        .map_err(Error::kube("list role Job pods"))?;
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

async fn apply_secret(
    applier: &Applier<'_>,
    secrets: &Api<Secret>,
    secret: Secret,
    managed: &mut Vec<ManagedObject>,
) -> Result<(), Error> {
    let name = secret.name_any();
    applier.apply(secrets, secret).await?;
    managed.push(managed_object("Secret", &name));
    Ok(())
}

fn managed_object(kind: &str, name: &str) -> ManagedObject {
    ManagedObject {
        kind: kind.into(),
        name: name.into(),
        facet: Facet::Postgres.label().into(),
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
