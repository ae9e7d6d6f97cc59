//! Bulwark: a Kubernetes operator that turns one `SecurityPolicy` into the security hardening of
//! a three-tier application and keeps it that way.

pub mod api;
pub mod audit;
pub mod controller;
pub mod facets;
pub mod kube_io;
pub mod provision;
pub mod render;
pub mod scram;
pub mod telemetry;

/// Renders the CustomResourceDefinition exactly as it is checked in under `crds/`.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&api::SecurityPolicy::crd()).expect("CRD serializes to YAML")
}
