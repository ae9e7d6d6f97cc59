//! Applies the PostgreSQL facet: role Secrets, the verifiers Secret, and the role Job whose
//! outcome `PostgresReady` follows.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::credentials::read_existing;
use super::job::{Followed, JobOutcome, JobProgress, conflict, follow_job};
use super::rotation::{Gate, Progress, ROTATE_ALL_MARK};
use super::status::ConditionStatus;
use super::tls::{ROTATE_ANNOTATION, ROTATION_MARK};
use super::{Context, Error, rotation_mark};
use crate::api::{ManagedObject, SecurityPolicy};
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

/// `all` says whether the rotate-all request may replace the passwords now; `progress` receives
/// whether it is done: every role rotated for it and the Job with their new verifiers succeeded.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile_postgres(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
    ca_bundle: Option<&str>,
    all: &Gate,
    progress: &mut Progress,
) -> Result<Option<PgOutcome>, Error> {
    let Some(pg) = policy.spec.postgres.as_ref() else {
        return Ok(None);
    };
    if !pg.roles.is_empty() {
        *progress = Progress::Pending;
    }
    let policy_name = policy.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let roles: Vec<(String, String)> = pg
        .roles
        .iter()
        .map(|r| (r.name.clone(), role_secret_name(&policy_name, r)))
        .collect();
    let existing = read_existing(
        applier,
        &secrets,
        policy,
        roles.clone(),
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
    let all_marks = existing.all_marks;
    let mut passwords = existing.passwords;
    // rotate-all replaces each password once: a role already rotated for the request keeps it.
    for (role, secret) in &roles {
        if all.rotates(all_marks.get(secret).and_then(Option::as_ref)) {
            passwords.remove(role);
        }
    }
    let state_all_mark = existing.state_all_mark;
    let mut confirmed = all.is_done(state_all_mark.as_ref());
    let observed = ObservedPostgres {
        passwords,
        verifiers_secret: existing.state,
        rotate,
    };

    let desired = match desired_postgres(policy, &observed, ca_bundle) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => return Ok(Some(invalid(e))),
    };
    let mut roles_rotated = true;
    for mut secret in desired.role_secrets.iter().cloned() {
        let name = secret.name_any();
        let mark = rotation_mark(&requested, marks.get(&name).cloned(), observed.rotate);
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATION_MARK.to_string(), mark);
        }
        let generated = roles
            .iter()
            .any(|(r, s)| *s == name && desired.generated.contains(r));
        super::stamp_password_set_at(&mut secret, generated, existing.set_at.get(&name));
        let all_mark = all.mark(all_marks.get(&name).cloned(), generated);
        roles_rotated &= all.is_done(all_mark.as_ref());
        if let Some(mark) = all_mark {
            secret
                .annotations_mut()
                .insert(ROTATE_ALL_MARK.to_string(), mark);
        }
        apply_secret(applier, &secrets, secret, managed).await?;
    }
    let verifiers_secret = |mark: Option<&String>| {
        let mut secret = desired.verifiers_secret.clone();
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATE_ALL_MARK.to_string(), mark.clone());
        }
        secret
    };
    apply_secret(
        applier,
        &secrets,
        verifiers_secret(state_all_mark.as_ref()),
        managed,
    )
    .await?;
    *progress = Progress::of(confirmed);

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
    let resync = desired.resync;
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
        JobProgress::Complete { name, requeue } => {
            // The Job applied every role's rotated verifier: record the request as done.
            if all.turn && roles_rotated && !confirmed {
                applier
                    .apply(&secrets, verifiers_secret(all.requested.as_ref()))
                    .await?;
                confirmed = true;
            }
            *progress = Progress::of(confirmed);
            Ok(Some(outcome(
                ConditionStatus::True,
                "RolesApplied",
                format!("{} role(s) applied by Job {name}", pg.roles.len()),
                requeue,
            )))
        }
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
