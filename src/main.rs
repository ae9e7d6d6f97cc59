use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use bulwark::controller::{self, Settings, leader};
use bulwark::telemetry::{self, Health, LogFormat, Metrics};

/// Bulwark hardens a three-tier application from one SecurityPolicy.
#[derive(Parser)]
#[command(name = "bulwark", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the SecurityPolicy CustomResourceDefinition.
    Crd {
        /// Print the API reference (Markdown) generated from the CRD schema instead.
        #[arg(long)]
        api_docs: bool,
    },
    /// Print, offline, the objects a policy would produce (secret values elided).
    Render {
        /// Policy file (YAML, may hold several documents); `-` reads stdin.
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Print the tier-to-tier reachability the produced NetworkPolicies allow.
    Explain {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// Print the version.
    Version,
    /// Rotate what a SecurityPolicy produced. `--all`, in this order: CA rollover, leaf
    /// certificates under the new CA, Kafka passwords, PostgreSQL passwords, JWT signing keys.
    /// Sets the annotation bulwark.dev/rotate-all to a new value; the operator does the rest.
    /// Exit status 1 when a phase fails or --timeout passes (the message names the phase).
    Rotate(RotateArgs),
    /// Report the security posture of the namespaces that hold SecurityPolicies.
    #[command(long_about = AUDIT_HELP)]
    Audit(AuditArgs),
    /// Apply a plan computed by the operator to an external system (what the Jobs run).
    #[command(subcommand)]
    Provision(ProvisionTarget),
}

#[derive(Subcommand)]
enum ProvisionTarget {
    /// Create/repair the PostgreSQL roles of a plan. Inputs come from the environment:
    /// BULWARK_PG_PLAN_FILE (or BULWARK_PG_PLAN), BULWARK_PG_VERIFIERS_FILE (or
    /// BULWARK_PG_VERIFIERS), BULWARK_PG_ADMIN_USER, BULWARK_PG_ADMIN_PASSWORD and, optionally,
    /// BULWARK_PG_CA_FILE.
    Postgres,
    /// Register the salted SCRAM credentials of a plan on a Kafka cluster and delete the ones it
    /// removes. Inputs come from the environment: BULWARK_KAFKA_PLAN_FILE (or
    /// BULWARK_KAFKA_PLAN), BULWARK_KAFKA_CREDENTIALS_FILE (or BULWARK_KAFKA_CREDENTIALS),
    /// BULWARK_KAFKA_ADMIN_USER, BULWARK_KAFKA_ADMIN_PASSWORD and BULWARK_KAFKA_CA_FILE.
    Kafka,
}

const AUDIT_HELP: &str = "Report the security posture of the namespaces that hold SecurityPolicies, read from the cluster of the current kubeconfig (read-only).

Finding types: UnisolatedPod (no tier of any policy selects the pod), EmptyTier (a tier selects no pod), UncoveredDataPort (a data-tier Service port a flow reaches with no certificate naming the Service), CertificateExpiry (each CA and certificate of status.certificates by time to expiry), CredentialAge (Kafka users, PostgreSQL roles, JWT keys by age since their last rotation), Drift (a facet in Conflict or Contested, or a produced object missing), NotReady (Ready not True, status missing or stale), Inconsistency (the checks behind the Consistent condition).

Severities, lowest first: info, low, medium, high, critical. Certificates: expired critical, under 7 days high, under 30 days medium, otherwise info. Kafka and PostgreSQL passwords: 365 days or older medium, 90 days or older low. JWT keys past rotateEvery by more than a day: high. UnisolatedPod: low under a default-deny (its traffic is blocked), high without. EmptyTier: low. UncoveredDataPort: high. Drift: high (Contested: medium). NotReady: high (status missing or stale: medium). Inconsistency: high (WeakSslMode: medium).

Exit status: 0 when no finding is at or above --fail-on, 1 when one is, 2 when the audit could not run.

JSON (-o json, schemaVersion 1): {schemaVersion, namespaces, failOn, summary: {total, critical, high, medium, low, info, atOrAboveFailOn}, findings: [{type, severity, namespace, policy (null for a pod no policy selects), object (Kind/name), message}]}, findings sorted by namespace, severity (most severe first), type, policy, object.";

/// Output format of `bulwark audit`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AuditOutput {
    Text,
    Json,
}

#[derive(clap::Args)]
struct AuditArgs {
    /// Audit only this namespace; default: every namespace that holds a SecurityPolicy.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    output: AuditOutput,
    /// Exit with status 1 when any finding is at or above this severity.
    #[arg(long, value_enum, default_value = "high")]
    fail_on: bulwark::audit::Severity,
}

#[derive(clap::Args)]
struct RotateArgs {
    /// Everything: CA, leaves, Kafka and PostgreSQL passwords, JWT keys (required).
    #[arg(long, required = true)]
    all: bool,
    /// Name of the SecurityPolicy.
    policy: String,
    /// Namespace of the policy; the kubeconfig's namespace when absent.
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Follow status.rotation and print each phase as it completes.
    #[arg(long)]
    wait: bool,
    /// How long --wait follows before giving up, e.g. 30m or 2h.
    #[arg(long, default_value = "30m")]
    timeout: bulwark::api::GoDuration,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Watch only this namespace (repeatable); cluster-wide when absent.
    #[arg(long = "namespace", env = "BULWARK_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Policies reconciled concurrently.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Take a Lease before reconciling so only one replica writes.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Image of the Jobs that run `bulwark provision`; defaults to this operator's own image.
    #[arg(long, env = "BULWARK_JOB_IMAGE", default_value_t = controller::default_job_image())]
    job_image: String,
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_cli())
}

