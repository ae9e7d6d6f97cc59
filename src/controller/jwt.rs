//! Applies the JWT facet: signing-key Secrets and their published JWKS ConfigMaps.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::{Api, Resource, ResourceExt};

use super::rotation::{Gate, Progress, ROTATE_ALL_MARK};
use super::status::{ConditionStatus, FacetReport};
use super::{Context, Error, rotation_mark};
use crate::api::{JwtKeyStatus, ManagedObject, SecurityPolicy};
use crate::facets::jwt::{
    JwtError, ObservedJwt, ObservedJwtKey, desired_jwt, jwks_config_map_name, next_event,
};
use crate::facets::tls::Sensitive;
use crate::kube_io::{Applier, ApplyError, Facet, is_produced_by};

use super::tls::{ROTATE_ANNOTATION, ROTATION_MARK};

pub struct JwtOutcome {
    pub report: FacetReport,
    pub keys: Vec<JwtKeyStatus>,
    pub next_event: Option<jiff::Timestamp>,
    pub recheck: bool,
}

fn report(status: ConditionStatus, reason: &str, message: String) -> FacetReport {
    FacetReport {
        facet: Facet::Jwt,
        status,
        reason: reason.into(),
        message,
    }
}

/// `all` says whether the rotate-all request may replace the keys now; `progress` receives
/// whether every key was rotated for it.
pub async fn reconcile_jwt(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
    all: &Gate,
    progress: &mut Progress,
) -> Result<Option<JwtOutcome>, Error> {
    let Some(entries) = policy.spec.jwt.as_ref() else {
        return Ok(None);
    };
    if !entries.is_empty() {
        *progress = Progress::Pending;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let requested = policy.annotations().get(ROTATE_ANNOTATION).cloned();
    let mut conflicts = Vec::new();
    let mut observed = ObservedJwt::default();
    let mut marks: BTreeMap<String, Option<Option<String>>> = BTreeMap::new();
    let mut all_marks: BTreeMap<String, Option<Option<String>>> = BTreeMap::new();

    for entry in entries {
        let mut key = ObservedJwtKey::default();
        let mut mark = None;
        let mut all_mark = None;
        if let Some(secret) = applier
            .read(&secrets, &entry.secret_name)
            .await
            .map_err(Error::kube("read JWT Secret"))?
        {
            if is_produced_by(&secret.metadata, policy) {
                mark = Some(secret.annotations().get(ROTATION_MARK).cloned());
                all_mark = Some(secret.annotations().get(ROTATE_ALL_MARK).cloned());
                key.secret = Some(Sensitive::new(secret.data.unwrap_or_default()));
            } else {
                conflicts.push(format!("Secret {}", entry.secret_name));
            }
        }
        let jwks_name = jwks_config_map_name(&entry.name);
        if let Some(cm) = applier
            .read(&configmaps, &jwks_name)
            .await
            .map_err(Error::kube("read JWKS ConfigMap"))?
        {
            if is_produced_by(&cm.metadata, policy) {
                key.jwks = cm.data;
            } else {
                conflicts.push(format!("ConfigMap {jwks_name}"));
            }
        }
        key.rotate = requested.is_some() && mark.as_ref().is_some_and(|m| *m != requested);
        // rotate-all replaces each existing key once.
        key.rotate |= all_mark
            .as_ref()
            .is_some_and(|m: &Option<String>| all.rotates(m.as_ref()));
        marks.insert(entry.name.clone(), mark);
        all_marks.insert(entry.name.clone(), all_mark);
        observed.keys.insert(entry.name.clone(), key);
    }

    let owned_policy = policy.clone();
    let now = jiff::Timestamp::now();
    // RSA key generation is CPU-bound: keep it off the async workers.
    let rsa = super::may_generate_rsa(policy);
    let desired = ctx
        .build_keys(rsa, move || desired_jwt(&owned_policy, &observed, now))
        .await
        .unwrap_or(Err(JwtError::BuilderFailed));
    let desired = match desired {
        Ok(d) => d,
        Err(e) => {
            return Ok(Some(JwtOutcome {
                report: report(ConditionStatus::False, e.reason(), e.to_string()),
                keys: Vec::new(),
                next_event: None,
                recheck: false,
            }));
        }
    };

    let reference = policy.object_ref(&());
    let mut keys_rotated = true;
    for key in &desired {
        let mut secret = key.secret.clone();
        let observed_mark = marks.get(&key.name).cloned().flatten();
        if let Some(mark) = rotation_mark(&requested, observed_mark, key.change.is_some()) {
            secret
                .annotations_mut()
                .insert(ROTATION_MARK.to_string(), mark);
        }
        let observed_all = all_marks.get(&key.name).cloned().flatten();
        let all_mark = all.mark(observed_all, key.change.is_some());
        keys_rotated &= all.is_done(all_mark.as_ref());
        if let Some(mark) = all_mark {
            secret
                .annotations_mut()
                .insert(ROTATE_ALL_MARK.to_string(), mark);
        }
        for result in [
            apply_named(applier, &secrets, secret, &conflicts, managed).await,
            apply_named(applier, &configmaps, key.jwks.clone(), &conflicts, managed).await,
        ] {
            if let Some(conflict) = result? {
                conflicts.push(conflict);
            }
        }
        if let Some(change) = key.change {
            let event = KubeEvent {
                type_: EventType::Normal,
                reason: "KeyRotated".into(),
                note: Some(format!(
                    "JWT key {} now signs with kid {}: {}",
                    key.name,
                    key.kid,
                    change.as_str()
                )),
                action: "Rotate".into(),
                secondary: None,
            };
            if let Err(e) = ctx.recorder().publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not record event");
            }
        }
    }

    let keys = desired
        .iter()
        .map(|k| JwtKeyStatus {
            name: k.name.clone(),
            kid: k.kid.clone(),
            next_rotation: k.next_rotation.map(|t| t.to_string()),
        })
        .collect();
    *progress = Progress::of(keys_rotated && conflicts.is_empty());
    let report = if conflicts.is_empty() {
        report(
            ConditionStatus::True,
            "KeysPublished",
            format!("{} signing key(s) with published JWKS", desired.len()),
        )
    } else {
        conflicts.sort();
        conflicts.dedup();
        report(
            ConditionStatus::False,
            "Conflict",
            format!(
                "spec.jwt: {} already exist(s) without Bulwark's labels and was left untouched; rename or remove it",
                conflicts.join(", ")
            ),
        )
    };
    Ok(Some(JwtOutcome {
        recheck: !conflicts.is_empty(),
        report,
        keys,
        next_event: next_event(&desired),
    }))
}

/// Applies one object unless its name is known to be taken; returns a new conflict, if any.
async fn apply_named<K>(
    applier: &Applier<'_>,
    api: &Api<K>,
    object: K,
    conflicts: &[String],
    managed: &mut Vec<ManagedObject>,
) -> Result<Option<String>, Error>
where
    K: Resource<DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
        + Send
        + 'static,
{
    let kind = K::kind(&()).to_string();
    let name = object.name_any();
    if conflicts.contains(&format!("{kind} {name}")) {
        return Ok(None);
    }
    match applier.apply(api, object).await {
        Ok(_) => {
            managed.push(ManagedObject {
                kind,
                name,
                facet: Facet::Jwt.label().into(),
            });
            Ok(None)
        }
        Err(ApplyError::Conflict { kind, name }) => Ok(Some(format!("{kind} {name}"))),
        Err(e) => Err(e.into()),
    }
}
