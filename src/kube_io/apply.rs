use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::meta::{
    ANNOTATION_DESIRED_HASH, FIELD_MANAGER, Facet, is_produced_by, produced_selector,
};
use super::observed::{Kind, ObjectKey, Observed, Verified};
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
///
/// One applier serves one reconcile. It remembers what the reconcile read (so applying an object
/// just read needs no second read) and the resource version of every produced object it read or
/// verified, for [`Observed`] to let the next reconcile skip what has not changed since.
pub struct Applier<'a> {
    pub policy: &'a SecurityPolicy,
    pub metrics: &'a Metrics,
    pub repairs: &'a RepairBudget,
    /// Objects whose repair was deferred during this reconcile.
    pub contested: Mutex<Vec<Contested>>,
    observed: Option<&'a Observed>,
    /// What the previous complete reconcile verified.
    previous: HashMap<ObjectKey, Verified>,
    verified: Mutex<HashMap<ObjectKey, Verified>>,
    /// Objects read during this reconcile and not yet applied (None: absent).
    reads: Mutex<HashMap<ObjectKey, Box<dyn Any + Send>>>,
    /// Objects read absent; the reconcile is only complete if each was then created.
    absent: Mutex<HashSet<ObjectKey>>,
    /// Something this reconcile depends on is not watched (an object of someone else's).
    unwatched: AtomicBool,
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
            observed: None,
            previous: HashMap::new(),
            verified: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            absent: Mutex::new(HashSet::new()),
            unwatched: AtomicBool::new(false),
        }
    }

    /// Lets this applier skip reads the watches show are unnecessary: `previous` is what the
    /// last complete reconcile of the policy verified.
    pub fn with_observed(
        mut self,
        observed: &'a Observed,
        previous: HashMap<ObjectKey, Verified>,
    ) -> Self {
        self.observed = Some(observed);
        self.previous = previous;
        self
    }

    /// What this reconcile verified, when everything it depends on is watched: each produced
    /// object it read or applied, with its resource version. None when the policy depends on an
    /// object of someone else's, or on one that does not exist yet.
    pub fn verified(&self) -> Option<HashMap<ObjectKey, Verified>> {
        let verified = self.verified.lock().expect("verified lock").clone();
        let absent = self.absent.lock().expect("absent lock");
        let complete = !self.unwatched.load(Ordering::Relaxed)
            && absent.iter().all(|k| verified.contains_key(k))
            && self.contested.lock().expect("contested lock").is_empty();
        complete.then_some(verified)
    }

    /// Records the object `key` as verified at version `rv`; `meta` is its metadata as read,
    /// or as applied (`hash` given). The facet is the one its labels name; once applied, the
    /// one the producing facet gave it, whatever the label said when it was read.
    fn verify(&self, key: ObjectKey, rv: Option<&str>, meta: &ObjectMeta, hash: Option<&str>) {
        let Some(rv) = rv else {
            return;
        };
        let mut verified = self.verified.lock().expect("verified lock");
        let entry = verified.entry(key).or_insert_with(|| Verified {
            resource_version: rv.to_string(),
            desired_hash: None,
            facet: Facet::of(meta),
        });
        entry.resource_version = rv.to_string();
        if let Some(hash) = hash {
            entry.desired_hash = Some(hash.to_string());
            entry.facet = Facet::of(meta);
        }
    }

    /// Reads a produced object (or the object a policy names, such as a CA you bring) for a
    /// facet to build on; a later [`apply`](Self::apply) of the same object reuses the read.
    pub async fn read<K>(&self, api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug + Send + 'static,
    {
        let live = self.get(api, name).await?;
        let Some(kind) = Kind::from_name(&K::kind(&())) else {
            self.unwatched.store(true, Ordering::Relaxed);
            return Ok(live);
        };
        let key = (kind, name.to_string());
        match &live {
            Some(obj) if is_produced_by(obj.meta(), self.policy) => {
                self.verify(
                    key.clone(),
                    obj.meta().resource_version.as_deref(),
                    obj.meta(),
                    None,
                );
            }
            Some(_) => self.unwatched.store(true, Ordering::Relaxed),
            None => {
                self.absent.lock().expect("absent lock").insert(key.clone());
            }
        }
        self.reads
            .lock()
            .expect("reads lock")
            .insert(key, Box::new(live.clone()));
        Ok(live)
    }

    /// Reads one object. When the watches know the produced object's resource version, the
    /// API server answers from its watch cache with a version at least that new (the cache
    /// feeds those very watches, so it is never behind them); otherwise from etcd.
    async fn get<K>(&self, api: &Api<K>, name: &str) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    {
        let known = self
            .observed
            .zip(Kind::from_name(&K::kind(&())))
            .and_then(|(observed, kind)| observed.resource_version(self.policy, kind, name));
        let Some(rv) = known else {
            return api.get_opt(name).await;
        };
        match api.get_with(name, &GetParams::at(&rv)).await {
            Ok(obj) => Ok(Some(obj)),
            Err(kube::Error::Api(s)) if s.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The object as this reconcile last read it, if it did and has not applied it since.
    fn take_read<K: 'static>(&self, key: &ObjectKey) -> Option<Option<K>> {
        let read = self.reads.lock().expect("reads lock").remove(key)?;
        read.downcast::<Option<K>>().ok().map(|b| *b)
    }

    /// True when the watches show the object at the resource version the previous complete
    /// reconcile verified against this same desired state: it is unchanged, no read needed.
    fn verified_unchanged(&self, key: &ObjectKey, hash: &str) -> Option<String> {
        let previous = self.previous.get(key)?;
        if previous.desired_hash.as_deref() != Some(hash) {
            return None;
        }
        let rv = self
            .observed?
            .resource_version(self.policy, key.0, &key.1)?;
        (rv == previous.resource_version).then_some(rv)
    }

    /// The objects whose repair was deferred so far.
    pub fn contested(&self) -> Vec<Contested> {
        self.contested.lock().expect("contested lock").clone()
    }

    /// Applies `desired` unless the live object already matches it; refuses objects that are not ours.
    pub async fn apply<K>(&self, api: &Api<K>, mut desired: K) -> Result<ApplyOutcome, ApplyError>
    where
        K: Resource<DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug
            + Send
            + 'static,
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

        let key = Kind::from_name(&kind).map(|k| (k, name.clone()));
        let read = key.as_ref().and_then(|k| self.take_read::<K>(k));
        let live = match read {
            Some(live) => live,
            None => {
                if let Some(key) = &key
                    && let Some(rv) = self.verified_unchanged(key, &hash)
                {
                    self.verify(key.clone(), Some(&rv), desired.meta(), Some(&hash));
                    return Ok(ApplyOutcome::Unchanged);
                }
                self.get(api, &name).await.map_err(|e| api_err("get", e))?
            }
        };
        let outcome = match &live {
            None => ApplyOutcome::Created,
            Some(live) if !is_produced_by(live.meta(), self.policy) => {
                self.unwatched.store(true, Ordering::Relaxed);
                return Err(ApplyError::Conflict { kind, name });
            }
            Some(live) => {
                let same_hash = live.annotations().get(ANNOTATION_DESIRED_HASH) == Some(&hash);
                let live_json = serde_json::to_value(live).expect("Kubernetes objects serialize");
                let desired_json =
                    serde_json::to_value(&desired).expect("Kubernetes objects serialize");
                if same_hash && is_subset(&desired_json, &live_json) {
                    if let Some(key) = key {
                        self.verify(
                            key,
                            live.meta().resource_version.as_deref(),
                            desired.meta(),
                            Some(&hash),
                        );
                    }
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
                    let facet = Facet::of(desired.meta());
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
        let written = api
            .patch(&name, &params, &Patch::Apply(&desired))
            .await
            .map_err(|e| api_err("apply", e))?;
        self.metrics.record_write(&kind);
        if let Some(key) = key {
            if let Some(observed) = self.observed {
                observed.wrote(Some(key.0), written.meta());
            }
            self.verify(
                key,
                written.meta().resource_version.as_deref(),
                written.meta(),
                Some(&hash),
            );
        }
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
        if let (Some(observed), Some(k)) = (self.observed, Kind::from_name(&kind))
            && observed.nothing_stale(self.policy, k, facet, keep)
        {
            return Ok(Vec::new());
        }
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
            if let Some(k) = Kind::from_name(&kind) {
                self.verified
                    .lock()
                    .expect("verified lock")
                    .remove(&(k, name.clone()));
            }
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
    fn an_applied_object_counts_for_the_facet_that_produces_it() {
        let policy =
            crate::facets::test_policy("tiers: {web: {podSelector: {matchLabels: {app: web}}}}");
        let (metrics, repairs) = (Metrics::default(), RepairBudget::default());
        let applier = Applier::new(&policy, &metrics, &repairs);
        let key = (Kind::Secret, "api-jwt".to_string());
        // Read while someone had relabelled it for TLS; then applied by the JWT facet.
        let relabelled = super::super::produced_meta(&policy, "api-jwt", Facet::Tls);
        applier.verify(key.clone(), Some("7"), &relabelled, None);
        assert_eq!(applier.verified().unwrap()[&key].facet, Some(Facet::Tls));
        let desired = super::super::produced_meta(&policy, "api-jwt", Facet::Jwt);
        applier.verify(key.clone(), Some("8"), &desired, Some("h"));
        let verified = applier.verified().unwrap();
        assert_eq!(verified[&key].facet, Some(Facet::Jwt));
        assert_eq!(verified[&key].resource_version, "8");
    }

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
