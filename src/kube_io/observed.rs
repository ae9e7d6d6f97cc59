//! What the watches last said about each produced object, and what each policy's last complete
//! reconcile verified. Together they let a reconcile learn that nothing changed without asking
//! the API server:
//!
//! - a reconcile whose policy, produced objects and deadlines are all as its last complete
//!   reconcile left them does nothing (the events of our own writes, status updates);
//! - when only objects of some facets changed, it names those facets, for the reconcile to
//!   rebuild them alone;
//! - an object whose resource version is the one a reconcile verified against the same desired
//!   state needs no read before it is declared unchanged;
//! - a facet with no produced object outside the names it keeps needs no list to find stale ones.
//!
//! Everything here is an optimisation that may only ever say "look": a missing entry, a watch
//! that has not listed yet or is failing, or any difference sends the reconcile to the API server.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::meta::{Facet, LABEL_POLICY};
use crate::api::{SecurityPolicy, SecurityPolicyStatus};

/// A policy settled by a complete reconcile is taken at its word for at most this long; after
/// that any event brings a complete reconcile, which also looks at inputs no watch covers (a
/// Secret you bring, credential ages).
pub const SETTLED_FOR: Duration = Duration::from_secs(300);

/// The kinds of produced object, each watched on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    NetworkPolicy,
    Secret,
    ConfigMap,
    Job,
}

impl Kind {
    const COUNT: usize = 4;

    pub fn from_name(kind: &str) -> Option<Kind> {
        Some(match kind {
            "NetworkPolicy" => Kind::NetworkPolicy,
            "Secret" => Kind::Secret,
            "ConfigMap" => Kind::ConfigMap,
            "Job" => Kind::Job,
            _ => return None,
        })
    }
}

/// One produced object as a watch last saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    resource_version: Box<str>,
    facet: Option<Facet>,
    /// Hash of the owning policy's UID; None when the object names no policy as its owner.
    owner: Option<u64>,
    /// Digest of what a reconcile reads from the object beyond its metadata, when it is watched
    /// in full (a Job's outcome).
    digest: Option<u64>,
}

/// One produced object as the last complete reconcile left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    pub resource_version: String,
    /// Hash of the desired object it was compared with, when it was applied.
    pub desired_hash: Option<String>,
    /// The facet that produces it, as its label says.
    pub facet: Option<Facet>,
}

pub type ObjectKey = (Kind, String);

/// What a complete reconcile of one policy verified.
#[derive(Clone, Debug, Default)]
pub struct Settled {
    fingerprint: u64,
    pub objects: HashMap<ObjectKey, Verified>,
    /// When the reconcile asked to look again, if it did.
    pub until: Option<Instant>,
    /// When the last reconcile that looked at every facet started.
    pub at: Option<Instant>,
    /// Digest of the status the reconcile left (see [`status_digest`]).
    pub status: Option<u64>,
    /// Digest of the CA bundle the TLS facet handed to the facets after it.
    pub bundle: Option<u64>,
}

impl Settled {
    pub fn new(objects: HashMap<ObjectKey, Verified>, until: Option<Instant>, at: Instant) -> Self {
        Self {
            fingerprint: 0,
            objects,
            until,
            at: Some(at),
            status: None,
            bundle: None,
        }
    }
}

/// What a reconcile has to look at, by what changed since the policy's last reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Look {
    /// Nothing: the next deadline is this far away (None: there is none).
    Nothing(Option<Duration>),
    /// Only objects these facets produce changed; the policy, its status and every deadline are
    /// as the last reconcile left them.
    Facets(BTreeSet<Facet>),
    /// Everything, for this reason.
    Everything(&'static str),
}

/// The objects one policy (namespace and name) produced, and its last settled reconcile.
#[derive(Default)]
struct Bucket {
    objects: HashMap<(Kind, Box<str>), Seen>,
    settled: Option<Settled>,
}

#[derive(Default)]
struct State {
    buckets: HashMap<(Box<str>, Box<str>), Bucket>,
    /// What the operator watches: all namespaces (None) or each of a list; every kind has one
    /// watch per scope.
    scopes: Vec<Option<Box<str>>>,
    /// Per watch (kind, scope): objects listed since it (re)started, while a list is under way.
    relisting: HashMap<(Kind, usize), Vec<ListKey>>,
    /// The watches that have listed at least once.
    listed: HashSet<(Kind, usize)>,
    /// Writes of ours whose watch event has not come back yet: (kind, None for a policy's
    /// status; namespace, name, resource version).
    own_writes: HashSet<OwnWrite>,
    /// Status written to a policy whose watch event has not come back yet: the cached policy
    /// still shows the status before it.
    written_status: HashMap<(Box<str>, Box<str>), WrittenStatus>,
    /// The latest events seen (hashes of kind, namespace, name, resource version): an event can
    /// arrive before the answer to the write that caused it, and then no echo is pending.
    recent: std::collections::VecDeque<u64>,
    recent_set: HashSet<u64>,
}

