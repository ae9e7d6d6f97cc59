use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::meta::{
    ANNOTATION_DESIRED_HASH, FIELD_MANAGER, Facet, LABEL_FACET, is_produced_by, produced_selector,
};
use super::repair::RepairBudget;
use crate::api::SecurityPolicy;
use crate::telemetry::Metrics;

/// What one apply did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    Created,
    Updated,
    Unchanged,
    /// The object differs but was repaired too often lately: the write waits (see
    /// [`RepairBudget`]) and the object is listed in [`Applier::contested`].
    Deferred,
}

/// An object someone else keeps changing, whose repair waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contested {
    pub facet: Option<Facet>,
    pub kind: String,
    pub name: String,
    /// The other field manager that changed it last, when the object says.
    pub manager: Option<String>,
    pub retry_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// An object of the same name exists and was not produced by this policy: it is left untouched.
    #[error(
        "{kind} {name} already exists and is not managed by this SecurityPolicy; it was left untouched"
    )]
    Conflict { kind: String, name: String },
    #[error("{verb} {kind} {name}: {source}")]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// Writes produced objects with forced server-side apply, and only when they differ from the live object.
pub struct Applier<'a> {
    pub policy: &'a SecurityPolicy,
    pub metrics: &'a Metrics,
    pub repairs: &'a RepairBudget,
    /// Objects whose repair was deferred during this reconcile.
    pub contested: Mutex<Vec<Contested>>,
}

impl<'a> Applier<'a> {
    pub fn new(
        policy: &'a SecurityPolicy,
        metrics: &'a Metrics,
        repairs: &'a RepairBudget,
    ) -> Self {
        Self {
            policy,
            metrics,
            repairs,
            contested: Mutex::new(Vec::new()),
        }
    }

    /// The objects whose repair was deferred so far.
    pub fn contested(&self) -> Vec<Contested> {
        self.contested.lock().expect("contested lock").clone()
    }

    /// Applies `desired` unless the live object already matches it; refuses objects that are not ours.
    pub async fn apply<K>(&self, api: &Api<K>, mut desired: K) -> Result<ApplyOutcome, ApplyError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let kind = K::kind(&()).to_string();
        let name = desired.name_any();
        let hash = desired_hash(&desired);
        desired
            .annotations_mut()
            .insert(ANNOTATION_DESIRED_HASH.to_string(), hash.clone());
        let api_err = |verb, source| ApplyError::Api {
            verb,
            kind: kind.clone(),
            name: name.clone(),
            source: Box::new(source),
        };

