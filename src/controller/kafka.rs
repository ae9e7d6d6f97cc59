//! Applies the Kafka facet: user Secrets, then either the salted credentials Secret and the
//! registration Job whose outcome `KafkaReady` follows (SCRAM), or the broker JAAS (PLAIN).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::credentials::read_existing;
use super::job::{Followed, JobOutcome, JobProgress, conflict, follow_job};
use super::rotation::{Gate, Progress, ROTATE_ALL_MARK};
use super::status::ConditionStatus;
use super::tls::{ROTATE_ANNOTATION, ROTATION_MARK};
use super::{Context, Error, rotation_mark};
use crate::api::{DeletionPolicy, ManagedObject, SecurityPolicy};
use crate::facets::job::JobSettings;
use crate::facets::kafka::{
    KafkaError, ObservedKafka, desired_kafka, desired_user_job, scram_secret_name, user_secret_name,
};
use crate::kube_io::{Applier, ApplyError, Facet};

fn outcome(
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    requeue: Option<Duration>,
) -> JobOutcome {
    super::job::outcome(Facet::Kafka, status, reason, message, requeue)
}

/// A spec or generation problem: reported, not retried until something changes.
fn invalid(e: KafkaError) -> JobOutcome {
    outcome(ConditionStatus::False, e.reason(), e.to_string(), None)
}