/// Events remembered as recent: far more than arrive while a write's answer is on its way.
const RECENT_EVENTS: usize = 16_384;

struct WrittenStatus {
    resource_version: Box<str>,
    status: SecurityPolicyStatus,
    at: Instant,
}

/// A written status whose echo has not come back within this long is not used any more (the
/// echo may have been replaced by a relist).
const WRITTEN_STATUS_FOR: Duration = Duration::from_secs(60);

/// An object as a list names it: namespace, policy label, name.
type ListKey = (Box<str>, Box<str>, Box<str>);

type OwnWrite = (Option<Kind>, Box<str>, Box<str>, Box<str>);

/// Own writes remembered at most; past this the oldest knowledge is dropped (every event then
/// triggers a reconcile again, which is always safe).
const OWN_WRITES_MAX: usize = 65_536;

/// Shared by the watches (which feed it) and every reconcile (which reads it).
pub struct Observed {
    state: Mutex<State>,
}

impl Default for Observed {
    /// One scope: all namespaces.
    fn default() -> Self {
        Self::scoped(&[None])
    }
}

/// A digest of `value`, stable within one process.
pub(crate) fn hash_of(value: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// What a policy's produced objects depend on besides their own state: its generation (spec),
/// annotations (rotate requests) and labels, and its UID.
pub fn fingerprint(policy: &SecurityPolicy) -> u64 {
    hash_of((
        policy.meta().uid.as_deref(),
        policy.meta().generation,
        policy.meta().annotations.as_ref(),
        policy.meta().labels.as_ref(),
    ))
}

/// Digest of a policy's status, to tell whether it is still the one a reconcile left.
pub fn status_digest(status: Option<&SecurityPolicyStatus>) -> u64 {
    hash_of(serde_json::to_vec(&status).unwrap_or_default())
}

fn event_hash(kind: Option<Kind>, ns: &str, name: &str, rv: &str) -> u64 {
    hash_of((kind, ns, name, rv))
}

fn policy_key(policy: &SecurityPolicy) -> (Box<str>, Box<str>) {
    (
        policy.namespace().unwrap_or_default().into(),
        policy.name_any().into(),
    )
}

fn owner_hash(meta: &ObjectMeta) -> Option<u64> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "SecurityPolicy")
        .map(|o| hash_of(o.uid.as_str()))
}

impl Observed {
    /// Watches of each kind in each of `scopes` (None: all namespaces) will report.
    pub fn scoped(scopes: &[Option<String>]) -> Self {
        let state = State {
            scopes: scopes
                .iter()
                .map(|s| s.as_deref().map(Into::into))
                .collect(),
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
        }
    }

    /// Takes in one event of the watch of `kind`; returns whether it should trigger a reconcile
    /// of the object's policy. It should not when it is the echo of a write of ours, or when
    /// `digest` (of what a reconcile reads from such an object; None: everything) is unchanged.
    /// Deletions and relists always do.
    pub fn watch_event<K: Resource>(
        &self,
        kind: Kind,
        scope: Option<&str>,
        event: &watcher::Event<K>,
        digest: impl Fn(&K) -> Option<u64>,
    ) -> bool {
        let mut state = self.state.lock().expect("observed lock");
        let watch = (kind, state.scope_index(scope));
        match event {
            watcher::Event::Init => {
                state.relisting.insert(watch, Vec::new());
                true
            }
            watcher::Event::InitApply(obj) => {
                if let Some((key, _)) = state.upsert(kind, obj.meta(), digest(obj))
                    && let Some(listed) = state.relisting.get_mut(&watch)
                {
                    listed.push(key);
                }
                true
            }
            watcher::Event::InitDone => {
                // A write whose event the relist replaced will not come back as an event.
                state.own_writes.retain(|(kd, ..)| *kd != Some(kind));
                let listed: HashSet<_> = state
                    .relisting
                    .remove(&watch)
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                // Objects of this watch's scope deleted while it was away are gone from the list.
                state.buckets.retain(|(ns, policy), bucket| {
                    if scope.is_some_and(|s| s != &**ns) {
                        return true;
                    }
                    bucket.objects.retain(|(kd, name), _| {
                        *kd != kind || listed.contains(&(ns.clone(), policy.clone(), name.clone()))
                    });
                    !bucket.objects.is_empty() || bucket.settled.is_some()
                });
                state.listed.insert(watch);
                true
            }
            watcher::Event::Apply(obj) => {
                let meta = obj.meta();
                let own = state.take_own_write(Some(kind), meta);
                let digest = digest(obj);
                let previous = state.upsert(kind, meta, digest).and_then(|(_, p)| p);
                let same = digest.is_some() && previous.is_some_and(|p| p.digest == digest);
                !own && !same
            }
            watcher::Event::Delete(obj) => {
                state.remove(kind, obj.meta());
                true
            }
        }
    }

