//! Performance benchmarks against the local control plane, side by side with cert-manager.
//!
//! `make bench` (`cargo bench --bench bench`) runs them at full size and rewrites the figures in
//! docs/BENCHMARKS.md; `cargo test` runs a tiny smoke version (a few policies) that checks the
//! harness still works and that the invariants the figures rest on hold. Every figure is also
//! printed as a `BENCH <key> <value>` line. `BULWARK_BENCH_POLICIES=<n>` changes the main size;
//! `BULWARK_BENCH_OPERATOR_ARGS` adds `bulwark run` flags (to compare settings);
//! `BULWARK_BENCH_ONLY=cold` runs the cold start alone, `BULWARK_BENCH_ONLY=drift` the cold start
//! and then the drift repair; both leave docs/BENCHMARKS.md as it is.

mod certmanager;
mod cluster;
mod floor;
mod issuance;
mod process;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark::api::SecurityPolicy;
use bulwark::kube_io::managed_selector;
use bulwark_testenv::{ControlPlane, ControlPlaneOptions};
use futures::future::join_all;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams};
use kube::{Client, CustomResourceExt, ResourceExt};

use cluster::{Deleted, PolicyShape, Readiness, Returns};
use issuance::Algorithm;
use process::Measured;

const BIN: &str = env!("CARGO_BIN_EXE_bulwark");
const MIB: usize = 1024 * 1024;

/// How big each benchmark is.
#[derive(Clone, Debug)]
struct Sizes {
    full: bool,
    /// Only the cold start (`BULWARK_BENCH_ONLY=cold`): to compare settings quickly; the
    /// figures are printed and docs/BENCHMARKS.md is left as it is.
    only_cold: bool,
    /// Only the cold start and the drift repair (`BULWARK_BENCH_ONLY=drift`), likewise.
    only_drift: bool,
    policies: usize,
    unrelated: usize,
    large: usize,
    drift: usize,
    resyncs: usize,
    rsa_policies: usize,
    probe_policies: usize,
    raw_ecdsa: usize,
    raw_rsa: usize,
    rounds: usize,
    settle: Duration,
    /// How long the operator must do nothing to count as done.
    quiet: Duration,
}

impl Sizes {
    fn full() -> Sizes {
        let policies = std::env::var("BULWARK_BENCH_POLICIES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Sizes {
            full: true,
            only_cold: std::env::var("BULWARK_BENCH_ONLY").is_ok_and(|v| v == "cold"),
            only_drift: std::env::var("BULWARK_BENCH_ONLY").is_ok_and(|v| v == "drift"),
            policies,
            unrelated: 10_000,
            large: 300,
            drift: 100,
            resyncs: 3,
            rsa_policies: 50,
            probe_policies: 50,
            raw_ecdsa: 2000,
            raw_rsa: 40,
            rounds: 5,
            settle: Duration::from_secs(5),
            quiet: Duration::from_secs(3),
        }
    }

    /// A few seconds of work: checks the harness, not the figures.
    fn smoke() -> Sizes {
        Sizes {
            full: false,
            only_cold: false,
            only_drift: false,
            policies: 2,
            unrelated: 10,
            large: 1,
            drift: 3,
            resyncs: 1,
            rsa_policies: 1,
            probe_policies: 1,
            raw_ecdsa: 20,
            raw_rsa: 1,
            rounds: 1,
            settle: Duration::from_millis(500),
            quiet: Duration::from_secs(1),
        }
    }
}

/// Figures in the order they were measured, and the goals they are held against.
#[derive(Default)]
struct Report {
    figures: Vec<(String, String)>,
    goals: Vec<Goal>,
    notes: Vec<String>,
}

struct Goal {
    what: String,
    target: String,
    measured: String,
    met: bool,
}

impl Report {
    fn figure(&mut self, key: &str, value: impl std::fmt::Display) {
        let value = value.to_string();
        println!("BENCH {key} {value}");
        self.figures.push((key.to_string(), value));
    }

    fn goal(&mut self, what: &str, target: &str, measured: String, met: bool) {
        println!(
            "GOAL {what}: {measured} (target {target}) {}",
            if met { "met" } else { "MISSED" }
        );
        self.goals.push(Goal {
            what: what.into(),
            target: target.into(),
            measured,
            met,
        });
    }

    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        println!("NOTE {note}");
        self.notes.push(note);
    }

    fn get(&self, key: &str) -> &str {
        self.figures
            .iter()
            .find(|(k, _)| k == key)
            .map_or("n/a", |(_, v)| v.as_str())
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full { Sizes::full() } else { Sizes::smoke() };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = runtime.block_on(run(&sizes));
    if sizes.full && !sizes.only_cold && !sizes.only_drift {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/BENCHMARKS.md");
        write_doc(&path, &sizes, &report);
        println!("figures written to {}", path.display());
    }
    // The control planes and operators are gone; nothing else to wait for.
    std::process::exit(0);
}

