//! The reconciler: orders the facets' pure builders, applies their output, writes status.

pub mod consistency;
pub mod credentials;
pub mod job;
pub mod jwt;
pub mod kafka;
pub mod leader;
pub mod postgres;
pub mod rotation;
pub mod scope;
pub mod status;
pub mod tls;
pub mod watches;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Future, StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::Instrument;

use crate::api::{DeletionPolicy, ManagedObject, SecurityPolicy, SecurityPolicyStatus};
use crate::facets::network::desired_network_policies;
use crate::kube_io::{
    Applier, ApplyError, Contested, FIELD_MANAGER, Facet, Kind, LABEL_POLICY, Look, Observed,
    RepairBudget, Settled, is_produced_by, managed_selector, status_digest,
};
use crate::telemetry::Metrics;
use scope::Scope;
use status::{ConditionStatus, FacetReport};
use watches::{NoPause, paced};

/// Finalizer that lets Bulwark apply `deletionPolicy` before the policy disappears.
pub const FINALIZER: &str = "bulwark.dev/cleanup";

/// Reconcile failures; small on purpose (big sources are boxed).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{context}: {source}")]
    Kube {
        context: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    fn kube(context: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Kube {
            context,
            source: Box::new(source),
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Apply(ApplyError::Conflict { .. }) => "conflict",
            Error::Apply(_) => "apply",
            Error::Kube { .. } => "kube",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

/// Operator settings that do not come from a policy.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespaces to watch; empty means cluster-wide.
    pub namespaces: Vec<String>,
    /// Policies reconciled at the same time.
    pub concurrency: u16,
    /// Identity in Events (`reportingInstance`).
    pub instance: String,
    /// Image of the Jobs that run `bulwark provision ...`: this operator's own image.
    pub job_image: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            concurrency: 16,
            instance: "bulwark".into(),
            job_image: default_job_image(),
        }
    }
}

/// The image this build of the operator is published as.
pub fn default_job_image() -> String {
    format!("bulwark:{}", env!("CARGO_PKG_VERSION"))
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    /// Who the operator's Events say reported them.
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub job_image: String,
    /// How often each produced object was restored lately; bounds fights with other writers.
    pub repairs: RepairBudget,
    /// What the watches say about produced objects, and what each policy's last complete
    /// reconcile verified.
    pub observed: Observed,
    /// Key builds that may generate RSA keys (seconds of CPU each) run one fewer at a time than
    /// there are cores, so a burst of them leaves a core to the runtime and to everything else.
    rsa_lane: tokio::sync::Semaphore,
    failures: Mutex<HashMap<String, u32>>,
    managed: Mutex<BTreeMap<String, BTreeMap<&'static str, i64>>>,
    certificates: Mutex<BTreeMap<(String, String), Vec<String>>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, instance: String, job_image: String) -> Self {
        let reporter = Reporter {
            controller: "bulwark".into(),
            instance: Some(instance),
        };
        Self {
            reporter,
            client,
            metrics,
            job_image,
            repairs: RepairBudget::default(),
            observed: Observed::default(),
            rsa_lane: tokio::sync::Semaphore::new(rsa_lane_width()),
            failures: Mutex::new(HashMap::new()),
            managed: Mutex::new(BTreeMap::new()),
            certificates: Mutex::new(BTreeMap::new()),
        }
    }

    /// A recorder for the Events of one reconcile. kube's recorder folds every later Event of
    /// the same reason about the same object into a series of the first one's note, for six
    /// minutes, and keeps each Event it sent in memory for as long: one recorder per reconcile
    /// keeps every transition's own note and holds nothing afterwards.
    pub fn recorder(&self) -> Recorder {
        Recorder::new(self.client.clone(), self.reporter.clone())
    }

    /// Exponential backoff per policy: 5 s, 10 s, 20 s ... capped at 5 minutes.
    fn next_backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failure map lock");
        let n = failures.entry(uid.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_for(*n)
    }

    fn clear_failures(&self, uid: &str) {
        self.failures.lock().expect("failure map lock").remove(uid);
    }

    fn record_managed(&self, key: String, counts: Option<BTreeMap<&'static str, i64>>) {
        let mut managed = self.managed.lock().expect("managed map lock");
        match counts {
            Some(c) => managed.insert(key, c),
            None => managed.remove(&key),
        };
        let mut totals: BTreeMap<&'static str, i64> = BTreeMap::new();
        for counts in managed.values() {
            for (kind, n) in counts {
                *totals.entry(kind).or_default() += n;
            }
        }
        for kind in ["NetworkPolicy", "Secret", "ConfigMap", "Job"] {
            self.metrics
                .set_managed(kind, totals.get(kind).copied().unwrap_or(0));
        }
    }
}

