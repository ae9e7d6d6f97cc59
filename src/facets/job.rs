//! The provisioning Job shared by the PostgreSQL and Kafka facets: the operator's own image
//! running `bulwark provision <target>`, inputs mounted from a Secret the facet produces, admin
//! credentials from the user's Secret, the trust bundle when the policy has tls, and the
//! restricted Pod Security settings. Same inputs, same Job.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, KeyToPath,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::api::SecurityPolicy;
use crate::facets::tls::trust_bundle_name;
use crate::kube_io::{Facet, produced_meta};

const INPUT_MOUNT: &str = "/etc/bulwark/input";
const CA_MOUNT: &str = "/etc/bulwark/ca";

/// How provisioning Jobs run; the image is the operator's own.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSettings {
    pub image: String,
    /// Command that starts the operator binary in the image; `provision <target>` follows.
    pub command: Vec<String>,
    pub backoff_limit: i32,
    pub active_deadline_seconds: i64,
    pub ttl_seconds_after_finished: i32,
}

impl JobSettings {
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            command: vec!["bulwark".into()],
            backoff_limit: 3,
            active_deadline_seconds: 300,
            ttl_seconds_after_finished: 3600,
        }
    }
}

/// What one facet's Job needs beyond the common shape.
pub struct ProvisionJob<'a> {
    pub facet: Facet,
    /// `provision <target>`.
    pub target: &'static str,
    /// `<policy>-<infix>-<hash>`, e.g. `pg-roles`.
    pub name_infix: &'static str,
    /// Hash of everything the Job applies: a new plan is a new Job.
    pub hash: &'a str,
    /// Secret produced by the facet whose `keys` are mounted; each key's path goes to the
    /// paired environment variable.
    pub input_secret: String,
    pub inputs: &'a [(&'a str, &'a str)],
    /// Admin credentials (`username`, `password`) and the variables they go to.
    pub admin_secret: &'a str,
    pub admin_env: (&'a str, &'a str),
    /// Variable naming the mounted trust bundle, when the policy has tls.
    pub ca_env: &'a str,
}

/// Ten hex characters of sha256 over length-prefixed parts.
pub fn short_hash(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `<policy>-<infix>-<hash>`, shortened on the policy side to stay a valid label value (63).
pub fn job_name(policy: &str, infix: &str, hash: &str) -> String {
    let suffix = format!("-{infix}-{hash}");
    let room = 63usize.saturating_sub(suffix.len());
    let prefix: String = policy.chars().take(room).collect();
    format!("{}{suffix}", prefix.trim_end_matches(['-', '.']))
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// The Job for `job`, owned by `policy`.
pub fn provision_job(
    policy: &SecurityPolicy,
    job: &ProvisionJob<'_>,
    settings: &JobSettings,
) -> Job {
    let name = policy.name_any();
    let mut env: Vec<EnvVar> = job
        .inputs
        .iter()
        .map(|(key, var)| plain_env(var, format!("{INPUT_MOUNT}/{key}")))
        .collect();
    env.push(secret_env(job.admin_env.0, job.admin_secret, "username"));
    env.push(secret_env(job.admin_env.1, job.admin_secret, "password"));
    let mut volumes = vec![Volume {
        name: "input".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(job.input_secret.clone()),
            default_mode: Some(0o400),
            items: Some(
                job.inputs
                    .iter()
                    .map(|(k, _)| KeyToPath {
                        key: (*k).into(),
                        path: (*k).into(),
                        mode: None,
                    })
                    .collect(),
            ),
            optional: Some(false),
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "input".into(),
        mount_path: INPUT_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    if policy.spec.tls.is_some() {
        env.push(plain_env(job.ca_env, format!("{CA_MOUNT}/ca.crt")));
        volumes.push(Volume {
            name: "ca".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: trust_bundle_name(&name),
                items: Some(vec![KeyToPath {
                    key: "ca.crt".into(),
                    path: "ca.crt".into(),
                    mode: None,
                }]),
                default_mode: Some(0o444),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "ca".into(),
            mount_path: CA_MOUNT.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }

    let quantities = |cpu: &str, mem: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(mem.into())),
        ])
    };
    let mut command = settings.command.clone();
    command.extend(["provision".to_string(), job.target.to_string()]);
    let container = Container {
        name: "provision".into(),
        image: Some(settings.image.clone()),
        command: Some(command),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some(quantities("10m", "32Mi")),
            limits: Some(quantities("500m", "128Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };

    let meta = produced_meta(policy, job_name(&name, job.name_infix, job.hash), job.facet);
    let pod_meta = kube::api::ObjectMeta {
        labels: meta.labels.clone(),
        ..Default::default()
    };
    Job {
        metadata: meta,
        spec: Some(JobSpec {
            backoff_limit: Some(settings.backoff_limit),
            active_deadline_seconds: Some(settings.active_deadline_seconds),
            ttl_seconds_after_finished: Some(settings.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(pod_meta),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_stay_valid_label_values() {
        assert_eq!(
            job_name("traffic", "pg-roles", "0a1b2c3d4e"),
            "traffic-pg-roles-0a1b2c3d4e"
        );
        let long = "p".repeat(100);
        let name = job_name(&long, "kafka-users", "0a1b2c3d4e");
        assert_eq!(name.len(), 63);
        assert!(name.ends_with("-kafka-users-0a1b2c3d4e"));
    }

    #[test]
    fn hashes_separate_their_parts() {
        assert_ne!(short_hash(&[b"ab", b"c"]), short_hash(&[b"a", b"bc"]));
        assert_eq!(short_hash(&[b"x"]).len(), 10);
    }
}