    /// Remembers a write of ours (the resource version the server answered with), so that its
    /// watch event does not trigger a reconcile of what that very reconcile just did.
    /// `kind` None is a policy's status.
    pub fn wrote(&self, kind: Option<Kind>, meta: &ObjectMeta) {
        let (Some(ns), Some(name), Some(rv)) = (
            meta.namespace.as_deref(),
            meta.name.as_deref(),
            meta.resource_version.as_deref(),
        ) else {
            return;
        };
        let mut state = self.state.lock().expect("observed lock");
        // The echo already came, or the write changed nothing (same version, no event).
        let known = kind
            .zip(meta.labels.as_ref().and_then(|l| l.get(LABEL_POLICY)))
            .and_then(|(kind, policy)| {
                let bucket = state.buckets.get(&(ns.into(), policy.as_str().into()))?;
                bucket.objects.get(&(kind, name.into()))
            });
        if state.recent_set.contains(&event_hash(kind, ns, name, rv))
            || known.is_some_and(|seen| *seen.resource_version == *rv)
        {
            return;
        }
        if state.own_writes.len() >= OWN_WRITES_MAX {
            state.own_writes.clear();
        }
        state
            .own_writes
            .insert((kind, ns.into(), name.into(), rv.into()));
    }

    /// Remembers the status a reconcile wrote to `policy` (as the server answered), until the
    /// policy watch brings it back.
    pub fn wrote_status(&self, written: &SecurityPolicy) {
        let (Some(rv), Some(status)) =
            (written.meta().resource_version.as_deref(), &written.status)
        else {
            return;
        };
        let mut state = self.state.lock().expect("observed lock");
        if state.recent_set.contains(&event_hash(
            None,
            written.meta().namespace.as_deref().unwrap_or_default(),
            written.meta().name.as_deref().unwrap_or_default(),
            rv,
        )) {
            return;
        }
        let now = Instant::now();
        state
            .written_status
            .retain(|_, w| now.duration_since(w.at) < WRITTEN_STATUS_FOR);
        state.written_status.insert(
            policy_key(written),
            WrittenStatus {
                resource_version: rv.into(),
                status: status.clone(),
                at: now,
            },
        );
        drop(state);
        self.wrote(None, written.meta());
    }

    /// The status last written to `policy` when the watch has not brought it back yet: newer
    /// than the cached policy's.
    pub fn unseen_status(&self, policy: &SecurityPolicy) -> Option<SecurityPolicyStatus> {
        let state = self.state.lock().expect("observed lock");
        let written = state.written_status.get(&policy_key(policy))?;
        let echoed = policy.meta().resource_version.as_deref() == Some(&*written.resource_version);
        (!echoed && written.at.elapsed() < WRITTEN_STATUS_FOR).then(|| written.status.clone())
    }

    /// True (once) when `meta` is the object as one of our writes left it: its event is ours.
    pub fn is_own_write(&self, kind: Option<Kind>, meta: &ObjectMeta) -> bool {
        self.state
            .lock()
            .expect("observed lock")
            .take_own_write(kind, meta)
    }

    /// True when every watch has listed and none is relisting.
    fn synced(state: &State) -> bool {
        state.listed.len() >= Kind::COUNT * state.scopes.len() && state.relisting.is_empty()
    }

    /// How long until the policy's last complete reconcile asked to look again, when nothing it
    /// verified has changed since (and it is recent enough to be trusted); None means "look".
    #[cfg(test)]
    fn unchanged(&self, policy: &SecurityPolicy, now: Instant) -> Option<Option<Duration>> {
        match self.why_look(policy, now) {
            Look::Nothing(wait) => Some(wait),
            _ => None,
        }
    }