impl Context {
    /// Publishes each certificate's expiry for one policy, dropping gauges of certificates that went away.
    fn record_certificates(&self, ns: &str, policy: &str, certs: &[crate::api::CertificateStatus]) {
        let values: Vec<(String, i64)> = certs
            .iter()
            .filter_map(|c| {
                let at: jiff::Timestamp = c.not_after.parse().ok()?;
                Some((c.name.clone(), at.as_second()))
            })
            .collect();
        let mut known = self.certificates.lock().expect("certificate map lock");
        let key = (ns.to_string(), policy.to_string());
        let previous = known.remove(&key).unwrap_or_default();
        self.metrics
            .set_certificates(ns, policy, &previous, &values);
        if !values.is_empty() {
            known.insert(key, values.into_iter().map(|(n, _)| n).collect());
        }
    }
}

/// The rotate request a produced Secret records as acted upon: the request itself when this run
/// acted on it or the Secret is new, otherwise what the Secret already recorded.
pub(crate) fn rotation_mark(
    requested: &Option<String>,
    observed: Option<Option<String>>,
    acted: bool,
) -> Option<String> {
    match observed {
        Some(mark) if !acted => mark,
        _ => requested.clone(),
    }
}

/// Records on a Kafka user or PostgreSQL role Secret when its password was generated; a Secret
/// whose password this run kept keeps what it records.
pub(crate) fn stamp_password_set_at(
    secret: &mut Secret,
    generated: bool,
    observed: Option<&String>,
) {
    let at = crate::audit::password_set_at(
        generated,
        observed.map(String::as_str),
        jiff::Timestamp::now(),
    );
    if let Some(at) = at {
        secret
            .annotations_mut()
            .insert(crate::audit::ANNOTATION_PASSWORD_SET_AT.to_string(), at);
    }
}

/// Key builds that may generate RSA keys at once: one fewer than the cores, at least one.
fn rsa_lane_width() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

impl Context {
    /// Runs a key build on the blocking pool; one that may generate an RSA key (`rsa`) first
    /// waits for a place in the RSA lane. ECDSA and Ed25519 builds (well under a millisecond)
    /// never queue behind RSA ones.
    pub(crate) async fn build_keys<T: Send + 'static>(
        &self,
        rsa: bool,
        build: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        let _place = if rsa {
            Some(
                self.rsa_lane
                    .acquire()
                    .await
                    .expect("the RSA lane is never closed"),
            )
        } else {
            None
        };
        tokio::task::spawn_blocking(build).await
    }
}

/// Whether building `policy`'s keys may generate an RSA key (a CA, a certificate or a JWT key).
pub(crate) fn may_generate_rsa(policy: &SecurityPolicy) -> bool {
    use crate::api::{JwtAlgorithm, KeyAlgorithm, PrivateKeySpec};
    let rsa = |k: Option<&PrivateKeySpec>| k.is_some_and(|k| k.algorithm == KeyAlgorithm::Rsa);
    let tls = policy.spec.tls.as_ref().is_some_and(|tls| {
        rsa(tls.ca.as_ref().and_then(|c| c.private_key.as_ref()))
            || rsa(tls.defaults.as_ref().and_then(|d| d.private_key.as_ref()))
            || tls.certificates.iter().any(|c| rsa(c.private_key.as_ref()))
    });
    let jwt = policy
        .spec
        .jwt
        .iter()
        .flatten()
        .any(|k| k.algorithm == JwtAlgorithm::RS256);
    tls || jwt
}

