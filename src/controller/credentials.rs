//! What the credential facets (PostgreSQL roles, Kafka users) read back before deciding: the
//! passwords in the Secrets they produced, the rotate request each Secret has answered, and
//! their own state Secret. A Secret of a wanted name without our labels is a conflict, never
//! read for its content.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::Error;
use super::tls::ROTATION_MARK;
use crate::api::SecurityPolicy;
use crate::facets::tls::Sensitive;
use crate::kube_io::is_produced_by;

#[derive(Default)]
pub struct Existing {
    /// `password` of each existing Secret, by the user or role it belongs to.
    pub passwords: BTreeMap<String, Sensitive<String>>,
    /// The rotation mark of each existing Secret, by Secret name.
    pub marks: BTreeMap<String, Option<String>>,
    /// The facet's own state Secret (verifiers, salted credentials), when it exists.
    pub state: Option<BTreeMap<String, ByteString>>,
    /// `Secret <name>` for every wanted name held by an object we did not produce.
    pub conflicts: Vec<String>,
}

/// Reads the Secrets `(owner, secret name)` and the state Secret `state_name`.
pub async fn read_existing(
    secrets: &Api<Secret>,
    policy: &SecurityPolicy,
    wanted: Vec<(String, String)>,
    state_name: &str,
) -> Result<Existing, Error> {
    let mut existing = Existing::default();
    for (owner, name) in wanted {
        let Some(secret) = secrets
            .get_opt(&name)
            .await
            .map_err(Error::kube("read credential Secret"))?
        else {
            continue;
        };
        if !is_produced_by(&secret.metadata, policy) {
            existing.conflicts.push(format!("Secret {name}"));
            continue;
        }
        existing
            .marks
            .insert(name, secret.annotations().get(ROTATION_MARK).cloned());
        let password = secret
            .data
            .as_ref()
            .and_then(|d| d.get("password"))
            .map(|p| String::from_utf8_lossy(&p.0).into_owned());
        if let Some(password) = password {
            existing.passwords.insert(owner, Sensitive::new(password));
        }
    }
    if let Some(secret) = secrets
        .get_opt(state_name)
        .await
        .map_err(Error::kube("read credential state Secret"))?
    {
        if is_produced_by(&secret.metadata, policy) {
            existing.state = secret.data;
        } else {
            existing.conflicts.push(format!("Secret {state_name}"));
        }
    }
    Ok(existing)
}

impl Existing {
    /// A rotate request (`bulwark.dev/rotate` = `requested`) some existing Secret has not answered.
    pub fn rotation_pending(&self, requested: &Option<String>) -> bool {
        requested.is_some() && self.marks.values().any(|m| m != requested)
    }
}
