use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::api::SecurityPolicy;

/// Field manager of every write Bulwark makes.
pub const FIELD_MANAGER: &str = "bulwark";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "bulwark";
pub const LABEL_POLICY: &str = "bulwark.dev/policy";
pub const LABEL_FACET: &str = "bulwark.dev/facet";
/// Hash of the desired object as last applied; a live object with the same hash needs no write.
pub const ANNOTATION_DESIRED_HASH: &str = "bulwark.dev/desired-hash";

/// Selector matching every object Bulwark produces; narrows every watch of children.
pub fn managed_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY_VALUE}")
}

/// The facets a policy is made of; each labels the objects it produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Facet {
    Tls,
    Network,
    Kafka,
    Postgres,
    Jwt,
}

impl Facet {
    pub const ALL: [Facet; 5] = [
        Facet::Tls,
        Facet::Network,
        Facet::Kafka,
        Facet::Postgres,
        Facet::Jwt,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Facet::Tls => "tls",
            Facet::Network => "network",
            Facet::Kafka => "kafka",
            Facet::Postgres => "postgres",
            Facet::Jwt => "jwt",
        }
    }

    /// The facet an object's labels name.
    pub fn of(meta: &ObjectMeta) -> Option<Facet> {
        let label = meta.labels.as_ref()?.get(LABEL_FACET)?;
        Facet::ALL.into_iter().find(|f| f.label() == label)
    }

    /// Status condition type reporting this facet.
    pub fn condition_type(self) -> &'static str {
        match self {
            Facet::Tls => "TLSReady",
            Facet::Network => "NetworkReady",
            Facet::Kafka => "KafkaReady",
            Facet::Postgres => "PostgresReady",
            Facet::Jwt => "JWTReady",
        }
    }
}

/// Labels carried by every object a policy produces for one facet.
pub fn produced_labels(policy_name: &str, facet: Facet) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (LABEL_POLICY.to_string(), policy_name.to_string()),
        (LABEL_FACET.to_string(), facet.label().to_string()),
    ])
}

/// Selector of the objects one policy produces for one facet.
pub fn produced_selector(policy_name: &str, facet: Facet) -> String {
    produced_labels(policy_name, facet)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Controller owner reference to the policy; absent when the policy has no UID (offline render).
pub fn owner_reference(policy: &SecurityPolicy) -> Option<OwnerReference> {
    policy.controller_owner_ref(&())
}

/// Metadata of an object produced by `policy` for `facet`: name, namespace, labels, owner.
pub fn produced_meta(policy: &SecurityPolicy, name: impl Into<String>, facet: Facet) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: policy.namespace(),
        labels: Some(produced_labels(&policy.name_any(), facet)),
        owner_references: owner_reference(policy).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

/// True when `meta` was produced by the policy named `policy_name` (labels, and owner UID when both sides have one).
pub fn is_produced_by(meta: &ObjectMeta, policy: &SecurityPolicy) -> bool {
    let labels = meta.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    if label(LABEL_MANAGED_BY) != Some(MANAGED_BY_VALUE)
        || label(LABEL_POLICY) != Some(policy.name_any().as_str())
    {
        return false;
    }
    match (
        policy.meta().uid.as_deref(),
        meta.owner_references.as_deref(),
    ) {
        (Some(uid), Some(owners)) if !owners.is_empty() => owners.iter().any(|o| o.uid == uid),
        _ => true,
    }
}