/// Delay after the `failures`-th consecutive failure of one policy.
pub fn backoff_for(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let mut ctx = Context::new(
        client.clone(),
        metrics,
        settings.instance.clone(),
        settings.job_image.clone(),
    );
    // Each kind is watched once per scope; all of them must have listed.
    ctx.observed = Observed::scoped(&scopes);
    let ctx = Arc::new(ctx);
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let children = watcher::Config::default()
        .labels(&managed_selector())
        .page_size(50);
    let controllers = scopes.into_iter().map(|ns| {
        let ns = ns.as_deref();
        let metrics = &ctx.metrics;
        let (store, writer) = reflector::store();
        let policies = paced(
            watcher(
                scoped::<SecurityPolicy>(&client, ns),
                watcher::Config::default().page_size(50),
            )
            .modify(forget_unread_fields)
            .reflect(writer)
            .applied_objects()
            .try_filter({
                let ctx = ctx.clone();
                move |p| futures::future::ready(!ctx.observed.is_own_write(None, p.meta()))
            }),
            metrics.clone(),
        );
        Controller::for_stream(policies, store)
            .owns_stream(owned::<NetworkPolicy>(
                &ctx,
                ns,
                &children,
                Kind::NetworkPolicy,
            ))
            .owns_stream(owned::<Secret>(&ctx, ns, &children, Kind::Secret))
            .owns_stream(owned::<ConfigMap>(&ctx, ns, &children, Kind::ConfigMap))
            .owns_stream(owned_jobs(&ctx, ns, &children))
            .with_config(controller::Config::default().concurrency(settings.concurrency))
            .trigger_backoff(NoPause)
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .boxed()
    });
    let metrics = ctx.metrics.clone();
    stream::select_all(controllers)
        .for_each(|res| {
            let metrics = metrics.clone();
            async move {
                match res {
                    Err(controller::Error::QueueError(e)) => {
                        metrics.record_watch_error();
                        tracing::warn!(error = %e, "watching the API server failed; retrying with backoff");
                    }
                    Err(e) => tracing::debug!(error = %e, "controller event"),
                    Ok(_) => {}
                }
            }
        })
        .await;
}

/// Drops what no reconcile reads from a cached policy: its managedFields (larger than the rest
/// of the policy once status is written) and kubectl's copy of the last applied spec.
fn forget_unread_fields(policy: &mut SecurityPolicy) {
    policy.managed_fields_mut().clear();
    policy
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// A metadata-only watch of one kind of produced object, paced on its own; what it sees is
/// also kept in [`Context::observed`], and the echoes of our own writes trigger nothing.
fn owned<K>(
    ctx: &Arc<Context>,
    ns: Option<&str>,
    config: &watcher::Config,
    kind: Kind,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let api = scoped::<PartialObjectMeta<K>>(&ctx.client, ns);
    triggering(ctx, ns, watcher(api, config.clone()), kind, |_| None)
}

/// The watch of the provisioning Jobs, in full: the Job controller updates a running Job's
/// status several times, and only a change of its outcome (what [`job::follow_job`] reads)
/// triggers a reconcile.
fn owned_jobs(
    ctx: &Arc<Context>,
    ns: Option<&str>,
    config: &watcher::Config,
) -> impl futures::Stream<Item = Result<Job, watcher::Error>> + Send + 'static {
    let api = scoped::<Job>(&ctx.client, ns);
    triggering(ctx, ns, watcher(api, config.clone()), Kind::Job, |job| {
        Some(job::outcome_digest(job))
    })
}