/// glibc gives each thread that allocates its own heap arena, up to eight per core, and a
/// freed arena's pages stay resident: an operator whose work hops between runtime and blocking
/// threads would hold several mostly empty heaps. Two arenas keep the resident set close to
/// what is in use (see docs/BENCHMARKS.md). Must run before any other thread starts.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn run_cli() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { api_docs: false } => print!("{}", bulwark::crd_yaml()),
        Command::Crd { api_docs: true } => print!("{}", bulwark::api::docs::api_markdown()),
        Command::Version => println!("bulwark {}", env!("CARGO_PKG_VERSION")),
        Command::Render { file } => {
            let policies = bulwark::render::parse_policies(&read_input(&file)?)?;
            print!("{}", bulwark::render::render(&policies)?);
        }
        Command::Explain { file } => {
            let policies = bulwark::render::parse_policies(&read_input(&file)?)?;
            print!("{}", bulwark::render::explain(&policies));
        }
        Command::Run(args) => run(args).await?,
        Command::Rotate(args) => rotate(args).await?,
        Command::Audit(args) => std::process::exit(audit(args).await),
        Command::Provision(ProvisionTarget::Postgres) => provision_postgres().await?,
        Command::Provision(ProvisionTarget::Kafka) => provision_kafka().await?,
    }
    Ok(())
}

fn read_input(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        return std::io::read_to_string(std::io::stdin()).context("reading stdin");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
}

/// Runs `bulwark audit`; returns the exit status.
async fn audit(args: AuditArgs) -> i32 {
    let report = async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let snapshots =
            bulwark::audit::cluster::snapshots(&client, args.namespace.as_deref()).await?;
        let findings = bulwark::audit::audit(&snapshots, jiff::Timestamp::now());
        let namespaces = snapshots.into_iter().map(|s| s.namespace).collect();
        anyhow::Ok(bulwark::audit::report::Report::new(
            namespaces,
            findings,
            args.fail_on,
        ))
    }
    .await;
    match report {
        Ok(report) => {
            match args.output {
                AuditOutput::Text => print!("{}", report.to_text()),
                AuditOutput::Json => print!("{}", report.to_json()),
            }
            i32::from(report.failed())
        }
        Err(e) => {
            eprintln!("bulwark audit: {e:#}");
            2
        }
    }
}

async fn rotate(args: RotateArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let ns = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    debug_assert!(args.all, "clap requires --all");
    let wait = args.wait.then_some(args.timeout.0);
    let mut out = std::io::stdout();
    bulwark::controller::rotation::cli::rotate_all(client, &ns, &args.policy, wait, &mut out).await
}

async fn provision_postgres() -> anyhow::Result<()> {
    use bulwark::provision::postgres::{ProvisionInput, provision_postgres};
    telemetry::init_tracing(LogFormat::Text);
    let outcome = match ProvisionInput::from_env() {
        Ok(input) => provision_postgres(&input).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(summary) => {
            tracing::info!(
                created = ?summary.created,
                applied = ?summary.applied,
                disabled = ?summary.disabled,
                "PostgreSQL roles provisioned"
            );
            Ok(())
        }
        Err(e) => {
            write_termination_log(e.reason(), &e);
            Err(anyhow::Error::new(e).context("provisioning PostgreSQL roles"))
        }
    }
}

async fn provision_kafka() -> anyhow::Result<()> {
    use bulwark::provision::kafka::{ProvisionInput, provision_kafka};
    telemetry::init_tracing(LogFormat::Text);
    let outcome = match ProvisionInput::from_env() {
        Ok(input) => provision_kafka(&input).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(summary) => {
            tracing::info!(
                registered = ?summary.registered,
                removed = ?summary.removed,
                already_absent = ?summary.already_absent,
                "Kafka SCRAM credentials provisioned"
            );
            Ok(())
        }
        Err(e) => {
            write_termination_log(e.reason(), &e);
            Err(anyhow::Error::new(e).context("provisioning Kafka SCRAM credentials"))
        }
    }
}

/// `<Reason>: <message>`, which the kubelet turns into the pod's termination message for the
/// operator.
fn write_termination_log(reason: &str, message: &dyn std::fmt::Display) {
    let log = std::env::var_os("BULWARK_TERMINATION_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/dev/termination-log".into());
    if log.exists() {
        let _ = std::fs::write(&log, format!("{reason}: {message}"));
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_tracing(args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (addr, _server) = telemetry::serve(
        args.metrics_addr,
        Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        },
    )
    .await
    .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");

    let instance = std::env::var("POD_NAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "bulwark".into());
    let identity = format!("{instance}-{}", std::process::id());
    client
        .apiserver_version()
        .await
        .context("reaching the API server")?;
    ready.store(true, Ordering::Relaxed);

    let lease = args
        .leader_elect
        .then(|| leader::LeaseConfig::new(&args.leader_election_namespace, &identity));
    if let Some(cfg) = &lease {
        tokio::select! {
            _ = leader::acquire(&client, cfg) => {}
            _ = shutdown_signal() => return Ok(()),
        }
    }

    let settings = Settings {
        namespaces: args.namespaces,
        concurrency: args.concurrency.max(1),
        instance,
        job_image: args.job_image,
    };
    let controller = controller::run(client.clone(), settings, metrics, shutdown_signal());
    match &lease {
        Some(cfg) => {
            tokio::select! {
                _ = controller => {}
                _ = leader::hold(&client, cfg) => {
                    // Exiting is the safe way to stop writing: the replacement pod starts clean.
                    anyhow::bail!("lost leadership");
                }
            }
        }
        None => controller.await,
    }
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
