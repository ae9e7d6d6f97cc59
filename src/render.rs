//! Offline views of a policy: the objects it would produce and the reachability they allow.

use anyhow::{Context as _, bail};
use kube::ResourceExt;
use serde::Deserialize;

use crate::api::SecurityPolicy;
use crate::facets::network::{desired_network_policies, reachability, render_reachability};

/// Reads every SecurityPolicy document of a YAML stream; other kinds are an error naming the document.
pub fn parse_policies(yaml: &str) -> anyhow::Result<Vec<SecurityPolicy>> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .with_context(|| format!("document {}: not valid YAML", i + 1))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default();
        if kind != "SecurityPolicy" {
            bail!("document {}: kind {kind:?} is not SecurityPolicy", i + 1);
        }
        let mut policy: SecurityPolicy = serde_yaml::from_value(value)
            .with_context(|| format!("document {}: invalid SecurityPolicy", i + 1))?;
        if policy.metadata.namespace.is_none() {
            policy.metadata.namespace = Some("default".into());
        }
        out.push(policy);
    }
    Ok(out)
}

/// The objects each policy would produce, as a YAML stream (secret values are never printed).
pub fn render(policies: &[SecurityPolicy]) -> anyhow::Result<String> {
    let mut out = String::new();
    for policy in policies {
        for np in desired_network_policies(policy) {
            out.push_str("---\n");
            out.push_str(&serde_yaml::to_string(&np)?);
        }
    }
    Ok(out)
}

/// The tier-to-tier reachability matrix of each policy's produced NetworkPolicies.
pub fn explain(policies: &[SecurityPolicy]) -> String {
    let mut out = String::new();
    for policy in policies {
        let produced = desired_network_policies(policy);
        let tiers: Vec<String> = policy.spec.tiers.keys().cloned().collect();
        out.push_str(&format!(
            "SecurityPolicy {}/{}: ports each tier (row) may open on each tier (column)\n",
            policy.namespace().unwrap_or_default(),
            policy.name_any()
        ));
        if policy.spec.network.is_none() {
            out.push_str(
                "  no network section: no NetworkPolicy is produced, every path stays open\n\n",
            );
            continue;
        }
        out.push_str(&render_reachability(
            &reachability(policy, &produced),
            &tiers,
        ));
        out.push('\n');
    }
    out
}