    /// What a reconcile of `policy` has to look at: nothing, the facets whose objects changed,
    /// or everything.
    pub fn why_look(&self, policy: &SecurityPolicy, now: Instant) -> Look {
        let state = self.state.lock().expect("observed lock");
        if !Self::synced(&state) {
            return Look::Everything("watches not in sync");
        }
        let Some(bucket) = state.buckets.get(&policy_key(policy)) else {
            return Look::Everything("nothing produced yet");
        };
        let Some(settled) = bucket.settled.as_ref() else {
            return Look::Everything("not settled");
        };
        if settled.fingerprint != fingerprint(policy) {
            return Look::Everything("policy changed");
        }
        if settled
            .at
            .is_none_or(|at| now.duration_since(at) >= SETTLED_FOR)
        {
            return Look::Everything("settled too long ago");
        }
        if settled.until.is_some_and(|until| now >= until) {
            return Look::Everything("deadline reached");
        }
        // Each object is as verified, or the watch has not yet brought back the write of ours
        // that left it as verified (the echo is on its way: nothing else happened since that
        // we could know of, and anything that did comes as its own event).
        let (ns, _) = policy_key(policy);
        let mut changed = BTreeSet::new();
        for ((kind, name), v) in &settled.objects {
            let name: Box<str> = name.as_str().into();
            let same = match bucket.objects.get(&(*kind, name.clone())) {
                Some(seen) if *seen.resource_version == *v.resource_version => true,
                _ => state.own_writes.contains(&(
                    Some(*kind),
                    ns.clone(),
                    name,
                    v.resource_version.as_str().into(),
                )),
            };
            if !same {
                let Some(facet) = v.facet else {
                    return Look::Everything("a produced object changed");
                };
                changed.insert(facet);
            }
        }
        for ((kind, name), seen) in &bucket.objects {
            if !settled.objects.contains_key(&(*kind, name.to_string())) {
                let Some(facet) = seen.facet else {
                    return Look::Everything("an object not verified");
                };
                changed.insert(facet);
            }
        }
        if changed.is_empty() {
            Look::Nothing(settled.until.map(|until| until.duration_since(now)))
        } else {
            Look::Facets(changed)
        }
    }

    /// Forgets what the last reconcile of `policy` settled and hands it back, for this
    /// reconcile to skip reads of what has not changed since.
    pub fn unsettle(&self, policy: &SecurityPolicy) -> Option<Settled> {
        let mut state = self.state.lock().expect("observed lock");
        let key = policy_key(policy);
        let bucket = state.buckets.get_mut(&key)?;
        let settled = bucket.settled.take();
        if bucket.objects.is_empty() {
            state.buckets.remove(&key);
        }
        // What was verified stays valid across spec changes: each object is compared with its
        // own desired hash, and only while its resource version is the one verified.
        settled
    }

    /// Records a reconcile of `policy`: what it verified, and when it wants another look.
    pub fn settle(&self, policy: &SecurityPolicy, settled: Settled) {
        let mut state = self.state.lock().expect("observed lock");
        state.buckets.entry(policy_key(policy)).or_default().settled = Some(Settled {
            fingerprint: fingerprint(policy),
            ..settled
        });
    }

    /// Drops everything about a policy that is gone.
    pub fn forget(&self, policy: &SecurityPolicy) {
        let mut state = self.state.lock().expect("observed lock");
        let key = policy_key(policy);
        if let Some(bucket) = state.buckets.get_mut(&key) {
            bucket.settled = None;
            if bucket.objects.is_empty() {
                state.buckets.remove(&key);
            }
        }
    }

    /// The watched resource version of a produced object, when the watches are in sync and the
    /// object names `policy` as its owner.
    pub fn resource_version(
        &self,
        policy: &SecurityPolicy,
        kind: Kind,
        name: &str,
    ) -> Option<String> {
        let state = self.state.lock().expect("observed lock");
        if !Self::synced(&state) {
            return None;
        }
        let owner = hash_of(policy.meta().uid.as_deref()?);
        let seen = state
            .buckets
            .get(&policy_key(policy))?
            .objects
            .get(&(kind, name.into()))?;
        (seen.owner == Some(owner)).then(|| seen.resource_version.to_string())
    }

    /// Whether the watches know of no object of `kind` labelled for `policy` and `facet` outside
    /// `keep`: then there is nothing stale to delete. False whenever the watches are not in sync.
    pub fn nothing_stale(
        &self,
        policy: &SecurityPolicy,
        kind: Kind,
        facet: Facet,
        keep: &std::collections::BTreeSet<String>,
    ) -> bool {
        let state = self.state.lock().expect("observed lock");
        if !Self::synced(&state) {
            return false;
        }
        let Some(bucket) = state.buckets.get(&policy_key(policy)) else {
            return true;
        };
        !bucket.objects.iter().any(|((k, name), seen)| {
            *k == kind && seen.facet == Some(facet) && !keep.contains(&**name)
        })
    }

    /// How many produced objects the watches know of.
    #[cfg(test)]
    fn known(&self) -> usize {
        let state = self.state.lock().expect("observed lock");
        state.buckets.values().map(|b| b.objects.len()).sum()
    }
}

impl State {
    /// The index of a watch's scope; a scope not announced is added (and then counts as one
    /// more watch per kind that must list).
    fn scope_index(&mut self, scope: Option<&str>) -> usize {
        match self.scopes.iter().position(|s| s.as_deref() == scope) {
            Some(i) => i,
            None => {
                self.scopes.push(scope.map(Into::into));
                self.scopes.len() - 1
            }
        }
    }

