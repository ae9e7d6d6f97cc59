//! Lists what the audit looks at. Reads only: SecurityPolicies, Pods, Services, and the
//! metadata of produced objects (plus the `rotated-at` entry of JWT signing Secrets, whose other
//! entries are dropped as soon as they arrive).

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client, Resource, ResourceExt};

use super::{NamespaceSnapshot, ProducedObject, policy_label};
use crate::api::SecurityPolicy;
use crate::facets::jwt::ROTATED_AT;
use crate::kube_io::{Facet, LABEL_FACET, managed_selector};

/// An API call that failed, naming what was being listed.
#[derive(Debug, thiserror::Error)]
#[error("listing {what}: {source}")]
pub struct ListError {
    what: String,
    #[source]
    source: Box<kube::Error>,
}

fn listing(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ListError {
    let what = what.into();
    move |source| ListError {
        what,
        source: Box::new(source),
    }
}

/// The namespaces to audit and what is in them: `namespace` alone when given, otherwise every
/// namespace that holds a SecurityPolicy.
pub async fn snapshots(
    client: &Client,
    namespace: Option<&str>,
) -> Result<Vec<NamespaceSnapshot>, ListError> {
    let policies: Api<SecurityPolicy> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let policies = policies
        .list(&ListParams::default())
        .await
        .map_err(listing("SecurityPolicies"))?
        .items;
    let mut namespaces: BTreeSet<String> = policies.iter().filter_map(|p| p.namespace()).collect();
    if let Some(ns) = namespace {
        namespaces.insert(ns.to_string());
    }
    let mut out = Vec::new();
    for ns in namespaces {
        let mut snap = NamespaceSnapshot {
            policies: policies
                .iter()
                .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                .cloned()
                .collect(),
            ..NamespaceSnapshot::default()
        };
        let all = ListParams::default();
        snap.pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&all)
            .await
            .map_err(listing(format!("Pods in {ns}")))?
            .items;
        snap.services = Api::<Service>::namespaced(client.clone(), &ns)
            .list(&all)
            .await
            .map_err(listing(format!("Services in {ns}")))?
            .items;
        snap.produced = produced_objects(client, &ns).await?;
        snap.namespace = ns;
        out.push(snap);
    }
    Ok(out)
}

async fn produced_objects(client: &Client, ns: &str) -> Result<Vec<ProducedObject>, ListError> {
    let managed = ListParams::default().labels(&managed_selector());
    let mut out = Vec::new();
    out.extend(metadata_of::<NetworkPolicy>(client, ns, &managed).await?);
    out.extend(metadata_of::<ConfigMap>(client, ns, &managed).await?);
    out.extend(metadata_of::<Job>(client, ns, &managed).await?);
    let mut secrets = metadata_of::<Secret>(client, ns, &managed).await?;
    // Only JWT signing Secrets record when their key started signing, inside their data.
    let jwt = ListParams::default().labels(&format!(
        "{},{LABEL_FACET}={}",
        managed_selector(),
        Facet::Jwt.label()
    ));
    for secret in Api::<Secret>::namespaced(client.clone(), ns)
        .list(&jwt)
        .await
        .map_err(listing(format!("JWT Secrets in {ns}")))?
        .items
    {
        let rotated_at = secret
            .data
            .as_ref()
            .and_then(|d| d.get(ROTATED_AT))
            .and_then(|v| std::str::from_utf8(&v.0).ok())
            .and_then(|v| v.trim().parse().ok());
        drop(secret.data);
        let name = secret.metadata.name.unwrap_or_default();
        if let Some(obj) = secrets.iter_mut().find(|o| o.name == name) {
            obj.rotated_at = rotated_at;
        }
    }
    out.append(&mut secrets);
    Ok(out)
}

async fn metadata_of<K>(
    client: &Client,
    ns: &str,
    lp: &ListParams,
) -> Result<Vec<ProducedObject>, ListError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let kind = K::kind(&()).to_string();
    let listed = Api::<K>::namespaced(client.clone(), ns)
        .list_metadata(lp)
        .await
        .map_err(listing(format!("{kind}s in {ns}")))?;
    Ok(listed
        .items
        .into_iter()
        .map(|o| produced(&kind, o.metadata))
        .collect())
}

fn produced(kind: &str, meta: ObjectMeta) -> ProducedObject {
    ProducedObject {
        kind: kind.to_string(),
        name: meta.name.clone().unwrap_or_default(),
        policy: policy_label(meta.labels.as_ref().unwrap_or(&Default::default())),
        annotations: meta.annotations.unwrap_or_default(),
        created: meta.creation_timestamp.map(|t| t.0),
        rotated_at: None,
    }
}
