//! The floor under the cold start: the objects one converged policy consists of, written
//! straight to the API server by the benchmark for as many namespaces, with no operator and no
//! reads, and their Jobs run to completion. No operator can bring that many policies to Ready
//! faster than the API server and the Job controller take in what they consist of.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::cluster::IN_FLIGHT;

/// Label of the copies: not Bulwark's, so the operator never sees them.
const LABEL: &str = "bulwark-bench/floor";

/// The objects Bulwark produced in `ns`, as plain objects to create elsewhere: their content
/// (Secret data, NetworkPolicy rules, Job template) kept, Bulwark's labels and owner dropped.
pub async fn templates(client: &Client, ns: &str) -> Vec<(ApiResource, Value)> {
    let mut out = Vec::new();
    out.extend(of_kind::<Secret>(client, ns).await);
    out.extend(of_kind::<ConfigMap>(client, ns).await);
    out.extend(of_kind::<NetworkPolicy>(client, ns).await);
    out.extend(of_kind::<Job>(client, ns).await);
    out
}

async fn of_kind<K>(client: &Client, ns: &str) -> Vec<(ApiResource, Value)>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let listed = api
        .list(&ListParams::default().labels(&bulwark::kube_io::managed_selector()))
        .await
        .expect("list produced objects");
    listed
        .items
        .iter()
        .map(|obj| {
            let mut v = serde_json::to_value(obj).expect("objects serialize");
            let map = v.as_object_mut().expect("an object");
            map.remove("status");
            map.insert("apiVersion".into(), json!(K::api_version(&())));
            map.insert("kind".into(), json!(K::kind(&())));
            map.insert(
                "metadata".into(),
                json!({"name": obj.name_any(), "labels": {LABEL: "true"}}),
            );
            if K::kind(&()) == "Job" {
                // The Job controller sets the selector and the template's uid labels anew.
                if let Some(spec) = v["spec"].as_object_mut() {
                    spec.remove("selector");
                }
                if let Some(labels) = v["spec"]["template"]["metadata"]["labels"].as_object_mut() {
                    labels.retain(|k, _| !k.contains("controller-uid"));
                }
            }
            (ApiResource::erase::<K>(&()), v)
        })
        .collect()
}

/// Applies every template in every namespace, IN_FLIGHT at a time (server-side apply, as the
/// operator writes), then waits until each copied Job is Complete. Returns the time from the
/// first write to the last write's answer, and to the last Job's completion.
pub async fn write(
    client: &Client,
    templates: &[(ApiResource, Value)],
    namespaces: &[String],
    timeout: Duration,
) -> (Duration, Duration) {
    let jobs_expected =
        templates.iter().filter(|(r, _)| r.kind == "Job").count() * namespaces.len();
    let complete = Arc::new(Mutex::new(HashSet::new()));
    let watch = {
        let complete = complete.clone();
        let api: Api<Job> = Api::all(client.clone());
        tokio::spawn(async move {
            let cfg = watcher::Config::default().labels(LABEL);
            let mut events = std::pin::pin!(watcher(api, cfg).default_backoff().applied_objects());
            while let Some(job) = events.next().await {
                let Ok(job) = job else { continue };
                let done = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    });
                if done {
                    complete.lock().expect("complete lock").insert(format!(
                        "{}/{}",
                        job.namespace().unwrap_or_default(),
                        job.name_any()
                    ));
                }
            }
        })
    };
    let started = Instant::now();
    let writes = namespaces
        .iter()
        .flat_map(|ns| templates.iter().map(move |(r, v)| (ns.clone(), r, v)));
    stream::iter(writes)
        .map(|(ns, resource, value)| {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, resource);
            async move {
                let name = value["metadata"]["name"]
                    .as_str()
                    .expect("name")
                    .to_string();
                api.patch(
                    &name,
                    &PatchParams::apply("bench-floor").force(),
                    &Patch::Apply(value),
                )
                .await
                .unwrap_or_else(|e| panic!("floor: apply {ns}/{name}: {e}"));
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<()>()
        .await;
    let written = started.elapsed();
    let deadline = started + timeout;
    while complete.lock().expect("complete lock").len() < jobs_expected {
        assert!(
            Instant::now() < deadline,
            "floor: {} of {jobs_expected} Jobs complete after {timeout:?}",
            complete.lock().expect("complete lock").len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = started.elapsed();
    watch.abort();
    (written, done)
}