/// Feeds `watch` into [`Context::observed`] and keeps only the objects whose event should
/// trigger a reconcile of their policy; paced on its own.
fn triggering<K>(
    ctx: &Arc<Context>,
    ns: Option<&str>,
    watch: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    kind: Kind,
    digest: fn(&K) -> Option<u64>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
{
    let seen = ctx.clone();
    let scope = ns.map(str::to_string);
    paced(
        watch
            .filter(move |event| {
                let keep = match event {
                    Ok(event) => seen
                        .observed
                        .watch_event(kind, scope.as_deref(), event, digest),
                    Err(_) => true,
                };
                futures::future::ready(keep)
            })
            .touched_objects(),
        ctx.metrics.clone(),
    )
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn reconcile(policy: Arc<SecurityPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<SecurityPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let span = tracing::info_span!("reconcile", policy = %policy.name_any(), namespace = %ns);
    let policy = match with_finalizer(&api, policy, &ctx).await {
        Ok(Some(policy)) => policy,
        // Our copy of the policy is behind the server's: the newer version's event follows.
        Ok(None) => return Ok(Action::await_change()),
        Err(e) => {
            ctx.metrics
                .record_reconcile(e.metric_label(), started.elapsed());
            return Err(e);
        }
    };
    let result = finalizer(&api, FINALIZER, policy.clone(), |event| async {
        match event {
            FinalizerEvent::Apply(p) => apply(&p, &ctx).await,
            FinalizerEvent::Cleanup(p) => cleanup(&p, &ctx).await,
        }
    })
    .instrument(span)
    .await;
    let result = match result {
        // The policy went away while its finalizer was being removed: nothing is left to do.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    let label = match &result {
        Ok(_) => "success",
        Err(e) => e.metric_label(),
    };
    ctx.metrics.record_reconcile(label, started.elapsed());
    if result.is_ok() {
        ctx.clear_failures(&policy.uid().unwrap_or_default());
    }
    result
}

/// Adds the finalizer to a policy that lacks it and is not being deleted, and hands back the
/// policy as written, so the same reconcile goes on to apply it (kube's helper would add it and
/// wait for that write's echo to come back as a second reconcile). None when the policy changed
/// on the server since it was cached: its newer version's event is on its way.
async fn with_finalizer(
    api: &Api<SecurityPolicy>,
    policy: Arc<SecurityPolicy>,
    ctx: &Context,
) -> Result<Option<Arc<SecurityPolicy>>, Error> {
    if policy.meta().deletion_timestamp.is_some()
        || policy.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(Some(policy));
    }
    let mut finalizers = policy.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    // The resourceVersion makes the merge patch conditional: the list is replaced only if no
    // one changed the policy since.
    let patch = json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": policy.resource_version(),
    }});
    match api
        .patch(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(mut written) => {
            ctx.observed.wrote(None, written.meta());
            forget_unread_fields(&mut written);
            Ok(Some(Arc::new(written)))
        }
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(None),
        Err(e) => Err(Error::kube("add finalizer")(e)),
    }
}

