//! Applies the PostgreSQL facet: role Secrets, the verifiers Secret, and the role Job whose
//! outcome `PostgresReady` follows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::credentials::read_existing;
use super::job::{Followed, JobOutcome, JobProgress, conflict, follow_job};
use super::status::ConditionStatus;
use super::tls::{ROTATE_ANNOTATION, ROTATION_MARK};
use super::{Context, Error, rotation_mark};
use crate::api::{GoDuration, ManagedObject, SecurityPolicy};
use crate::facets::job::JobSettings;
use crate::facets::postgres::{
    ObservedPostgres, PgError, desired_postgres, desired_role_job, role_secret_name,
    verifiers_secret_name,
};
use crate::kube_io::{Applier, Facet};

pub type PgOutcome = JobOutcome;

fn outcome(
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    requeue: Option<Duration>,
) -> PgOutcome {
    super::job::outcome(Facet::Postgres, status, reason, message, requeue)
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
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let existing = read_existing(
        &secrets,
        policy,
        pg.roles
            .iter()
            .map(|r| (r.name.clone(), role_secret_name(&policy_name, r)))
            .collect(),
        &verifiers_secret_name(&policy_name),
    )
    .await?;
    let rotate = existing.rotation_pending(&requested);
    let conflicts = existing.conflicts;
    if !conflicts.is_empty() {
        // Without our own verifiers and passwords, a plan could only reset credentials: stop here.
        return Ok(Some(conflict(Facet::Postgres, &conflicts)));
    }
    let marks = existing.marks;
    let observed = ObservedPostgres {
        passwords: existing.passwords,
        verifiers_secret: existing.state,
        rotate,
    };

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

    let job = match desired_role_job(policy, &desired, &JobSettings::new(ctx.job_image.clone())) {
        Ok(job) => job,
        Err(e) => return Ok(Some(invalid(e))),
    };
    let resync = pg
        .resync_interval
        .as_deref()
        .and_then(|v| v.parse::<GoDuration>().ok())
        .map(|d| d.0);
    match follow_job(
        policy,
        ctx,
        applier,
        ns,
        Followed {
            job,
            facet: Facet::Postgres,
            what: "role Job",
            resync,
        },
        managed,
    )
    .await?
    {
        JobProgress::Pending(outcome) => Ok(Some(outcome)),
        JobProgress::Complete { name, requeue } => Ok(Some(outcome(
            ConditionStatus::True,
            "RolesApplied",
            format!("{} role(s) applied by Job {name}", pg.roles.len()),
            requeue,
        ))),
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
