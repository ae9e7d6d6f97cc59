//! Another writer keeps rewriting a produced Secret: Bulwark restores it a few times, then ever
//! less often, reports the fight as a condition naming the other field manager, and restores the
//! Secret once the other writer stops. No hot loop between two writers.
//!
//! Quick by default (a 20 s fight); `BULWARK_CHAOS=full` fights for 5 minutes.

mod support;

use std::time::{Duration, Instant};

use bulwark_testenv::ControlPlane;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use support::*;

/// Writes Bulwark's field manager sent for `ns/secrets/name`, by when they were received.
fn bulwark_writes(ns: &str, name: &str) -> Vec<jiff::Timestamp> {
    let log = std::fs::read_to_string(ControlPlane::shared().audit_log_path()).unwrap_or_default();
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch")))
        .filter(|e| e["objectRef"]["namespace"] == ns && e["objectRef"]["name"] == name)
        .filter(|e| {
            e["requestURI"]
                .as_str()
                .is_some_and(|u| u.contains("fieldManager=bulwark"))
        })
        .filter_map(|e| e["requestReceivedTimestamp"].as_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fighting_writer_meets_a_bounded_repairer() {
    let full = std::env::var("BULWARK_CHAOS").is_ok_and(|v| v == "full");
    let fight = Duration::from_secs(if full { 300 } else { 20 });
    let client = client().await;
    let ns = namespace(&client, "contested").await;
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    let kid = secret_data(&client, &ns, "api-jwt").await["kid"].clone();
    let before = bulwark_writes(&ns, "api-jwt").len();
    let reconciles_before = operator.reconciles("success");
    let secret_writes_before = operator.metrics.writes("Secret");

    // The other writer sets `kid` every 200 ms, under its own field manager.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let params = PatchParams {
        field_manager: Some("fighter".into()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({"stringData": {"kid": "rewritten-by-another-writer"}});
    let started = Instant::now();
    let mut fighter_writes = 0u64;
    while started.elapsed() < fight {
        secrets
            .patch("api-jwt", &params, &Patch::Merge(&patch))
            .await
            .unwrap();
        fighter_writes += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ours = bulwark_writes(&ns, "api-jwt");
    let repairs = &ours[before..];
    let reconciles = operator.reconciles("success") - reconciles_before;
    let secret_writes = operator.metrics.writes("Secret") - secret_writes_before;

    // Bounded: three repairs at once, then after 15 s, 45 s, 105 s ... never more than five in
    // any minute, whatever the other writer's rate.
    let first = repairs
        .first()
        .copied()
        .expect("Bulwark repaired at least once");
    let mut per_minute = vec![0u64; fight.as_secs().div_ceil(60) as usize + 1];
    for t in repairs {
        let minute = t.duration_since(first).as_secs() / 60;
        per_minute[minute as usize] += 1;
    }
    eprintln!(
        "CHAOS contested fight_s={} fighter_writes={fighter_writes} bulwark_repairs={} repairs_per_minute={per_minute:?} reconciles={reconciles} operator_secret_writes={secret_writes}",
        fight.as_secs(),
        repairs.len()
    );
    assert!(
        per_minute.iter().all(|n| *n <= 5),
        "repairs per minute {per_minute:?}"
    );
    assert!(
        (repairs.len() as u64) < fighter_writes / 10,
        "{} repairs for {fighter_writes} foreign writes",
        repairs.len()
    );

    // The condition names the object and the other writer.
    let (_, reason, message) = condition(&client, &ns, "traffic", "JWTReady")
        .await
        .expect("JWTReady");
    assert_eq!(reason, "Contested", "{message}");
    assert!(
        message.contains("Secret api-jwt") && message.contains("\"fighter\""),
        "{message}"
    );
    let (_, ready_reason, _) = condition(&client, &ns, "traffic", "Ready").await.unwrap();
    assert_eq!(ready_reason, "Contested");

    // The other writer stops: the next allowed repair restores the Secret and the policy is Ready.
    eventually(
        Duration::from_secs(320),
        "the Secret restored after the fight",
        || async {
            let data = secret_data(&client, &ns, "api-jwt").await;
            (data["kid"] == kid).then_some(())
        },
    )
    .await;
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;
    operator.stop().await;
}