    fn take_own_write(&mut self, kind: Option<Kind>, meta: &ObjectMeta) -> bool {
        let (Some(ns), Some(name), Some(rv)) = (
            meta.namespace.as_deref(),
            meta.name.as_deref(),
            meta.resource_version.as_deref(),
        ) else {
            return false;
        };
        let seen = event_hash(kind, ns, name, rv);
        if self.recent_set.insert(seen) {
            self.recent.push_back(seen);
            if self.recent.len() > RECENT_EVENTS
                && let Some(old) = self.recent.pop_front()
            {
                self.recent_set.remove(&old);
            }
        }
        if kind.is_none() {
            let key: (Box<str>, Box<str>) = (ns.into(), name.into());
            if self
                .written_status
                .get(&key)
                .is_some_and(|w| *w.resource_version == *rv)
            {
                self.written_status.remove(&key);
            }
        }
        self.own_writes
            .remove(&(kind, ns.into(), name.into(), rv.into()))
    }

    /// Records an object; returns its list key and what was known of it before, or None when it
    /// names no policy.
    fn upsert(
        &mut self,
        kind: Kind,
        meta: &ObjectMeta,
        digest: Option<u64>,
    ) -> Option<(ListKey, Option<Seen>)> {
        let labels = meta.labels.as_ref()?;
        let policy: Box<str> = labels.get(LABEL_POLICY)?.as_str().into();
        let ns: Box<str> = meta.namespace.as_deref().unwrap_or_default().into();
        let name: Box<str> = meta.name.as_deref()?.into();
        let seen = Seen {
            resource_version: meta.resource_version.as_deref().unwrap_or_default().into(),
            facet: Facet::of(meta),
            owner: owner_hash(meta),
            digest,
        };
        let previous = self
            .buckets
            .entry((ns.clone(), policy.clone()))
            .or_default()
            .objects
            .insert((kind, name.clone()), seen);
        Some(((ns, policy, name), previous))
    }

    fn remove(&mut self, kind: Kind, meta: &ObjectMeta) {
        let Some(policy) = meta.labels.as_ref().and_then(|l| l.get(LABEL_POLICY)) else {
            return;
        };
        let key: (Box<str>, Box<str>) = (
            meta.namespace.as_deref().unwrap_or_default().into(),
            policy.as_str().into(),
        );
        let Some(bucket) = self.buckets.get_mut(&key) else {
            return;
        };
        bucket
            .objects
            .remove(&(kind, meta.name.as_deref().unwrap_or_default().into()));
        if bucket.objects.is_empty() && bucket.settled.is_none() {
            self.buckets.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_io::{owner_reference, produced_meta};
    use k8s_openapi::api::core::v1::Secret;
    use kube::core::PartialObjectMeta;
    use std::collections::BTreeSet;

    fn policy() -> SecurityPolicy {
        let mut p =
            crate::facets::test_policy("tiers: {web: {podSelector: {matchLabels: {app: web}}}}");
        p.metadata.generation = Some(1);
        p
    }

    fn seen(
        policy: &SecurityPolicy,
        name: &str,
        facet: Facet,
        rv: &str,
    ) -> PartialObjectMeta<Secret> {
        let mut meta = produced_meta(policy, name, facet);
        meta.resource_version = Some(rv.into());
        PartialObjectMeta {
            types: None,
            metadata: meta,
            _phantom: std::marker::PhantomData,
        }
    }

    /// One watch of `kind` (re)lists exactly `objects`.
    fn relist(observed: &Observed, kind: Kind, objects: &[PartialObjectMeta<Secret>]) {
        let event = |e: watcher::Event<PartialObjectMeta<Secret>>| {
            observed.watch_event(kind, None, &e, no_digest);
        };
        event(watcher::Event::Init);
        for o in objects {
            event(watcher::Event::InitApply(o.clone()));
        }
        event(watcher::Event::InitDone);
    }

    /// Every watch has listed; `objects` are what they found.
    fn listed(observed: &Observed, objects: Vec<(Kind, PartialObjectMeta<Secret>)>) {
        for kind in [
            Kind::NetworkPolicy,
            Kind::Secret,
            Kind::ConfigMap,
            Kind::Job,
        ] {
            let of_kind: Vec<_> = objects
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, o)| o.clone())
                .collect();
            relist(observed, kind, &of_kind);
        }
    }

    fn no_digest(_: &PartialObjectMeta<Secret>) -> Option<u64> {
        None
    }

    /// Every watch has listed, finding one TLS Secret at version 10; what a reconcile verified
    /// of it.
    fn web_tls_listed(o: &Observed, p: &SecurityPolicy) -> HashMap<ObjectKey, Verified> {
        listed(
            o,
            vec![(Kind::Secret, seen(p, "web-tls", Facet::Tls, "10"))],
        );
        HashMap::from([((Kind::Secret, "web-tls".into()), verified("10", Some("h")))])
    }

    fn verified(rv: &str, hash: Option<&str>) -> Verified {
        Verified {
            resource_version: rv.into(),
            desired_hash: hash.map(Into::into),
            facet: Some(Facet::Tls),
        }
    }