async fn run(sizes: &Sizes) -> Report {
    let mut report = Report::default();
    let load_before = load_average();
    report.figure("machine.load_before", &load_before);
    let extra = std::env::var("BULWARK_BENCH_OPERATOR_ARGS").unwrap_or_default();
    if !extra.trim().is_empty() {
        report.figure("operator.extra_args", extra.trim());
    }

    if !sizes.only_cold && !sizes.only_drift {
        raw_issuance(sizes, &mut report);
    }

    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf();
    let cp = start_control_plane();
    operator_at_scale(sizes, &cp, &logs, &mut report).await;
    if sizes.only_cold || sizes.only_drift {
        return report;
    }
    let cp = if sizes.full {
        drop(cp);
        start_control_plane()
    } else {
        cp
    };
    tls_side(sizes, &cp, &logs, &mut report).await;
    drop(cp);
    if sizes.full {
        match certmanager::build_dir() {
            Some(dir) => {
                let cp = start_control_plane();
                cert_manager_side(sizes, &cp, &dir, &logs, &mut report).await;
            }
            None => report.note(
                "cert-manager's controller is not built (hack/cert-manager.sh): side by side skipped",
            ),
        }
        compare(sizes, &mut report);
    }
    report.figure("machine.load_after", load_average());
    report
}