        let live = api.get_opt(&name).await.map_err(|e| api_err("get", e))?;
        let outcome = match &live {
            None => ApplyOutcome::Created,
            Some(live) if !is_produced_by(live.meta(), self.policy) => {
                return Err(ApplyError::Conflict { kind, name });
            }
            Some(live) => {
                let same_hash = live.annotations().get(ANNOTATION_DESIRED_HASH) == Some(&hash);
                let live_json = serde_json::to_value(live).expect("Kubernetes objects serialize");
                let desired_json =
                    serde_json::to_value(&desired).expect("Kubernetes objects serialize");
                if same_hash && is_subset(&desired_json, &live_json) {
                    return Ok(ApplyOutcome::Unchanged);
                }
                // A repair undoes someone else's change: the live object still carries the hash
                // of what we want, or another manager wrote it last. Our own updates (renewal,
                // rotation, a spec change) are not repairs and are never held back.
                let someone_else = same_hash
                    || last_other_manager(live.meta()).is_some_and(|_| {
                        newest_manager(live.meta()).is_some_and(|m| m != FIELD_MANAGER)
                    });
                let key = format!(
                    "{}/{kind}/{name}",
                    live.meta().namespace.as_deref().unwrap_or_default()
                );
                let verdict = if someone_else {
                    self.repairs.allow(&key, Instant::now())
                } else {
                    Ok(())
                };
                if let Err(retry_after) = verdict {
                    let facet = desired
                        .labels()
                        .get(LABEL_FACET)
                        .and_then(|l| Facet::ALL.into_iter().find(|f| f.label() == l));
                    self.contested
                        .lock()
                        .expect("contested lock")
                        .push(Contested {
                            facet,
                            kind,
                            name,
                            manager: last_other_manager(live.meta()),
                            retry_after,
                        });
                    return Ok(ApplyOutcome::Deferred);
                }
                ApplyOutcome::Updated
            }
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(&desired))
            .await
            .map_err(|e| api_err("apply", e))?;
        self.metrics.record_write(&kind);
        Ok(outcome)
    }

    /// Deletes the objects this policy produced for `facet` whose names are not in `keep`.
    pub async fn delete_stale<K>(
        &self,
        api: &Api<K>,
        facet: Facet,
        keep: &BTreeSet<String>,
    ) -> Result<Vec<String>, ApplyError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let kind = K::kind(&()).to_string();
        let selector = produced_selector(&self.policy.name_any(), facet);
        let listed = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| ApplyError::Api {
                verb: "list",
                kind: kind.clone(),
                name: selector.clone(),
                source: Box::new(e),
            })?;
        let mut deleted = Vec::new();
        for obj in listed.items {
            let name = obj.name_any();
            if keep.contains(&name) || !is_produced_by(&obj.metadata, self.policy) {
                continue;
            }
            let params = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..DeleteParams::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(ApplyError::Api {
                        verb: "delete",
                        kind: kind.clone(),
                        name,
                        source: Box::new(e),
                    });
                }
            }
            self.metrics.record_write(&kind);
            deleted.push(name);
        }
        Ok(deleted)
    }
}

/// Stable digest of an object as Bulwark wants it (serde_json maps are sorted, so this is deterministic).
pub fn desired_hash<K: Serialize>(desired: &K) -> String {
    let bytes = serde_json::to_vec(desired).expect("Kubernetes objects serialize");
    let digest = Sha256::digest(bytes);
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// True when every field of `desired` is present with the same value in `live`.
///
/// Maps may carry extra keys in `live` (server defaults, other managers' fields); lists must
/// match element by element, because an extra rule in a NetworkPolicy is drift.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => {
                dv.is_null()
                    || dv.as_array().is_some_and(Vec::is_empty)
                    || dv.as_object().is_some_and(|o| o.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => {
            d.len() == l.len() && d.iter().zip(l).all(|(dv, lv)| is_subset(dv, lv))
        }
        _ => desired == live,
    }
}

/// The field manager that wrote `meta` last, by managedFields time.
fn newest_manager(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .and_then(|f| f.manager.clone())
}

/// The field manager other than Bulwark that wrote `meta` last, by managedFields time.
fn last_other_manager(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|f| f.manager.as_deref().is_some_and(|m| m != FIELD_MANAGER))
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .and_then(|f| f.manager.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_drift() {
        let desired = json!({"spec": {"ports": [{"port": 5432}]}});
        let live = json!({"spec": {"ports": [{"port": 5432, "protocol": "TCP"}]}, "status": {}});
        assert!(is_subset(&desired, &live));
    }

    #[test]
    fn edited_values_and_extra_list_items_are_drift() {
        let desired = json!({"spec": {"ports": [{"port": 5432}]}});
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 5433}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"ports": [{"port": 5432}, {"port": 1}]}})
        ));
        assert!(!is_subset(&desired, &json!({"spec": {}})));
    }

    #[test]
    fn empty_desired_collections_match_absent_live_fields() {
        assert!(is_subset(
            &json!({"spec": {"egress": []}}),
            &json!({"spec": {}})
        ));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"a": 1, "b": [1, 2]});
        assert_eq!(desired_hash(&a), desired_hash(&a.clone()));
        assert_ne!(
            desired_hash(&a),
            desired_hash(&json!({"a": 2, "b": [1, 2]}))
        );
    }
}