    #[test]
    fn a_change_names_the_facets_whose_objects_moved() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        let tls = seen(&p, "web-tls", Facet::Tls, "10");
        let deny = seen(&p, "p-default-deny", Facet::Network, "11");
        listed(
            &o,
            vec![(Kind::Secret, tls), (Kind::NetworkPolicy, deny.clone())],
        );
        let network = Verified {
            facet: Some(Facet::Network),
            ..verified("11", Some("n"))
        };
        let objects = HashMap::from([
            ((Kind::Secret, "web-tls".into()), verified("10", Some("h"))),
            ((Kind::NetworkPolicy, "p-default-deny".into()), network),
        ]);
        o.settle(&p, Settled::new(objects.clone(), None, now));
        assert_eq!(o.why_look(&p, now), Look::Nothing(None));

        // The NetworkPolicy is deleted: only the network facet has to look.
        o.watch_event(
            Kind::NetworkPolicy,
            None,
            &watcher::Event::Delete(deny),
            no_digest,
        );
        assert_eq!(
            o.why_look(&p, now),
            Look::Facets(BTreeSet::from([Facet::Network]))
        );
        // A JWT Secret no reconcile verified appears: that facet has to look too.
        o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(seen(&p, "api-jwt", Facet::Jwt, "12")),
            no_digest,
        );
        assert_eq!(
            o.why_look(&p, now),
            Look::Facets(BTreeSet::from([Facet::Network, Facet::Jwt]))
        );
        // An object of no known facet changed: everything.
        let mut unlabelled = objects;
        unlabelled.insert(
            (Kind::ConfigMap, "other".into()),
            Verified {
                facet: None,
                ..verified("13", None)
            },
        );
        o.settle(&p, Settled::new(unlabelled, None, now));
        assert!(matches!(o.why_look(&p, now), Look::Everything(_)));
        // A changed policy is everything, whatever moved.
        let mut changed = p.clone();
        changed.metadata.generation = Some(2);
        assert_eq!(
            o.why_look(&changed, now),
            Look::Everything("policy changed")
        );
    }

    #[test]
    fn an_unverified_object_of_no_facet_means_everything() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        let objects = web_tls_listed(&o, &p);
        o.settle(&p, Settled::new(objects, None, now));
        assert_eq!(o.why_look(&p, now), Look::Nothing(None));
        // Labelled for the policy, but for no facet.
        let mut stray = seen(&p, "stray", Facet::Tls, "11");
        stray
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(super::super::meta::LABEL_FACET);
        o.watch_event(Kind::Secret, None, &watcher::Event::Apply(stray), no_digest);
        assert_eq!(
            o.why_look(&p, now),
            Look::Everything("an object not verified")
        );
    }

    #[test]
    fn settled_policy_is_unchanged_until_something_moves() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        let objects = web_tls_listed(&o, &p);
        assert_eq!(o.unchanged(&p, now), None, "nothing settled yet");
        o.settle(&p, Settled::new(objects.clone(), None, now));
        assert_eq!(o.unchanged(&p, now), Some(None));

        // Someone edits the Secret: a new resource version.
        o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(seen(&p, "web-tls", Facet::Tls, "11")),
            no_digest,
        );
        assert_eq!(o.unchanged(&p, now), None);
        o.settle(
            &p,
            Settled::new(
                HashMap::from([((Kind::Secret, "web-tls".into()), verified("11", Some("h")))]),
                None,
                now,
            ),
        );
        assert_eq!(o.unchanged(&p, now), Some(None));

        // An extra object labelled for the policy.
        o.watch_event(
            Kind::ConfigMap,
            None,
            &watcher::Event::Apply(seen(&p, "extra", Facet::Tls, "12")),
            no_digest,
        );
        assert_eq!(o.unchanged(&p, now), None);
        o.watch_event(
            Kind::ConfigMap,
            None,
            &watcher::Event::Delete(seen(&p, "extra", Facet::Tls, "13")),
            no_digest,
        );
        assert_eq!(o.unchanged(&p, now), Some(None));

        // The Secret is deleted.
        o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Delete(seen(&p, "web-tls", Facet::Tls, "14")),
            no_digest,
        );
        assert_eq!(o.unchanged(&p, now), None);
    }

    #[test]
    fn a_changed_policy_a_deadline_or_age_means_look() {
        let mut p = policy();
        let o = Observed::default();
        let now = Instant::now();
        let objects = web_tls_listed(&o, &p);
        o.settle(
            &p,
            Settled::new(objects.clone(), Some(now + Duration::from_secs(30)), now),
        );
        assert_eq!(o.unchanged(&p, now), Some(Some(Duration::from_secs(30))));
        assert_eq!(
            o.unchanged(&p, now + Duration::from_secs(30)),
            None,
            "deadline reached"
        );

        o.settle(&p, Settled::new(objects.clone(), None, now));
        assert_eq!(o.unchanged(&p, now + SETTLED_FOR), None, "too old to trust");

        p.metadata.generation = Some(2);
        assert_eq!(o.unchanged(&p, now), None, "spec changed");
        p.metadata.generation = Some(1);
        p.metadata
            .annotations
            .get_or_insert_default()
            .insert("bulwark.dev/rotate".into(), "now".into());
        assert_eq!(o.unchanged(&p, now), None, "rotate requested");
    }

    #[test]
    fn nothing_is_trusted_before_every_watch_has_listed_or_while_one_relists() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        let objects =
            HashMap::from([((Kind::Secret, "web-tls".into()), verified("10", Some("h")))]);
        relist(&o, Kind::Secret, &[seen(&p, "web-tls", Facet::Tls, "10")]);
        o.settle(&p, Settled::new(objects.clone(), None, now));
        assert_eq!(o.unchanged(&p, now), None, "three kinds not listed");
        assert_eq!(o.resource_version(&p, Kind::Secret, "web-tls"), None);
        assert!(!o.nothing_stale(&p, Kind::Secret, Facet::Tls, &BTreeSet::new()));

        listed(
            &o,
            vec![(Kind::Secret, seen(&p, "web-tls", Facet::Tls, "10"))],
        );
        assert_eq!(o.unchanged(&p, now), Some(None));
        o.watch_event(
            Kind::Job,
            None,
            &watcher::Event::<PartialObjectMeta<Secret>>::Init,
            no_digest,
        );
        assert_eq!(o.unchanged(&p, now), None, "a watch relists");
    }

    #[test]
    fn a_relist_forgets_objects_deleted_while_the_watch_was_away() {
        let p = policy();
        let o = Observed::default();
        listed(
            &o,
            vec![
                (Kind::Secret, seen(&p, "a", Facet::Tls, "1")),
                (Kind::Secret, seen(&p, "b", Facet::Tls, "2")),
            ],
        );
        assert_eq!(o.known(), 2);
        relist(&o, Kind::Secret, &[seen(&p, "a", Facet::Tls, "1")]);
        assert_eq!(o.known(), 1);
        assert_eq!(
            o.resource_version(&p, Kind::Secret, "a").as_deref(),
            Some("1")
        );
        assert_eq!(o.resource_version(&p, Kind::Secret, "b"), None);
    }

    #[test]
    fn with_namespace_scopes_each_watch_lists_and_relists_its_own_namespace() {
        let p = policy();
        let mut q = policy();
        q.metadata.namespace = Some("other".into());
        let o = Observed::scoped(&[Some("traffic".into()), Some("other".into())]);
        let in_scope = |scope: &str, objects: &[PartialObjectMeta<Secret>]| {
            for kind in [
                Kind::NetworkPolicy,
                Kind::Secret,
                Kind::ConfigMap,
                Kind::Job,
            ] {
                let event = |e: watcher::Event<PartialObjectMeta<Secret>>| {
                    o.watch_event(kind, Some(scope), &e, no_digest);
                };
                event(watcher::Event::Init);
                for obj in objects.iter().filter(|_| kind == Kind::Secret) {
                    event(watcher::Event::InitApply(obj.clone()));
                }
                event(watcher::Event::InitDone);
            }
        };
        in_scope("traffic", &[seen(&p, "web-tls", Facet::Tls, "1")]);
        assert_eq!(
            o.resource_version(&p, Kind::Secret, "web-tls"),
            None,
            "the other namespace's watches have not listed"
        );
        in_scope("other", &[seen(&q, "web-tls", Facet::Tls, "2")]);
        assert_eq!(
            o.resource_version(&p, Kind::Secret, "web-tls").as_deref(),
            Some("1")
        );
        assert_eq!(
            o.resource_version(&q, Kind::Secret, "web-tls").as_deref(),
            Some("2")
        );
        // A relist in one namespace leaves the other's objects alone.
        in_scope("traffic", &[seen(&p, "web-tls", Facet::Tls, "1")]);
        assert_eq!(
            o.resource_version(&q, Kind::Secret, "web-tls").as_deref(),
            Some("2")
        );
        assert!(!o.nothing_stale(&q, Kind::Secret, Facet::Tls, &BTreeSet::new()));
    }

    #[test]
    fn stale_objects_are_found_per_kind_and_facet() {
        let p = policy();
        let o = Observed::default();
        listed(
            &o,
            vec![
                (Kind::NetworkPolicy, seen(&p, "web", Facet::Network, "1")),
                (Kind::NetworkPolicy, seen(&p, "old", Facet::Network, "2")),
                (Kind::Secret, seen(&p, "web-tls", Facet::Tls, "3")),
            ],
        );
        let keep = BTreeSet::from(["web".to_string()]);
        assert!(!o.nothing_stale(&p, Kind::NetworkPolicy, Facet::Network, &keep));
        assert!(o.nothing_stale(&p, Kind::NetworkPolicy, Facet::Tls, &keep));
        assert!(o.nothing_stale(&p, Kind::ConfigMap, Facet::Network, &keep));
        assert!(!o.nothing_stale(&p, Kind::Secret, Facet::Tls, &keep));
    }

    #[test]
    fn objects_of_another_owner_have_no_usable_version() {
        let p = policy();
        let mut other = policy();
        other.metadata.uid = Some("another-incarnation".into());
        let o = Observed::default();
        let mut foreign = seen(&p, "web-tls", Facet::Tls, "5");
        foreign.metadata.owner_references = owner_reference(&other).map(|r| vec![r]);
        listed(&o, vec![(Kind::Secret, foreign)]);
        assert_eq!(o.resource_version(&p, Kind::Secret, "web-tls"), None);
        assert_eq!(
            o.resource_version(&other, Kind::Secret, "web-tls")
                .as_deref(),
            Some("5")
        );
    }

    #[test]
    fn a_write_whose_echo_is_on_its_way_is_not_a_change() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        listed(&o, vec![]);
        // This reconcile created the Secret at version 20; its watch event has not come yet.
        let created = seen(&p, "web-tls", Facet::Tls, "20");
        o.wrote(Some(Kind::Secret), &created.metadata);
        let objects =
            HashMap::from([((Kind::Secret, "web-tls".into()), verified("20", Some("h")))]);
        o.settle(&p, Settled::new(objects, None, now));
        assert_eq!(o.unchanged(&p, now), Some(None));
        // The echo: recognised as ours, triggers nothing, and the object is as verified.
        assert!(!o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(created),
            no_digest
        ));
        assert_eq!(o.unchanged(&p, now), Some(None));
        // Someone else's change after it does trigger, and is a change.
        let edited = seen(&p, "web-tls", Facet::Tls, "21");
        assert!(o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(edited),
            no_digest
        ));
        assert_eq!(o.unchanged(&p, now), None);
    }

    #[test]
    fn an_echo_that_came_before_the_answer_leaves_nothing_pending() {
        let p = policy();
        let o = Observed::default();
        let now = Instant::now();
        listed(&o, vec![]);
        let created = seen(&p, "web-tls", Facet::Tls, "20");
        let edited = seen(&p, "web-tls", Facet::Tls, "21");
        // The watch brings the write's event, and someone's edit after it, before the write's
        // answer is handled.
        assert!(o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(created.clone()),
            no_digest
        ));
        assert!(o.watch_event(
            Kind::Secret,
            None,
            &watcher::Event::Apply(edited),
            no_digest
        ));
        o.wrote(Some(Kind::Secret), &created.metadata);
        let objects =
            HashMap::from([((Kind::Secret, "web-tls".into()), verified("20", Some("h")))]);
        o.settle(&p, Settled::new(objects, None, now));
        assert_eq!(
            o.unchanged(&p, now),
            None,
            "the edit after our write is a change"
        );
    }

    #[test]
    fn a_digest_decides_which_updates_trigger() {
        let p = policy();
        let o = Observed::default();
        listed(&o, vec![]);
        let job = |rv: &str| seen(&p, "roles", Facet::Postgres, rv);
        let digest_of = |d: u64| move |_: &PartialObjectMeta<Secret>| Some(d);
        assert!(o.watch_event(
            Kind::Job,
            None,
            &watcher::Event::Apply(job("1")),
            digest_of(1)
        ));
        assert!(!o.watch_event(
            Kind::Job,
            None,
            &watcher::Event::Apply(job("2")),
            digest_of(1)
        ));
        assert_eq!(
            o.resource_version(&p, Kind::Job, "roles").as_deref(),
            Some("2")
        );
        assert!(o.watch_event(
            Kind::Job,
            None,
            &watcher::Event::Apply(job("3")),
            digest_of(2)
        ));
        assert!(o.watch_event(
            Kind::Job,
            None,
            &watcher::Event::Delete(job("4")),
            digest_of(2)
        ));
    }

    #[test]
    fn own_writes_are_recognised_once() {
        let p = policy();
        let o = Observed::default();
        let written = seen(&p, "web-tls", Facet::Tls, "7");
        o.wrote(Some(Kind::Secret), &written.metadata);
        assert!(!o.is_own_write(Some(Kind::ConfigMap), &written.metadata));
        assert!(!o.is_own_write(None, &written.metadata));
        assert!(o.is_own_write(Some(Kind::Secret), &written.metadata));
        assert!(
            !o.is_own_write(Some(Kind::Secret), &written.metadata),
            "only once"
        );
        let later = seen(&p, "web-tls", Facet::Tls, "8");
        assert!(!o.is_own_write(Some(Kind::Secret), &later.metadata));
    }
}
