//! What the credential facets (PostgreSQL roles, Kafka users) read back before deciding: the
//! passwords in the Secrets they produced, the rotate request each Secret has answered, and
//! their own state Secret. A Secret of a wanted name without our labels is a conflict, never
//! read for its content.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::Error;
use super::rotation::ROTATE_ALL_MARK;
use super::tls::ROTATION_MARK;
use crate::api::SecurityPolicy;
use crate::audit::ANNOTATION_PASSWORD_SET_AT;
use crate::facets::tls::Sensitive;
use crate::kube_io::{Applier, is_produced_by};

#[derive(Default)]
pub struct Existing {
    /// `password` of each existing Secret, by the user or role it belongs to.
    pub passwords: BTreeMap<String, Sensitive<String>>,
    /// The rotation mark of each existing Secret, by Secret name.
    pub marks: BTreeMap<String, Option<String>>,
    /// The rotate-all mark of each existing Secret, by Secret name.
    pub all_marks: BTreeMap<String, Option<String>>,
    /// When each existing Secret's password was set (its `bulwark.dev/password-set-at`), by
    /// Secret name.
    pub set_at: BTreeMap<String, String>,
    /// The rotate-all mark of the state Secret: the request whose Job succeeded.
    pub state_all_mark: Option<String>,
    /// The facet's own state Secret (verifiers, salted credentials), when it exists.
    pub state: Option<BTreeMap<String, ByteString>>,
    /// `Secret <name>` for every wanted name held by an object we did not produce.
    pub conflicts: Vec<String>,
}

/// Reads the Secrets `(owner, secret name)` and the state Secret `state_name`.
pub async fn read_existing(
    applier: &Applier<'_>,
    secrets: &Api<Secret>,
    policy: &SecurityPolicy,
    wanted: Vec<(String, String)>,
    state_name: &str,
) -> Result<Existing, Error> {
    let mut existing = Existing::default();
    // Every credential Secret and the state Secret are read side by side.
    let reads = futures::future::try_join_all(wanted.iter().map(|(_, name)| async {
        applier
            .read(secrets, name)
            .await
            .map_err(Error::kube("read credential Secret"))
    }));
    let state_read = async {
        applier
            .read(secrets, state_name)
            .await
            .map_err(Error::kube("read credential state Secret"))
    };
    let (read, state) = futures::future::try_join(reads, state_read).await?;
    for ((owner, name), secret) in wanted.into_iter().zip(read) {
        let Some(secret) = secret else {
            continue;
        };
        if !is_produced_by(&secret.metadata, policy) {
            existing.conflicts.push(format!("Secret {name}"));
            continue;
        }
        let all_mark = secret.annotations().get(ROTATE_ALL_MARK).cloned();
        existing.all_marks.insert(name.clone(), all_mark);
        if let Some(at) = secret.annotations().get(ANNOTATION_PASSWORD_SET_AT) {
            existing.set_at.insert(name.clone(), at.clone());
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
    if let Some(secret) = state {
        if is_produced_by(&secret.metadata, policy) {
            existing.state_all_mark = secret.annotations().get(ROTATE_ALL_MARK).cloned();
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
