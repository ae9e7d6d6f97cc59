//! `bulwark rotate --all`: sets the rotate-all annotation to a new value and, with `--wait`,
//! follows `status.rotation` until every phase is done. Prints phase names only: no key,
//! password or certificate ever reaches this output.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use super::{ROTATE_ALL_ANNOTATION, RotationPhase, applicable_phases, finished_between};
use crate::api::SecurityPolicy;

/// Field manager of the annotation this command sets.
const FIELD_MANAGER: &str = "bulwark-rotate";
const POLL: Duration = Duration::from_secs(1);

/// Requests a rotation of everything `name` in `ns` produced; with `wait`, follows it until it
/// completes (Ok), a phase fails or `wait` runs out (Err naming the phase).
pub async fn rotate_all(
    client: Client,
    ns: &str,
    name: &str,
    wait: Option<Duration>,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let api: Api<SecurityPolicy> = Api::namespaced(client, ns);
    let policy = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading SecurityPolicy {ns}/{name}"))?
        .ok_or_else(|| anyhow!("SecurityPolicy {ns}/{name} not found"))?;
    let previous = policy.annotations().get(ROTATE_ALL_ANNOTATION).cloned();
    let mut value = jiff::Timestamp::now().to_string();
    if previous.as_ref() == Some(&value) {
        value.push_str("-1");
    }
    let patch = json!({"metadata": {"annotations": {ROTATE_ALL_ANNOTATION: value}}});
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("annotating SecurityPolicy {ns}/{name}"))?;
    let phases = applicable_phases(&policy);
    let names: Vec<&str> = phases.iter().map(|p| p.as_str()).collect();
    writeln!(
        out,
        "rotation {value:?} requested for SecurityPolicy {ns}/{name} ({ROTATE_ALL_ANNOTATION}); phases: {}",
        if names.is_empty() {
            "none, the policy produces nothing to rotate".to_string()
        } else {
            names.join(", ")
        }
    )?;
    let Some(timeout) = wait else {
        writeln!(
            out,
            "follow it with: kubectl get securitypolicy {name} -n {ns} -o jsonpath='{{.status.rotation}}'"
        )?;
        return Ok(());
    };

    let deadline = Instant::now() + timeout;
    let mut seen: Option<RotationPhase> = None;
    loop {
        let status = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading SecurityPolicy {ns}/{name}"))?
            .ok_or_else(|| anyhow!("SecurityPolicy {ns}/{name} was deleted"))?
            .status
            .and_then(|s| s.rotation)
            .filter(|r| r.requested == value);
        if let Some(status) = status {
            let phase = RotationPhase::parse(&status.phase)
                .ok_or_else(|| anyhow!("unknown rotation phase {:?} in status", status.phase))?;
            for done in finished_between(seen, phase) {
                if phases.contains(&done) {
                    writeln!(out, "{done}: done")?;
                } else {
                    writeln!(out, "{done}: skipped, nothing to rotate")?;
                }
            }
            if seen != Some(phase) && phase != RotationPhase::Complete {
                writeln!(out, "{phase}: running")?;
            }
            seen = Some(phase);
            if phase == RotationPhase::Complete {
                writeln!(
                    out,
                    "rotation {value:?} complete; the old CA leaves the trust bundle when status.caRolloverPhase is Stable again, old JWT keys leave the JWKS after their grace period"
                )?;
                return Ok(());
            }
            if let Some(failure) = status.failure {
                bail!(
                    "rotation {value:?} failed in phase {phase}: {failure}; the operator keeps the phase and retries when its input changes (follow status.rotation)"
                );
            }
        }
        if Instant::now() >= deadline {
            let at = seen.map_or("not started", |p| p.as_str());
            bail!(
                "rotation {value:?} timed out after {}s in phase {at}; the operator carries on, follow status.rotation",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
