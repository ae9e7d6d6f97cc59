//! Applies the Kafka facet: user Secrets, then either the salted credentials Secret and the
//! registration Job whose outcome `KafkaReady` follows (SCRAM), or the broker JAAS (PLAIN).

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::credentials::read_existing;
use super::job::{Followed, JobOutcome, JobProgress, conflict, follow_job};
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

pub async fn reconcile_kafka(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
    ca_bundle: Option<&str>,
) -> Result<Option<JobOutcome>, Error> {
    let Some(kafka) = policy.spec.kafka.as_ref() else {
        return Ok(None);
    };
    let policy_name = policy.name_any();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let existing = read_existing(
        &secrets,
        policy,
        kafka
            .users
            .iter()
            .map(|u| (u.name.clone(), user_secret_name(&policy_name, u)))
            .collect(),
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
    let observed = ObservedKafka {
        passwords: existing.passwords,
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
    for secret in &mut own {
        let name = secret.name_any();
        let mark = rotation_mark(&requested, marks.get(&name).cloned(), observed.rotate);
        if let Some(mark) = mark {
            secret
                .annotations_mut()
                .insert(ROTATION_MARK.to_string(), mark);
        }
    }
    own.extend(desired.scram_secret.iter().cloned());
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
