//! One module per facet: pure desired-state builders (spec + observed -> objects), no I/O.

pub mod job;
pub mod jwt;
pub mod kafka;
pub mod names;
pub mod network;
pub mod postgres;
pub mod tls;

/// A policy named `traffic` in namespace `traffic`, with a UID, from a spec written as YAML.
#[cfg(test)]
pub(crate) fn test_policy(spec_yaml: &str) -> crate::api::SecurityPolicy {
    let spec: crate::api::SecurityPolicySpec =
        serde_yaml::from_str(spec_yaml).expect("test spec parses");
    let mut p = crate::api::SecurityPolicy::new("traffic", spec);
    p.metadata.namespace = Some("traffic".into());
    p.metadata.uid = Some("0b6f3c52-policy-uid".into());
    p
}