/// `all` says whether the rotate-all request may replace the passwords now; `progress` receives
/// whether it is done: every user rotated for it and the Job with their new credentials succeeded.
#[allow(clippy::too_many_arguments)]
pub async fn reconcile_kafka(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
    ca_bundle: Option<&str>,
    all: &Gate,
    progress: &mut Progress,
) -> Result<Option<JobOutcome>, Error> {
    let Some(kafka) = policy.spec.kafka.as_ref() else {
        return Ok(None);
    };
    if !kafka.users.is_empty() {
        *progress = Progress::Pending;
    }
    let policy_name = policy.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let users: Vec<(String, String)> = kafka
        .users
        .iter()
        .map(|u| (u.name.clone(), user_secret_name(&policy_name, u)))
        .collect();
    let existing = read_existing(
        applier,
        &secrets,
        policy,
        users.clone(),
        &scram_secret_name(&policy_name),
    )
    .await?;
    let rotate = existing.rotation_pending(&requested);
    let mut conflicts = existing.conflicts;
    if !conflicts.is_empty() {
        // Without our own passwords and credentials, a plan could only reset them: stop here.
        return Ok(Some(conflict(Facet::Kafka, &conflicts)));
    }
    let marks = existing.marks;
    let all_marks = existing.all_marks;
    let mut passwords = existing.passwords;
    // rotate-all replaces each password once: a user already rotated for the request keeps it.
    for (user, secret) in &users {
        if all.rotates(all_marks.get(secret).and_then(Option::as_ref)) {
            passwords.remove(user);
        }
    }
    let mut confirmed = all.is_done(existing.state_all_mark.as_ref());
    let observed = ObservedKafka {
        passwords,
        scram_secret: existing.state,
        rotate,
    };

    let desired = match desired_kafka(policy, &observed, ca_bundle) {
        Ok(Some(d)) => d,
        Ok(None) => return Ok(None),
        Err(e) => return Ok(Some(invalid(e))),
    };
    let mut keep = BTreeSet::new();
    let mut own = desired.user_secrets.clone();
    let mut users_rotated = true;
    for secret in &mut own {
        let name = secret.name_any();
        let mark = rotation_mark(&requested, marks.get(&name).cloned(), observed.rotate);
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATION_MARK.to_string(), mark);
        }
        let generated = users
            .iter()
            .any(|(u, s)| *s == name && desired.generated.contains(u));
        super::stamp_password_set_at(secret, generated, existing.set_at.get(&name));
        let all_mark = all.mark(all_marks.get(&name).cloned(), generated);
        users_rotated &= all.is_done(all_mark.as_ref());
        if let Some(mark) = all_mark {
            secret
                .annotations_mut()
                .insert(ROTATE_ALL_MARK.to_string(), mark);
        }
    }
    let with_state_mark = |mut secret: Secret, mark: Option<&String>| {
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATE_ALL_MARK.to_string(), mark.clone());
        }
        secret
    };
    own.extend(
        desired
            .scram_secret
            .iter()
            .map(|s| with_state_mark(s.clone(), existing.state_all_mark.as_ref())),
    );
    own.extend(desired.jaas_secret.iter().cloned());
    for secret in own {
        let name = secret.name_any();
        match applier.apply(&secrets, secret).await {
            Ok(_) => {}
            Err(ApplyError::Conflict { kind, name }) => conflicts.push(format!("{kind} {name}")),
            Err(e) => return Err(e.into()),
        }
        managed.push(ManagedObject {
            kind: "Secret".into(),
            name: name.clone(),
            facet: Facet::Kafka.label().into(),
        });
        keep.insert(name);
    }
    if !conflicts.is_empty() {
        return Ok(Some(conflict(Facet::Kafka, &conflicts)));
    }
    // A user that left the spec: its broker credential goes with the next Job; its Secret
    // follows deletionPolicy, like every Secret of a deleted policy.
    if policy.spec.deletion_policy == DeletionPolicy::Delete {
        applier.delete_stale(&secrets, Facet::Kafka, &keep).await?;
    }

    *progress = Progress::of(if desired.jaas_secret.is_some() {
        users_rotated
    } else {
        confirmed
    });
    if let Some(jaas) = &desired.jaas_secret {
        return Ok(Some(outcome(
            ConditionStatus::True,
            "JaasPublished",
            format!(
                "{} PLAIN user(s); the brokers load their JAAS from Secret {}",
                kafka.users.len(),
                jaas.name_any()
            ),
            None,
        )));
    }
    let Some(admin) = kafka.admin_secret_ref.as_ref() else {
        return Ok(Some(invalid(KafkaError::NoAdminSecretRef)));
    };
    // Only the admin Secret's existence is checked here; its content goes to the Job, never to us.
    if secrets
        .get_metadata_opt(&admin.name)
        .await
        .map_err(Error::kube("read Kafka admin Secret"))?
        .is_none()
    {
        return Ok(Some(outcome(
            ConditionStatus::False,
            "AdminSecretMissing",
            format!(
                "spec.kafka.adminSecretRef: Secret {:?} does not exist; no user Job is created",
                admin.name
            ),
            Some(Duration::from_secs(15)),
        )));
    }
    let job = match desired_user_job(policy, &desired, &JobSettings::new(ctx.job_image.clone())) {
        Ok(Some(job)) => job,
        Ok(None) => return Ok(None),
        Err(e) => return Ok(Some(invalid(e))),
    };
    match follow_job(
        policy,
        ctx,
        applier,
        ns,
        Followed {
            job,
            facet: Facet::Kafka,
            what: "user Job",
            resync: None,
        },
        managed,
    )
    .await?
    {
        JobProgress::Pending(outcome) => Ok(Some(outcome)),
        JobProgress::Complete { name, requeue } => {
            // The Job registered every user's rotated credential: record the request as done.
            if all.turn
                && users_rotated
                && !confirmed
                && let Some(scram) = desired.scram_secret.clone()
            {
                applier
                    .apply(&secrets, with_state_mark(scram, all.requested.as_ref()))
                    .await?;
                confirmed = true;
            }
            *progress = Progress::of(confirmed);
            let plan = desired.plan.as_ref();
            let removed = plan.map_or(0, |p| p.remove.len());
            let mut message = format!(
                "{} user(s) registered with the brokers by Job {name}",
                kafka.users.len()
            );
            if removed > 0 {
                message.push_str(&format!("; {removed} removed credential(s) deleted"));
            }
            Ok(Some(outcome(
                ConditionStatus::True,
                "UsersRegistered",
                message,
                requeue,
            )))
        }
    }
}