fn error_policy(policy: Arc<SecurityPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.next_backoff(&policy.uid().unwrap_or_default());
    tracing::warn!(policy = %policy.name_any(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn apply(policy: &SecurityPolicy, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    // The watches are the only source of "nothing changed": while one fails, ask the server.
    let watched = ctx.metrics.watches_failing() == 0;
    let look = if watched {
        ctx.observed.why_look(policy, started)
    } else {
        Look::Everything("a watch is failing")
    };
    let changed = match look {
        Look::Nothing(wait) => {
            ctx.metrics.record_unchanged();
            return Ok(wait.map_or_else(Action::await_change, Action::requeue));
        }
        Look::Facets(facets) => Some(facets),
        Look::Everything(why) => {
            tracing::debug!(policy = %policy.name_any(), why, "complete reconcile");
            None
        }
    };
    let last = ctx.observed.unsettle(policy);
    // Our last status write may not be in the cache yet: build on it, not on what it replaced.
    let caught_up;
    let policy = match ctx.observed.unseen_status(policy) {
        Some(status) => {
            let mut p = policy.clone();
            p.status = Some(status);
            caught_up = p;
            &caught_up
        }
        None => policy,
    };
    let ns = policy.namespace().unwrap_or_default();
    ctx.repairs.prune(std::time::Instant::now());
    let applier = Applier::new(policy, &ctx.metrics, &ctx.repairs);
    let applier = if watched {
        let verified = last.as_ref().map(|l| l.objects.clone()).unwrap_or_default();
        applier.with_observed(&ctx.observed, verified)
    } else {
        applier
    };
    let mut reports = Vec::new();
    let mut managed_objects = Vec::new();
    // A facet whose Secret names cannot be used is reported and left alone, as if absent.
    let unusable = crate::facets::names::secret_name_problems(policy);
    let masked;
    let policy = if unusable.is_empty() {
        policy
    } else {
        masked = crate::facets::names::without_facets(policy, unusable.keys());
        &masked
    };
    // Only the facets whose objects changed are rebuilt, when nothing else did.
    let mut scope = match (changed, &last) {
        (Some(changed), Some(last)) if unusable.is_empty() => {
            Scope::partial(policy, changed, last).unwrap_or_else(Scope::everything)
        }
        _ => Scope::everything(),
    };
    if let Some(facets) = scope.facets() {
        tracing::debug!(policy = %policy.name_any(), ?facets, "reconcile of the facets that changed");
    }
    reports.extend(unusable.into_iter().map(|(facet, message)| FacetReport {
        facet,
        status: ConditionStatus::False,
        reason: "InvalidSpec".into(),
        message,
    }));
    let previous = policy.status.clone().unwrap_or_default();

    let mut recheck = false;
    if scope.runs(Facet::Network) {
        let network = reconcile_network(policy, ctx, &applier, &ns, &mut managed_objects).await?;
        recheck = network.as_ref().is_some_and(|r| r.reason == "Conflict");
        reports.extend(network);
    } else {
        Scope::carry(
            Facet::Network,
            &previous,
            &mut reports,
            &mut managed_objects,
        );
    }
    let mut certificates = Vec::new();
    let mut next_renewal = None;
    let mut handled_rotation = previous.handled_rotation.clone();
    let mut handled_ca_rotation = previous.handled_ca_rotation.clone();
    let mut ca_rollover_phase = None;
    let mut bundle = None;
    let mut bundle_digest = last.as_ref().and_then(|l| l.bundle);
    // rotate-all runs the facets' rotations in this order: each facet may rotate for it only
    // once the ones before it report done.
    let mut rotate_all = rotation::Facts::default();
    if !scope.runs(Facet::Tls) {
        Scope::carry(Facet::Tls, &previous, &mut reports, &mut managed_objects);
        certificates = previous.certificates.clone();
        ca_rollover_phase = previous.ca_rollover_phase.clone();
    } else if let Some(outcome) =
        tls::reconcile_tls(policy, ctx, &applier, &ns, &mut managed_objects).await?
    {
        recheck |= outcome.recheck;
        certificates = outcome.certificates;
        next_renewal = outcome.next_renewal;
        handled_rotation = outcome.handled_rotation;
        handled_ca_rotation = outcome.handled_ca_rotation;
        ca_rollover_phase = outcome.phase;
        bundle = outcome.bundle;
        reports.push(outcome.report);
        rotate_all.set(rotation::RotationPhase::CaRollover, outcome.rotate_all.0);
        rotate_all.set(rotation::RotationPhase::Leaves, outcome.rotate_all.1);
    }
    if scope.runs(Facet::Tls) {
        let built = scope::bundle_digest(bundle.as_deref());
        scope.bundle_built(built, bundle_digest);
        bundle_digest = built;
    }
    let mut job_requeue = None;
    let mut progress = rotation::Progress::Absent;
    let gate = rotation::Gate::new(policy, &rotate_all, rotation::RotationPhase::Kafka);
    if !scope.runs(Facet::Kafka) {
        Scope::carry(Facet::Kafka, &previous, &mut reports, &mut managed_objects);
    } else if let Some(outcome) = kafka::reconcile_kafka(
        policy,
        ctx,
        &applier,
        &ns,
        &mut managed_objects,
        bundle.as_deref(),
        &gate,
        &mut progress,
    )
    .await?
    {
        job_requeue = outcome.requeue;
        reports.push(outcome.report);
    }
    rotate_all.set(rotation::RotationPhase::Kafka, progress);
    let mut progress = rotation::Progress::Absent;
    let gate = rotation::Gate::new(policy, &rotate_all, rotation::RotationPhase::Postgres);
    if !scope.runs(Facet::Postgres) {
        Scope::carry(
            Facet::Postgres,
            &previous,
            &mut reports,
            &mut managed_objects,
        );
    } else if let Some(outcome) = postgres::reconcile_postgres(
        policy,
        ctx,
        &applier,
        &ns,
        &mut managed_objects,
        bundle.as_deref(),
        &gate,
        &mut progress,
    )
    .await?
    {
        job_requeue = earliest(job_requeue, outcome.requeue);
        reports.push(outcome.report);
    }
    rotate_all.set(rotation::RotationPhase::Postgres, progress);
    let mut jwt_keys = Vec::new();
    let mut progress = rotation::Progress::Absent;
    let gate = rotation::Gate::new(policy, &rotate_all, rotation::RotationPhase::Jwt);
    if !scope.runs(Facet::Jwt) {
        Scope::carry(Facet::Jwt, &previous, &mut reports, &mut managed_objects);
        jwt_keys = previous.jwt.clone();
    } else if let Some(outcome) = jwt::reconcile_jwt(
        policy,
        ctx,
        &applier,
        &ns,
        &mut managed_objects,
        &gate,
        &mut progress,
    )
    .await?
    {
        recheck |= outcome.recheck;
        jwt_keys = outcome.keys;
        next_renewal = earliest(next_renewal, outcome.next_event);
        reports.push(outcome.report);
    }
    rotate_all.set(rotation::RotationPhase::Jwt, progress);
    for facet in Facet::ALL.into_iter().filter(|f| scope.runs(*f)) {
        ctx.metrics.record_facet(facet);
    }
    let contested = applier.contested();
    let contested_retry = report_contested(&mut reports, &contested, policy);
    job_requeue = earliest(job_requeue, contested_retry);
    reports.sort_by_key(|r| r.facet);
    managed_objects.sort();

    let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
    for obj in &managed_objects {
        for kind in ["NetworkPolicy", "Secret", "ConfigMap", "Job"] {
            if obj.kind == kind {
                *counts.entry(kind).or_default() += 1;
            }
        }
    }
    ctx.record_managed(format!("{ns}/{}", policy.name_any()), Some(counts));

    ctx.record_certificates(&ns, &policy.name_any(), &certificates);
    // status.findings counts certificates by expiry threshold: look again when one is crossed.
    next_renewal = earliest(
        next_renewal,
        crate::audit::next_expiry_step(&certificates, jiff::Timestamp::now()),
    );
    let next = SecurityPolicyStatus {
        observed_generation: policy.meta().generation,
        conditions: Vec::new(),
        managed_objects,
        certificates,
        findings: BTreeMap::new(),
        handled_rotation,
        handled_ca_rotation,
        ca_rollover_phase,
        jwt: jwt_keys,
        rotation: rotation::rotation_status(
            previous.rotation.as_ref(),
            rotation::requested(policy).as_deref(),
            &rotate_all,
            &reports,
        ),
    };
    let rotation_now = next.rotation.clone();
    let status_now = write_status(policy, ctx, &reports, next).await?;
    rotation::record_transition(
        ctx,
        policy,
        previous.rotation.as_ref(),
        rotation_now.as_ref(),
    )
    .await;
    // A foreign object or a missing input carries none of our labels: no watch says when it changes.
    let until_renewal = next_renewal.map(|at| {
        Duration::try_from(at.duration_since(jiff::Timestamp::now()))
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    });
    let requeue = earliest(
        earliest(recheck.then_some(Duration::from_secs(15)), until_renewal),
        job_requeue,
    );
    // The facets not rebuilt keep their deadlines, and the age of the last complete look.
    let now = Instant::now();
    let (until, at) = scope.times(last.as_ref(), requeue.map(|d| now + d), started);
    if scope.is_partial() {
        ctx.metrics.record_partial();
    }
    if watched && let Some(verified) = applier.verified() {
        let mut objects: HashMap<_, _> = last
            .map(|l| l.objects)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, v)| v.facet.is_some_and(|f| !scope.runs(f)))
            .collect();
        objects.extend(verified);
        let mut settled = Settled::new(objects, until, at);
        settled.status = Some(status_digest(Some(&status_now)));
        settled.bundle = bundle_digest;
        ctx.observed.settle(policy, settled);
    }
    Ok(until.map_or_else(Action::await_change, |u| {
        Action::requeue(u.saturating_duration_since(now))
    }))
}

/// The earlier of two optional times (or delays); None only when both are.
fn earliest<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Marks each facet with an object whose repair was deferred as `Contested`, naming the object
/// and the writer it is fighting with; returns when to look again.
fn report_contested(
    reports: &mut Vec<FacetReport>,
    contested: &[Contested],
    policy: &SecurityPolicy,
) -> Option<Duration> {
    for c in contested {
        let by = c
            .manager
            .as_deref()
            .map(|m| format!(" by field manager {m:?}"))
            .unwrap_or_default();
        tracing::warn!(
            policy = %policy.name_any(),
            kind = %c.kind,
            name = %c.name,
            manager = ?c.manager,
            retry_in = ?c.retry_after,
            "a produced object keeps being changed by another writer; its repair waits"
        );
        // No countdown in the message: a status that changes every reconcile would wake the
        // policy again and again.
        let message = format!(
            "{} {} keeps being changed{by}; Bulwark restores it {} times, then ever less often (15 s, 30 s ... 5 min). Stop the other writer or remove the object from its scope",
            c.kind,
            c.name,
            crate::kube_io::FREE_REPAIRS,
        );
        let Some(facet) = c.facet else { continue };
        match reports.iter_mut().find(|r| r.facet == facet) {
            Some(r) if r.reason == "Contested" => r.message.push_str(&format!("; {message}")),
            Some(r) => {
                r.status = ConditionStatus::False;
                r.reason = "Contested".into();
                r.message = message;
            }
            None => reports.push(FacetReport {
                facet,
                status: ConditionStatus::False,
                reason: "Contested".into(),
                message,
            }),
        }
    }
    contested.iter().map(|c| c.retry_after).min()
}

/// A 422 from the API server: the object itself is invalid, retrying cannot help.
fn is_invalid(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 422)
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

async fn reconcile_network(
    policy: &SecurityPolicy,
    ctx: &Context,
    applier: &Applier<'_>,
    ns: &str,
    managed: &mut Vec<ManagedObject>,
) -> Result<Option<FacetReport>, Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    let desired = desired_network_policies(policy);
    let keep: BTreeSet<String> = desired.iter().map(|np| np.name_any()).collect();
    let mut conflicts = Vec::new();
    let mut rejected = Vec::new();
    for np in desired {
        let name = np.name_any();
        match applier.apply(&api, np).await {
            Ok(_) => managed.push(ManagedObject {
                kind: "NetworkPolicy".into(),
                name,
                facet: Facet::Network.label().into(),
            }),
            Err(ApplyError::Conflict { kind, name }) => conflicts.push(format!("{kind} {name}")),
            // The API server refused what the spec asks for (a tier selector or an ipBlock it
            // judges invalid): a spec problem, reported, not retried until the spec changes.
            Err(ApplyError::Api { source, .. }) if is_invalid(&source) => {
                let tier = name
                    .strip_prefix(&format!("{}-tier-", policy.name_any()))
                    .unwrap_or("?");
                rejected.push(format!(
                    "spec.tiers.{tier}.podSelector or a spec.network rule of tier {tier}: the API server refused NetworkPolicy {name}: {}",
                    api_message(&source)
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !rejected.is_empty() {
        return Ok(Some(FacetReport {
            facet: Facet::Network,
            status: ConditionStatus::False,
            reason: "InvalidSpec".into(),
            message: rejected.join("; "),
        }));
    }
    let deleted = applier.delete_stale(&api, Facet::Network, &keep).await?;
    if !deleted.is_empty() {
        tracing::info!(deleted = ?deleted, "removed NetworkPolicies no longer declared");
    }
    if policy.spec.network.is_none() {
        return Ok(None);
    }
    Ok(Some(if conflicts.is_empty() {
        FacetReport {
            facet: Facet::Network,
            status: ConditionStatus::True,
            reason: "Applied".into(),
            message: format!("{} NetworkPolicies in their declared state", keep.len()),
        }
    } else {
        FacetReport {
            facet: Facet::Network,
            status: ConditionStatus::False,
            reason: "Conflict".into(),
            message: format!(
                "spec.network: {} already exist(s) without Bulwark's labels and was left untouched; rename or remove it",
                conflicts.join(", ")
            ),
        }
    }))
}

async fn write_status(
    policy: &SecurityPolicy,
    ctx: &Context,
    reports: &[FacetReport],
    mut next: SecurityPolicyStatus,
) -> Result<SecurityPolicyStatus, Error> {
    let previous = policy.status.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    next.conditions = status::conditions(
        &previous.conditions,
        reports,
        policy.meta().generation,
        now.clone(),
    );
    let inconsistencies = consistency::inconsistencies(&policy.spec);
    next.conditions.push(status::consistent_condition(
        &previous.conditions,
        &inconsistencies,
        policy.meta().generation,
        now.clone(),
    ));
    let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    next.findings = crate::audit::status_summary(&ns, &name, &next, &inconsistencies, now.0);
    ctx.metrics.set_policy_findings(&ns, &name, &next.findings);
    if next == previous {
        return Ok(previous);
    }
    let api: Api<SecurityPolicy> =
        Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": SecurityPolicy::api_version(&()),
        "kind": SecurityPolicy::kind(&()),
        "status": next,
    });
    let written = api
        .patch_status(
            &policy.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("write status"))?;
    ctx.observed.wrote_status(&written);
    ctx.metrics.record_write("SecurityPolicyStatus");
    let stands = written.status.clone().unwrap_or_else(|| next.clone());

    let reference = policy.object_ref(&());
    // A new policy's first status: its Ready event names the facets that are not ready yet, and
    // each warning (other than a Job still running) has its own. An event per condition follows
    // each later change.
    let first = previous.conditions.is_empty();
    for changed in status::transitions(&previous.conditions, &next.conditions)
        .into_iter()
        .filter(|c| {
            !first || c.type_ == "Ready" || (c.status == "False" && c.reason != "JobRunning")
        })
    {
        let event = KubeEvent {
            type_: if changed.status == "False" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: changed.reason.clone(),
            note: Some(format!(
                "{} is {}: {}",
                changed.type_, changed.status, changed.message
            )),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder().publish(&event, &reference).await {
            tracing::warn!(error = %e, "could not record event");
        }
    }
    Ok(stands)
}

/// Deletes every object of kind `K` the policy produced.
async fn delete_produced<K>(
    policy: &SecurityPolicy,
    ctx: &Context,
    lp: &ListParams,
    dp: &DeleteParams,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    let listed = api
        .list_metadata(lp)
        .await
        .map_err(Error::kube("list on cleanup"))?;
    for obj in listed
        .items
        .into_iter()
        .filter(|o| is_produced_by(&o.metadata, policy))
    {
        match api.delete(&obj.name_any(), dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("delete on cleanup")(e)),
        }
        ctx.metrics.record_write(&K::kind(&()));
    }
    Ok(())
}

/// Applies `deletionPolicy` and removes what always goes with the policy.
async fn cleanup(policy: &SecurityPolicy, ctx: &Context) -> Result<Action, Error> {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let selector = format!("{},{LABEL_POLICY}={name}", managed_selector());
    let lp = ListParams::default().labels(&selector);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..DeleteParams::default()
    };

    delete_produced::<NetworkPolicy>(policy, ctx, &lp, &background).await?;
    delete_produced::<Job>(policy, ctx, &lp, &background).await?;

    if policy.spec.deletion_policy == DeletionPolicy::Retain {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
        let uid = policy.uid().unwrap_or_default();
        for secret in secrets
            .list_metadata(&lp)
            .await
            .map_err(Error::kube("list Secrets"))?
            .items
        {
            let owners = secret.metadata.owner_references.clone().unwrap_or_default();
            if !owners.iter().any(|o| o.uid == uid) {
                continue;
            }
            let remaining: Vec<_> = owners.into_iter().filter(|o| o.uid != uid).collect();
            let patch = json!({"metadata": {"ownerReferences": remaining}});
            secrets
                .patch(
                    &secret.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(Error::kube("orphan Secret"))?;
            ctx.metrics.record_write("Secret");
        }
    }
    ctx.record_managed(format!("{ns}/{name}"), None);
    ctx.observed.forget(policy);
    ctx.record_certificates(&ns, &name, &[]);
    ctx.metrics.remove_policy_findings(&ns, &name);
    tracing::info!(policy = %name, deletion_policy = ?policy.spec.deletion_policy, "cleaned up");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_keys_anywhere_in_the_spec_take_the_rsa_lane() {
        let ecdsa = "tiers: {}\ntls: {certificates: [{name: api, secretName: api-tls, dnsNames: [api]}]}\njwt: [{name: api, secretName: api-jwt}]";
        assert!(!may_generate_rsa(&crate::facets::test_policy(ecdsa)));
        for rsa in [
            "tiers: {}\ntls: {defaults: {privateKey: {algorithm: RSA}}, certificates: []}",
            "tiers: {}\ntls: {ca: {privateKey: {algorithm: RSA}}, certificates: []}",
            "tiers: {}\ntls: {certificates: [{name: api, secretName: api-tls, dnsNames: [api], privateKey: {algorithm: RSA, size: 3072}}]}",
            "tiers: {}\njwt: [{name: api, secretName: api-jwt, algorithm: RS256}]",
        ] {
            assert!(may_generate_rsa(&crate::facets::test_policy(rsa)), "{rsa}");
        }
        assert!(rsa_lane_width() >= 1);
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff_for(1), Duration::from_secs(5));
        assert_eq!(backoff_for(2), Duration::from_secs(10));
        assert_eq!(backoff_for(4), Duration::from_secs(40));
        assert_eq!(backoff_for(50), Duration::from_secs(300));
    }
}