fn start_control_plane() -> ControlPlane {
    ControlPlane::start(ControlPlaneOptions {
        // The Job controller stands between a policy and Ready: at its test default of 100 qps it
        // would be what the cold start measures.
        extra_controller_manager_args: vec![
            "--kube-api-qps=1000".into(),
            "--kube-api-burst=2000".into(),
            "--concurrent-job-syncs=20".into(),
        ],
        ..ControlPlaneOptions::default()
    })
    .expect("start the control plane")
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn mib(v: f64) -> String {
    format!("{v:.1}")
}

/// Nearest-rank percentile of `values` (sorted here).
fn percentile(values: &mut [Duration], p: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Issuance cost 1/2: rcgen alone, one thread.
fn raw_issuance(sizes: &Sizes, report: &mut Report) {
    for (algorithm, n, key) in [
        (
            Algorithm::EcdsaP256,
            sizes.raw_ecdsa,
            "raw.ecdsa_p256_per_s",
        ),
        (Algorithm::Rsa2048, sizes.raw_rsa, "raw.rsa2048_per_s"),
    ] {
        let mut rates: Vec<f64> = (0..sizes.rounds)
            .map(|_| issuance::raw_rate(algorithm, n))
            .collect();
        report.figure(key, format!("{:.1}", median(&mut rates)));
    }
}

fn namespaces(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

fn keys(namespaces: &[String]) -> Vec<String> {
    namespaces
        .iter()
        .map(|ns| format!("{ns}/traffic"))
        .collect()
}

/// Applies one policy per namespace; waits until all are Ready. Returns (elapsed from the first
/// apply to the last Ready, time the applies took, per-policy apply-to-Ready latencies).
async fn apply_and_wait(
    client: &Client,
    readiness: &Readiness,
    objects: Vec<serde_json::Value>,
    keys: &[String],
    timeout: Duration,
    what: &str,
) -> (Duration, Duration, Vec<Duration>) {
    let started = Instant::now();
    let applied = cluster::apply_all(client, &cluster::policy_resource(), objects).await;
    let applies = started.elapsed();
    let last = readiness.wait_all(keys, timeout, what).await;
    let latencies = keys
        .iter()
        .filter_map(|k| Some(readiness.ready_at(k)?.saturating_duration_since(applied[k])))
        .collect();
    (last.duration_since(started), applies, latencies)
}

/// Benchmarks 1-5: cold start, memory, unrelated Secrets, steady state, drift repair.
async fn operator_at_scale(sizes: &Sizes, cp: &ControlPlane, logs: &Path, report: &mut Report) {
    let n = sizes.policies;
    cp.install_crds(&[SecurityPolicy::crd()])
        .await
        .expect("install the SecurityPolicy CRD");
    let client = cluster::bench_client(cp.kubeconfig_path()).await;
    let ns = namespaces("bench", n);
    cluster::create_namespaces(&client, &ns).await;
    cluster::create_admin_secrets(&client, &ns).await;
    let _kubelet = cluster::play_kubelet(&client);
    let (readiness, _watch) = Readiness::track(&client, &cluster::policy_resource());
    let log = logs.join("bench-operator.log");
    let _ = std::fs::remove_file(&log);

    // 1. Cold start: the operator is up and idle; n policies are applied at once.
    let mut op = Measured::bulwark(Path::new(BIN), cp.kubeconfig_path(), &log, &[]);
    op.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(sizes.settle).await;
    report.figure("operator.idle_rss_mib", mib(op.rss_mib()));
    let objects = ns
        .iter()
        .map(|ns| cluster::policy(ns, PolicyShape::Full))
        .collect();
    let requests_before = cluster::apiserver_requests(&client).await;
    let (cold, applies, mut latencies) = apply_and_wait(
        &client,
        &readiness,
        objects,
        &keys(&ns),
        Duration::from_secs(1800),
        "cold start",
    )
    .await;
    report.figure("cold.policies", n);
    report.figure("cold.all_ready_s", secs(cold));
    report.figure("cold.applies_s", secs(applies));
    report.figure("cold.policy_p50_s", secs(percentile(&mut latencies, 50.0)));
    report.figure("cold.policy_p99_s", secs(percentile(&mut latencies, 99.0)));
    report.figure("cold.cpu_s", format!("{:.1}", op.cpu_secs()));
    report.figure(
        "cold.writes",
        op.metric("bulwark_api_writes_total", "").await,
    );
    report.figure("cold.peak_rss_mib", mib(op.peak_rss_mib()));
    op.wait_quiet(n as f64, sizes.quiet, Duration::from_secs(600))
        .await;
    report.figure(
        "cold.reconciles",
        op.metric("bulwark_reconciles_total", "").await,
    );
    report.figure(
        "cold.reconciles_unchanged",
        op.metric("bulwark_reconciles_unchanged_total", "").await,
    );
    let requests = cluster::request_delta(
        &requests_before,
        &cluster::apiserver_requests(&client).await,
    );
    report.figure("cold.apiserver_requests", requests.values().sum::<u64>());
    report.figure("cold.apiserver_requests_by_kind", format!("{requests:?}"));
    tokio::time::sleep(sizes.settle).await;
    report.figure("cold.rss_after_mib", mib(op.rss_mib()));
    report.figure("cold.peak_rss_after_mib", mib(op.peak_rss_mib()));
    if sizes.only_drift {
        drift_repair(sizes, &client, &ns, &op, report).await;
        op.terminate().await;
        return;
    }

    // 1b. The floor: what the policies consist of, written straight to the API server.
    let templates = floor::templates(&client, &ns[0]).await;
    let floor_ns = namespaces("floor", n);
    cluster::create_namespaces(&client, &floor_ns).await;
    let requests_before = cluster::apiserver_requests(&client).await;
    let (written, floor) =
        floor::write(&client, &templates, &floor_ns, Duration::from_secs(1800)).await;
    let requests = cluster::request_delta(
        &requests_before,
        &cluster::apiserver_requests(&client).await,
    );
    report.figure("floor.objects_per_policy", templates.len());
    report.figure("floor.writes_answered_s", secs(written));
    report.figure("floor.all_jobs_complete_s", secs(floor));
    report.figure("floor.apiserver_requests", requests.values().sum::<u64>());
    report.figure(
        "cold.vs_floor",
        format!("{:.2}", cold.as_secs_f64() / floor.as_secs_f64().max(0.001)),
    );
    if sizes.full {
        report.goal(
            &format!("Cold start: {n} policies Ready"),
            "< 60 s",
            format!(
                "{} s (floor: the same objects written directly, {} s)",
                secs(cold),
                secs(floor)
            ),
            cold < Duration::from_secs(60),
        );
    }
    op.terminate().await;
    if sizes.only_cold {
        // What one policy's cold start recorded, to see which events it costs.
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(client.clone(), &ns[0]);
        let listed = events.list(&Default::default()).await.expect("list events");
        let lines: Vec<String> = listed
            .items
            .iter()
            .map(|e| {
                format!(
                    "{} {:?} {} {:?} {:?}",
                    e.reporting_controller.clone().unwrap_or_default(),
                    e.series.as_ref().map(|s| s.count),
                    e.reason.clone().unwrap_or_default(),
                    e.regarding.as_ref().and_then(|r| r.name.clone()),
                    e.note
                )
            })
            .collect();
        std::fs::write(logs.join("bench-cold-events.txt"), lines.join("\n")).ok();
        return;
    }

    // 4. Steady state: a fresh process lists and reconciles every policy; nothing has changed.
    let mut cpu = Vec::new();
    let mut durations = Vec::new();
    let mut peaks = Vec::new();
    let mut writes = 0.0;
    let mut audited: BTreeMap<String, usize> = BTreeMap::new();
    let mut op = None;
    for _ in 0..sizes.resyncs {
        if let Some(mut previous) = op.take() {
            Measured::terminate(&mut previous).await;
        }
        let from = jiff::Timestamp::now();
        let started = Instant::now();
        let mut fresh = Measured::bulwark(Path::new(BIN), cp.kubeconfig_path(), &log, &[]);
        fresh.wait_ready(Duration::from_secs(60)).await;
        let quiet = fresh
            .wait_quiet(n as f64, sizes.quiet, Duration::from_secs(600))
            .await;
        durations.push(quiet.duration_since(started).as_secs_f64());
        cpu.push(fresh.cpu_secs());
        peaks.push(fresh.peak_rss_mib());
        writes += fresh.metric("bulwark_api_writes_total", "").await;
        for (k, v) in cluster::operator_writes(cp.audit_log_path(), from, jiff::Timestamp::now()) {
            *audited.entry(k).or_default() += v;
        }
        op = Some(fresh);
    }
    let mut op = op.expect("a resync ran");
    let resync_cpu = median(&mut cpu);
    let resync_peak = median(&mut peaks);
    let audited_total: usize = audited.values().sum();
    report.figure("resync.runs", sizes.resyncs);
    report.figure(
        "resync.duration_s",
        format!("{:.2}", median(&mut durations)),
    );
    report.figure("resync.cpu_s", format!("{resync_cpu:.2}"));
    report.figure("resync.writes_metric", writes);
    report.figure("resync.writes_audited", audited_total);
    report.figure("resync.writes_audited_by_kind", format!("{audited:?}"));
    report.figure("resync.peak_rss_mib", mib(resync_peak));
    assert_eq!(
        audited_total, 0,
        "a resync with nothing changed wrote: {audited:?}"
    );
    if sizes.full {
        report.goal(
            &format!("Steady state: writes of a full resync of {n} policies"),
            "0",
            format!("{audited_total} (CPU {resync_cpu:.2} s per resync)"),
            audited_total == 0,
        );
        let peak = op
            .peak_rss_mib()
            .max(report.get("cold.peak_rss_mib").parse().unwrap_or(0.0));
        report.goal(
            "Operator memory: peak RSS during and after the cold start and resyncs",
            "< 64 MiB",
            format!(
                "{} MiB cold start, {} MiB fresh resync",
                report.get("cold.peak_rss_mib"),
                mib(resync_peak)
            ),
            peak < 64.0,
        );
    }

    // 3. Unrelated Secrets: the running operator should not see them at all.
    tokio::time::sleep(sizes.settle).await;
    let before = op.rss_mib();
    let reconciles_before = op.metric("bulwark_reconciles_total", "").await;
    op.take_sampled_peak_mib();
    let started = Instant::now();
    let unrelated: Vec<_> = (0..sizes.unrelated)
        .map(|i| {
            let data = if i < sizes.large {
                BTreeMap::from([("blob".to_string(), filler(1_000_000, i))])
            } else {
                BTreeMap::from([("token".to_string(), filler(64, i))])
            };
            (ns[i % n].clone(), format!("unrelated-{i:05}"), data)
        })
        .collect();
    cluster::create_secrets(&client, unrelated).await;
    report.figure("unrelated.secrets", sizes.unrelated);
    report.figure("unrelated.large_1mb", sizes.large);
    report.figure("unrelated.create_s", secs(started.elapsed()));
    tokio::time::sleep(sizes.settle).await;
    let during = op.take_sampled_peak_mib();
    let after = op.rss_mib();
    let growth = during.max(after) - before;
    report.figure("unrelated.rss_before_mib", mib(before));
    report.figure("unrelated.rss_peak_during_mib", mib(during));
    report.figure("unrelated.rss_after_mib", mib(after));
    report.figure("unrelated.rss_growth_mib", mib(growth));
    report.figure(
        "unrelated.reconciles_triggered",
        op.metric("bulwark_reconciles_total", "").await - reconciles_before,
    );
    op.terminate().await;
    // And a fresh start with them in the cluster: the initial lists skip them too.
    let started = Instant::now();
    let mut op = Measured::bulwark(Path::new(BIN), cp.kubeconfig_path(), &log, &[]);
    op.wait_ready(Duration::from_secs(60)).await;
    let quiet = op
        .wait_quiet(n as f64, sizes.quiet, Duration::from_secs(600))
        .await;
    let fresh_peak = op.peak_rss_mib();
    report.figure(
        "unrelated.fresh_resync_s",
        secs(quiet.duration_since(started)),
    );
    report.figure("unrelated.fresh_cpu_s", format!("{:.2}", op.cpu_secs()));
    report.figure("unrelated.fresh_peak_rss_mib", mib(fresh_peak));
    if sizes.full {
        let fresh_growth = fresh_peak - resync_peak;
        report.goal(
            &format!(
                "Unrelated objects: RSS growth with {} unrelated Secrets ({} of 1 MB)",
                sizes.unrelated, sizes.large
            ),
            "< 10 MiB",
            format!(
                "{} MiB running; {} MiB on a fresh start",
                mib(growth),
                mib(fresh_growth)
            ),
            growth < 10.0 && fresh_growth < 10.0,
        );
    }

    // 5. Drift repair: delete produced objects at once; time until each is back.
    tokio::time::sleep(sizes.settle).await;
    drift_repair(sizes, &client, &ns, &op, report).await;
    op.terminate().await;
}

/// Bytes that do not compress, different per Secret.
fn filler(len: usize, seed: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn drift_repair(
    sizes: &Sizes,
    client: &Client,
    ns: &[String],
    op: &Measured,
    report: &mut Report,
) {
    let selector = managed_selector();
    let (secrets, _s) = Returns::track::<Secret>(client, &selector);
    let (configmaps, _c) = Returns::track::<ConfigMap>(client, &selector);
    let (netpols, _n) = Returns::track::<NetworkPolicy>(client, &selector);
    let targets: Vec<(&'static str, String, String)> = (0..sizes.drift)
        .map(|i| {
            let namespace = ns[i * ns.len() / sizes.drift.max(1) % ns.len()].clone();
            let (kind, name) = match i % 5 {
                0 => ("NetworkPolicy", "traffic-tier-backend"),
                1 => ("ConfigMap", "traffic-trust-bundle"),
                2 => ("Secret", "api-tls"),
                3 => ("ConfigMap", "api-jwks"),
                _ => ("NetworkPolicy", "traffic-default-deny"),
            };
            (kind, namespace, name.to_string())
        })
        .collect();
    let tracker = |kind: &str| match kind {
        "Secret" => &secrets,
        "ConfigMap" => &configmaps,
        _ => &netpols,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while !targets
        .iter()
        .all(|(kind, ns, name)| tracker(kind).knows(ns, name))
    {
        assert!(
            Instant::now() < deadline,
            "drift targets not listed by the watches"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let writes_before = op.metric("bulwark_api_writes_total", "").await;
    let partial_before = op.metric("bulwark_reconciles_partial_total", "").await;
    let deletes = targets.iter().map(|(kind, namespace, name)| {
        let client = client.clone();
        async move {
            let dp = DeleteParams::default();
            let uid = match *kind {
                "Secret" => delete_one::<Secret>(&client, namespace, name, &dp).await,
                "ConfigMap" => delete_one::<ConfigMap>(&client, namespace, name, &dp).await,
                _ => delete_one::<NetworkPolicy>(&client, namespace, name, &dp).await,
            };
            Deleted {
                kind,
                namespace: namespace.clone(),
                name: name.clone(),
                uid,
                deleted_at: Instant::now(),
            }
        }
    });
    let deleted: Vec<Deleted> = join_all(deletes).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut latencies = loop {
        let back: Vec<Option<Duration>> = deleted
            .iter()
            .map(|d| {
                let at = tracker(d.kind).back_at(d)?;
                Some(at.saturating_duration_since(d.deleted_at))
            })
            .collect();
        if back.iter().all(Option::is_some) {
            break back.into_iter().flatten().collect::<Vec<_>>();
        }
        let missing: Vec<String> = deleted
            .iter()
            .zip(&back)
            .filter(|(_, b)| b.is_none())
            .map(|(d, _)| format!("{} {}/{}", d.kind, d.namespace, d.name))
            .collect();
        assert!(
            Instant::now() < deadline,
            "deleted objects not back after 120 s: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let p50 = percentile(&mut latencies, 50.0);
    let p99 = percentile(&mut latencies, 99.0);
    let max = latencies.last().copied().unwrap_or_default();
    tokio::time::sleep(sizes.settle).await;
    report.figure("drift.deleted", deleted.len());
    report.figure("drift.p50_ms", ms(p50));
    report.figure("drift.p99_ms", ms(p99));
    report.figure("drift.max_ms", ms(max));
    report.figure(
        "drift.writes",
        op.metric("bulwark_api_writes_total", "").await - writes_before,
    );
    // Reconciles that rebuilt only the facet whose object was deleted.
    report.figure(
        "drift.partial_reconciles",
        op.metric("bulwark_reconciles_partial_total", "").await - partial_before,
    );
    if sizes.full {
        report.goal(
            &format!("Drift repair: {} objects deleted at once", deleted.len()),
            "p99 < 1 s",
            format!("p50 {} ms, p99 {} ms", ms(p50), ms(p99)),
            p99 < Duration::from_secs(1),
        );
    }
}

/// Deletes one object; returns the uid it had.
async fn delete_one<K>(client: &Client, ns: &str, name: &str, dp: &DeleteParams) -> String
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let uid = api
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("get {ns}/{name}: {e}"))
        .uid()
        .unwrap_or_default();
    api.delete(name, dp)
        .await
        .unwrap_or_else(|e| panic!("delete {ns}/{name}: {e}"));
    uid
}

/// Benchmarks 6 and 7 (Bulwark's half): TLS-only policies, ECDSA then RSA, and whether RSA key
/// generation holds up other reconciles.
async fn tls_side(sizes: &Sizes, cp: &ControlPlane, logs: &Path, report: &mut Report) {
    let n = sizes.policies;
    cp.install_crds(&[SecurityPolicy::crd()])
        .await
        .expect("install the SecurityPolicy CRD");
    let client = cluster::bench_client(cp.kubeconfig_path()).await;
    let (readiness, _watch) = Readiness::track(&client, &cluster::policy_resource());
    let tls = namespaces("tls", n);
    let probe_idle = namespaces("probe-idle", sizes.probe_policies);
    let probe_rsa = namespaces("probe-rsa", sizes.probe_policies);
    let rsa = namespaces("rsa", sizes.rsa_policies);
    let all: Vec<String> = [&tls, &probe_idle, &probe_rsa, &rsa]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    cluster::create_namespaces(&client, &all).await;
    let log = logs.join("bench-operator-tls.log");
    let _ = std::fs::remove_file(&log);
    let mut op = Measured::bulwark(Path::new(BIN), cp.kubeconfig_path(), &log, &[]);
    op.wait_ready(Duration::from_secs(60)).await;
    tokio::time::sleep(sizes.settle).await;

    let cpu_before = op.cpu_secs();
    let objects = tls
        .iter()
        .map(|ns| cluster::policy(ns, PolicyShape::TlsOnly))
        .collect();
    let (elapsed, applies, _) = apply_and_wait(
        &client,
        &readiness,
        objects,
        &keys(&tls),
        Duration::from_secs(1800),
        "TLS-only policies",
    )
    .await;
    report.figure("tls.policies", n);
    report.figure("tls.certificates", 3 * n);
    report.figure("tls.all_ready_s", secs(elapsed));
    report.figure("tls.applies_s", secs(applies));
    report.figure("tls.cpu_s", format!("{:.1}", op.cpu_secs() - cpu_before));
    report.figure("tls.peak_rss_mib", mib(op.peak_rss_mib()));
    // CA plus three leaves per policy.
    let ecdsa_rate = (4 * n) as f64 / elapsed.as_secs_f64();
    report.figure("tls.ecdsa_certs_per_s", format!("{ecdsa_rate:.1}"));
    op.wait_quiet(n as f64, sizes.quiet, Duration::from_secs(600))
        .await;

    // ECDSA-only policies on an idle operator: the reference latency.
    let objects = probe_idle
        .iter()
        .map(|ns| cluster::policy(ns, PolicyShape::TlsOnly))
        .collect();
    let (_, _, mut idle) = apply_and_wait(
        &client,
        &readiness,
        objects,
        &keys(&probe_idle),
        Duration::from_secs(600),
        "ECDSA policies on an idle operator",
    )
    .await;
    op.wait_quiet(0.0, sizes.quiet, Duration::from_secs(600))
        .await;

    // RSA policies interleaved with as many ECDSA-only ones, and /healthz probed meanwhile: a
    // key generation on an async worker would show as a stalled health answer.
    let (stop_probe, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let port = op.metrics_port.expect("metrics port");
    let health = tokio::spawn(async move {
        let mut latencies = Vec::new();
        loop {
            let started = Instant::now();
            let ok = health_ok(port).await;
            latencies.push((started.elapsed(), ok));
            tokio::select! {
                _ = &mut stopped => return latencies,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    });
    let mut objects = Vec::new();
    for i in 0..sizes.rsa_policies.max(sizes.probe_policies) {
        if let Some(ns) = rsa.get(i) {
            objects.push(cluster::policy(ns, PolicyShape::TlsRsa));
        }
        if let Some(ns) = probe_rsa.get(i) {
            objects.push(cluster::policy(ns, PolicyShape::TlsOnly));
        }
    }
    let both: Vec<String> = keys(&rsa).into_iter().chain(keys(&probe_rsa)).collect();
    let started = Instant::now();
    let applied = cluster::apply_all(&client, &cluster::policy_resource(), objects).await;
    readiness
        .wait_all(&both, Duration::from_secs(900), "RSA and ECDSA policies")
        .await;
    let rsa_done = readiness
        .wait_all(&keys(&rsa), Duration::from_secs(1), "RSA policies")
        .await;
    let _ = stop_probe.send(());
    let health = health.await.expect("health probe");
    let rsa_elapsed = rsa_done.duration_since(started);
    let mut loaded: Vec<Duration> = keys(&probe_rsa)
        .iter()
        .filter_map(|k| Some(readiness.ready_at(k)?.saturating_duration_since(applied[k])))
        .collect();
    let mut health_latencies: Vec<Duration> = health.iter().map(|(d, _)| *d).collect();
    let health_failures = health.iter().filter(|(_, ok)| !ok).count();
    let rsa_rate = (3 * sizes.rsa_policies) as f64 / rsa_elapsed.as_secs_f64();
    report.figure("rsa.policies", sizes.rsa_policies);
    report.figure("rsa.all_ready_s", secs(rsa_elapsed));
    report.figure("rsa.leaves_per_s", format!("{rsa_rate:.1}"));
    report.figure("rsa.ecdsa_idle_p50_ms", ms(percentile(&mut idle, 50.0)));
    report.figure("rsa.ecdsa_idle_max_ms", ms(percentile(&mut idle, 100.0)));
    report.figure("rsa.ecdsa_loaded_p50_ms", ms(percentile(&mut loaded, 50.0)));
    report.figure(
        "rsa.ecdsa_loaded_max_ms",
        ms(percentile(&mut loaded, 100.0)),
    );
    report.figure("rsa.healthz_probes", health_latencies.len());
    report.figure("rsa.healthz_failures", health_failures);
    report.figure(
        "rsa.healthz_p50_ms",
        format!(
            "{:.1}",
            percentile(&mut health_latencies, 50.0).as_secs_f64() * 1000.0
        ),
    );
    report.figure(
        "rsa.healthz_max_ms",
        format!(
            "{:.1}",
            percentile(&mut health_latencies, 100.0).as_secs_f64() * 1000.0
        ),
    );
    report.figure("rsa.peak_rss_mib", mib(op.peak_rss_mib()));
    op.terminate().await;
}

async fn health_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).await.is_ok() && response.starts_with("HTTP/1.1 200")
}

/// Benchmark 7, cert-manager's half: the same certificates from a CA ClusterIssuer.
async fn cert_manager_side(
    sizes: &Sizes,
    cp: &ControlPlane,
    dir: &Path,
    logs: &Path,
    report: &mut Report,
) {
    let n = sizes.policies;
    cp.install_crds(&certmanager::crds(dir))
        .await
        .expect("install cert-manager's CRDs");
    let client = cluster::bench_client(cp.kubeconfig_path()).await;
    let ns = namespaces("cm", n);
    cluster::create_namespaces(&client, &ns).await;
    certmanager::create_ca_issuer(&client).await;
    let resource = certmanager::certificates();
    let (readiness, _watch) = Readiness::track(&client, &resource);
    let mut controller = certmanager::start(
        dir,
        cp.kubeconfig_path(),
        &logs.join("bench-cert-manager.log"),
    );
    certmanager::wait_issuer_ready(&client, &mut controller, Duration::from_secs(120)).await;
    tokio::time::sleep(sizes.settle).await;
    report.figure("cm.version", certmanager::version().unwrap_or_default());
    report.figure("cm.idle_rss_mib", mib(controller.rss_mib()));
    let cpu_before = controller.cpu_secs();
    let objects: Vec<serde_json::Value> = ns
        .iter()
        .flat_map(|ns| certmanager::certificate_objects(ns))
        .collect();
    let keys: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let started = Instant::now();
    cluster::apply_all(&client, &resource, objects).await;
    let applies = started.elapsed();
    let last = readiness
        .wait_all(
            &keys,
            Duration::from_secs(3600),
            "cert-manager Certificates",
        )
        .await;
    let elapsed = last.duration_since(started);
    report.figure("cm.certificates", keys.len());
    report.figure("cm.all_ready_s", secs(elapsed));
    report.figure("cm.applies_s", secs(applies));
    report.figure(
        "cm.cpu_s",
        format!("{:.1}", controller.cpu_secs() - cpu_before),
    );
    report.figure("cm.peak_rss_mib", mib(controller.peak_rss_mib()));
    report.figure(
        "cm.certs_per_s",
        format!("{:.1}", keys.len() as f64 / elapsed.as_secs_f64()),
    );
    controller.terminate().await;
}

/// Ratios between what was measured.
fn compare(sizes: &Sizes, report: &mut Report) {
    let num = |r: &Report, k: &str| r.get(k).parse::<f64>().ok();
    if let (Some(op), Some(raw)) = (
        num(report, "tls.ecdsa_certs_per_s"),
        num(report, "raw.ecdsa_p256_per_s"),
    ) {
        report.figure("ratio.ecdsa_operator_vs_raw", format!("{:.4}", op / raw));
    }
    if let (Some(op), Some(raw)) = (
        num(report, "rsa.leaves_per_s"),
        num(report, "raw.rsa2048_per_s"),
    ) {
        report.figure("ratio.rsa_operator_vs_raw", format!("{:.3}", op / raw));
    }
    if let (Some(b), Some(c), Some(bm), Some(cm)) = (
        num(report, "tls.all_ready_s"),
        num(report, "cm.all_ready_s"),
        num(report, "tls.peak_rss_mib"),
        num(report, "cm.peak_rss_mib"),
    ) {
        let speed = c / b;
        let memory = bm / cm;
        report.figure("ratio.cm_time_over_bulwark", format!("{speed:.2}"));
        report.figure("ratio.bulwark_rss_over_cm", format!("{memory:.3}"));
        report.goal(
            &format!(
                "Side by side: {} certificates, cert-manager time / Bulwark time",
                3 * sizes.policies
            ),
            ">= 5x",
            format!("{speed:.2}x ({b:.1} s vs {c:.1} s)"),
            speed >= 5.0,
        );
        report.goal(
            "Side by side: Bulwark peak RSS / cert-manager peak RSS",
            "<= 0.2",
            format!("{memory:.3} ({bm:.1} MiB vs {cm:.1} MiB)"),
            memory <= 0.2,
        );
    }
}

const BEGIN: &str =
    "<!-- bench:begin (generated by make bench; edits between these markers are overwritten) -->";
const END: &str = "<!-- bench:end -->";

/// Rewrites the generated part of docs/BENCHMARKS.md, keeping the prose around it.
fn write_doc(path: &PathBuf, sizes: &Sizes, report: &Report) {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let generated = render(sizes, report);
    let text = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!(
                "{}{generated}{}",
                &existing[..b],
                &existing[e + END.len()..]
            )
        }
        _ => format!("# Benchmarks\n\n{generated}\n"),
    };
    std::fs::write(path, text).expect("write docs/BENCHMARKS.md");
}

fn render(sizes: &Sizes, report: &Report) -> String {
    let mut out = String::new();
    out.push_str(BEGIN);
    out.push_str("\n\n");
    out.push_str(&format!(
        "Last run: {} UTC, {} policies; {}.\n\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M"),
        sizes.policies,
        machine()
    ));
    out.push_str("| goal | target | measured | |\n|---|---|---|---|\n");
    for g in &report.goals {
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            g.what,
            g.target,
            g.measured,
            if g.met { "met" } else { "**missed**" }
        ));
    }
    out.push_str("\nEvery figure of the run (`BENCH` lines of `make bench`):\n\n| figure | value |\n|---|---|\n");
    for (k, v) in &report.figures {
        out.push_str(&format!("| `{k}` | {v} |\n"));
    }
    for note in &report.notes {
        out.push_str(&format!("\nNote: {note}\n"));
    }
    out.push('\n');
    out.push_str(END);
    out
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / MIB as f64);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cores} cores ({model}), {mem_gib:.0} GiB, Kubernetes {}",
        bulwark_testenv::k8s_version()
    )
}
