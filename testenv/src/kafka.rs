//! A throwaway single-node Apache Kafka (KRaft, broker and controller in one JVM) whose client
//! listener is SASL_SSL on loopback, plus the KafkaCheck client tool to prove client configs.
//!
//! Jars come from `hack/kafka.sh` (Maven Central, cached per version); see [`assets`].

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::process::{self, StopPolicy};

/// Kafka version fetched unless `BULWARK_KAFKA_VERSION` says otherwise.
pub const DEFAULT_KAFKA_VERSION: &str = "4.4.0";

/// The SCRAM mechanisms the admin user gets credentials for at format time.
const SCRAM_MECHANISMS: [&str; 2] = ["SCRAM-SHA-256", "SCRAM-SHA-512"];
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Broker data is throwaway, so there is nothing to shut down cleanly.
const BROKER_STOP: StopPolicy = StopPolicy::KILL;

/// The broker's serving certificate chain, its key (unencrypted PKCS#8 PEM) and the CA, all PEM.
#[derive(Debug, Clone)]
pub struct KafkaTls {
    pub cert_chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// Knobs for [`Kafka::start`].
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// SASL_SSL listener port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Host name advertised to clients; the certificate must cover it.
    pub advertised_host: String,
    pub tls: KafkaTls,
    /// SCRAM user created at storage format time, for both SCRAM-SHA-256 and SCRAM-SHA-512.
    pub admin_user: String,
    pub admin_password: String,
    /// `sasl.enabled.mechanisms` of the SASL_SSL listener, e.g. `["SCRAM-SHA-512"]`.
    pub sasl_mechanisms: Vec<String>,
    /// Appended to server.properties, so they override the defaults (values are escaped here).
    pub extra_properties: Vec<(String, String)>,
}

impl KafkaOptions {
    /// A free port, `localhost`, admin/admin-secret and SCRAM-SHA-512 only.
    pub fn new(tls: KafkaTls) -> Self {
        KafkaOptions {
            port: 0,
            advertised_host: "localhost".into(),
            tls,
            admin_user: "admin".into(),
            admin_password: "admin-secret".into(),
            sasl_mechanisms: vec!["SCRAM-SHA-512".into()],
            extra_properties: Vec::new(),
        }
    }
}

/// Where `hack/kafka.sh` put the jars and the compiled KafkaCheck tool.
#[derive(Debug, Clone)]
pub struct KafkaAssets {
    pub version: String,
    /// Every runtime jar of the broker and of kafka-clients.
    pub libs_dir: PathBuf,
    /// `KafkaCheck.class` and its logging config.
    pub tool_dir: PathBuf,
}

impl KafkaAssets {
    /// Classpath of the broker and the storage tool.
    pub fn broker_classpath(&self) -> String {
        format!("{}/*", self.libs_dir.display())
    }

    /// Classpath of KafkaCheck (and of any other kafka-clients program).
    pub fn tool_classpath(&self) -> String {
        format!("{}/*:{}", self.libs_dir.display(), self.tool_dir.display())
    }
}

/// The Kafka version in use (e.g. `4.4.0`).
pub fn kafka_version() -> String {
    std::env::var("BULWARK_KAFKA_VERSION")
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| DEFAULT_KAFKA_VERSION.to_string())
}

/// Runs `hack/kafka.sh` once per process (it returns at once when everything is cached).
pub fn assets() -> anyhow::Result<KafkaAssets> {
    static ASSETS: OnceLock<Result<KafkaAssets, String>> = OnceLock::new();
    ASSETS
        .get_or_init(|| fetch_assets().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn fetch_assets() -> anyhow::Result<KafkaAssets> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("testenv has no parent directory"))?
        .join("hack/kafka.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("KAFKA_VERSION", kafka_version())
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let var = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{} printed no {name}:\n{stdout}", script.display()))
    };
    Ok(KafkaAssets {
        version: var("KAFKA_VERSION")?,
        libs_dir: var("KAFKA_LIBS")?.into(),
        tool_dir: var("KAFKA_TOOL_DIR")?.into(),
    })
}

/// A free loopback port (nothing holds it once this returns).
pub fn free_port() -> u16 {
    process::free_ports(1).expect("picking a free loopback port")[0]
}

/// A running broker; Drop kills it and removes its state dir.
#[derive(Debug)]
pub struct Kafka {
    dir: PathBuf,
    port: u16,
    internal_port: u16,
    advertised_host: String,
    admin_user: String,
    admin_password: String,
    ca_pem: String,
    broker: Option<Child>,
}

impl Kafka {
    /// Formats storage (with the SCRAM admin) and starts the broker; returns once the SASL_SSL
    /// listener completes a TLS handshake for `advertised_host` against the given CA.
    pub fn start(opts: KafkaOptions) -> anyhow::Result<Kafka> {
        let assets = assets()?;
        if opts.sasl_mechanisms.is_empty() {
            bail!("KafkaOptions::sasl_mechanisms is empty");
        }
        let (port, controller_port, internal_port) = pick_ports(opts.port)?;
        let dir = process::create_state_dir("kafka")?;
        let mut kafka = Kafka {
            dir,
            port,
            internal_port,
            advertised_host: opts.advertised_host.clone(),
            admin_user: opts.admin_user.clone(),
            admin_password: opts.admin_password.clone(),
            ca_pem: opts.tls.ca_pem.clone(),
            broker: None,
        };
        // On error, Drop stops whatever started and removes the dir.
        kafka.format_and_run(&assets, &opts, controller_port)?;
        Ok(kafka)
    }

    fn format_and_run(
        &mut self,
        assets: &KafkaAssets,
        opts: &KafkaOptions,
        controller_port: u16,
    ) -> anyhow::Result<()> {
        let ca_file = self.dir.join("ca.pem");
        fs::write(&ca_file, &opts.tls.ca_pem)?;
        let config = self.dir.join("server.properties");
        fs::write(
            &config,
            server_properties(
                &self.dir,
                opts,
                self.port,
                controller_port,
                self.internal_port,
            ),
        )?;
        let log4j = self.dir.join("log4j2.xml");
        fs::write(&log4j, BROKER_LOG4J2)?;

        let format_log = self.dir.join("format.log");
        let log4j_flag = format!("-Dlog4j2.configurationFile={}", log4j.display());
        let mut format = java(
            &assets.broker_classpath(),
            "256m",
            &["-XX:TieredStopAtLevel=1", &log4j_flag],
        );
        format
            .arg("kafka.tools.StorageTool")
            .arg("format")
            .arg("--cluster-id")
            .arg(cluster_id())
            .arg("--config")
            .arg(&config);
        for mechanism in SCRAM_MECHANISMS {
            format.arg("--add-scram").arg(format!(
                "{mechanism}=[name={},password={}]",
                scram_arg_value(&opts.admin_user)?,
                scram_arg_value(&opts.admin_password)?
            ));
        }
        format.current_dir(&self.dir);
        redirect(&mut format, &format_log)?;
        let status = process::spawn_tied(format, None)
            .context("starting the Kafka storage tool")?
            .wait()?;
        if !status.success() {
            bail!(
                "formatting Kafka storage failed ({status}):\n{}",
                process::log_tail(&format_log, 40)
            );
        }

        let logs_flag = format!("-Dkafka.logs.dir={}", self.dir.join("logs").display());
        let mut broker = java(
            &assets.broker_classpath(),
            "512m",
            &[
                // A test broker moves little data: start fast rather than run fast.
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-XX:+ExitOnOutOfMemoryError",
                &log4j_flag,
                &logs_flag,
            ],
        );
        broker
            .arg("kafka.Kafka")
            .arg(&config)
            .current_dir(&self.dir)
            .process_group(0);
        redirect(&mut broker, &self.log_path())?;
        let child = process::spawn_tied(broker, None).context("starting the Kafka broker")?;
        process::track_process(child.id(), BROKER_STOP);
        self.broker = Some(child);
        self.wait_until_ready()
    }

    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let tls = tls_client_config(&self.ca_pem)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.broker.as_mut().and_then(|c| c.try_wait().transpose()) {
                bail!(
                    "the Kafka broker exited ({}):\n{}",
                    status?,
                    process::log_tail(&self.log_path(), 60)
                );
            }
            let handshake = tls_handshake(&tls, addr, &self.advertised_host);
            match &handshake {
                Ok(()) => return Ok(()),
                // Retrying cannot fix a certificate that does not verify.
                Err(e) if is_certificate_error(e) => bail!(
                    "the Kafka SASL_SSL listener on {addr} serves a certificate that does not \
                     verify for {:?} against the CA: {e:#}",
                    self.advertised_host
                ),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                bail!(
                    "the Kafka SASL_SSL listener on {addr} completed no TLS handshake for {:?} \
                     within {START_TIMEOUT:?} (last error: {:#}):\n{}",
                    self.advertised_host,
                    handshake.unwrap_err(),
                    process::log_tail(&self.log_path(), 60)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `<advertised_host>:<port>` of the SASL_SSL listener.
    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.advertised_host, self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_user(&self) -> &str {
        &self.admin_user
    }

    pub fn admin_password(&self) -> &str {
        &self.admin_password
    }

    /// The broker's stdout, stderr and log4j output.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }

    /// The state dir: server.properties, data, logs.
    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    /// The PEM CA that signed the broker's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// `127.0.0.1:<port>` of the unauthenticated PLAINTEXT inter-broker listener, for tests
    /// that need to look at the broker without going through SASL_SSL.
    pub fn internal_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.internal_port)
    }

    /// A client.properties for SASL_SSL with the given mechanism and credentials, trusting the
    /// broker's CA through an inline PEM truststore (newlines escaped as `\n`).
    pub fn client_properties(&self, mechanism: &str, user: &str, password: &str) -> String {
        let login_module = if mechanism.eq_ignore_ascii_case("PLAIN") {
            "org.apache.kafka.common.security.plain.PlainLoginModule"
        } else {
            "org.apache.kafka.common.security.scram.ScramLoginModule"
        };
        let jaas = format!(
            "{login_module} required username=\"{}\" password=\"{}\";",
            jaas_escape(user),
            jaas_escape(password)
        );
        let mut props = String::new();
        for (key, value) in [
            ("bootstrap.servers", self.bootstrap().as_str()),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", mechanism),
            ("sasl.jaas.config", jaas.as_str()),
            ("ssl.truststore.type", "PEM"),
            ("ssl.truststore.certificates", self.ca_pem.as_str()),
        ] {
            let _ = writeln!(props, "{key}={}", properties_escape(value));
        }
        props
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        if let Some(child) = self.broker.take() {
            process::untrack_process(child.id());
            // The broker leads its own process group: take down anything it started, too.
            // SAFETY: plain syscall.
            unsafe { libc::kill(-(child.id() as i32), BROKER_STOP.signal) };
            process::stop_children(&[(child.id() as i32, BROKER_STOP)]);
        }
        let _ = fs::remove_dir_all(&self.dir);
        process::untrack_dir(&self.dir);
    }
}

/// What KafkaCheck reported for one client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutcome {
    /// A record was produced and read back.
    Ok,
    /// SASL authentication failed: `SaslAuthenticationException: ...` (bad credentials) or
    /// another AuthenticationException, e.g. `UnsupportedSaslMechanismException: ...`.
    AuthFailed(String),
    /// The TLS handshake failed (`SslAuthenticationException: ...`).
    TlsFailed(String),
    /// Anything else, e.g. a timeout; carries the exception name and message.
    Other(String),
}

/// Runs `KafkaCheck roundtrip` with `props_file` (loaded by java.util.Properties) plus
/// `overrides`: ensures `topic` exists, produces one record and consumes it back.
///
/// Errors only when the tool cannot run at all; client failures are a [`ClientOutcome`].
pub fn roundtrip(
    props_file: &Path,
    topic: &str,
    overrides: &[(&str, &str)],
) -> anyhow::Result<ClientOutcome> {
    let assets = assets()?;
    // A plaintext client on a TLS port reads the TLS alert as a ~350 MB response size and
    // allocates it: the heap must hold that, or the failure is an OutOfMemoryError instead
    // of the client's own timeout. A short-lived client: skip the optimising JIT.
    let mut cmd = java(
        &assets.tool_classpath(),
        "1g",
        &["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"],
    );
    cmd.arg("KafkaCheck")
        .arg("roundtrip")
        .arg(props_file)
        .arg(topic);
    for (key, value) in overrides {
        cmd.arg("--set").arg(format!("{key}={value}"));
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = process::spawn_tied(cmd, None)
        .context("starting KafkaCheck")?
        .wait_with_output()
        .context("waiting for KafkaCheck")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failure = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("FAIL "))
        .map(str::to_string);
    let ok = stdout.lines().any(|l| l.starts_with("OK"));
    // KafkaCheck's exit code says which kind of failure its FAIL line names.
    Ok(match (out.status.code(), failure) {
        (Some(0), _) if ok => ClientOutcome::Ok,
        (Some(2), Some(failure)) => ClientOutcome::AuthFailed(failure),
        (Some(3), Some(failure)) => ClientOutcome::TlsFailed(failure),
        (Some(1), Some(failure)) => ClientOutcome::Other(failure),
        (_, failure) => {
            let lines: Vec<&str> = stderr.lines().collect();
            ClientOutcome::Other(format!(
                "KafkaCheck exited {} ({}):\n{}",
                out.status,
                failure.as_deref().unwrap_or("no result line"),
                lines[lines.len().saturating_sub(20)..].join("\n")
            ))
        }
    })
}

/// Escapes a value for a java.util.Properties file (newlines become `\n`, non-ASCII `\uXXXX`).
pub fn properties_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0c' => out.push_str("\\f"),
            // Leading blanks would be stripped as separator whitespace.
            ' ' if i == 0 => out.push_str("\\ "),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out
}

fn jaas_escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A `name=`/`password=` value for `--add-scram`, whose parser splits on `,`, `=` and `]`.
fn scram_arg_value(value: &str) -> anyhow::Result<String> {
    if value.is_empty() || value.contains(['"', ',', '=', '[', ']']) || value.trim() != value {
        bail!("{value:?} cannot be passed to the Kafka storage tool as a SCRAM user or password");
    }
    Ok(format!("\"{value}\""))
}

fn server_properties(
    dir: &Path,
    opts: &KafkaOptions,
    port: u16,
    controller_port: u16,
    internal_port: u16,
) -> String {
    let chain = &opts.tls.cert_chain_pem;
    let mut props: Vec<(String, String)> = [
        ("process.roles", "broker,controller".to_string()),
        ("node.id", "1".into()),
        (
            "controller.quorum.voters",
            format!("1@127.0.0.1:{controller_port}"),
        ),
        ("controller.listener.names", "CONTROLLER".into()),
        (
            "listeners",
            format!(
                "SASL_SSL://127.0.0.1:{port},INTERNAL://127.0.0.1:{internal_port},\
                 CONTROLLER://127.0.0.1:{controller_port}"
            ),
        ),
        (
            "advertised.listeners",
            format!(
                "SASL_SSL://{}:{port},INTERNAL://127.0.0.1:{internal_port}",
                opts.advertised_host
            ),
        ),
        (
            "listener.security.protocol.map",
            "SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT".into(),
        ),
        ("inter.broker.listener.name", "INTERNAL".into()),
        ("log.dirs", dir.join("data").display().to_string()),
        ("sasl.enabled.mechanisms", opts.sasl_mechanisms.join(",")),
        // Inline PEM: a PEM keystore file (ssl.keystore.location) demands ssl.key.password.
        ("ssl.keystore.type", "PEM".into()),
        ("ssl.keystore.certificate.chain", chain.clone()),
        ("ssl.keystore.key", opts.tls.key_pem.clone()),
        ("ssl.truststore.type", "PEM".into()),
        (
            "ssl.truststore.location",
            dir.join("ca.pem").display().to_string(),
        ),
        // Harmless without an authorizer; lets extra_properties switch one on.
        (
            "super.users",
            format!("User:{};User:ANONYMOUS", opts.admin_user),
        ),
        ("auto.create.topics.enable", "true".into()),
        ("num.partitions", "1".into()),
        ("default.replication.factor", "1".into()),
        ("min.insync.replicas", "1".into()),
        ("offsets.topic.replication.factor", "1".into()),
        ("offsets.topic.num.partitions", "1".into()),
        ("transaction.state.log.replication.factor", "1".into()),
        ("transaction.state.log.min.isr", "1".into()),
        ("transaction.state.log.num.partitions", "1".into()),
        (
            "share.coordinator.state.topic.replication.factor",
            "1".into(),
        ),
        ("share.coordinator.state.topic.min.isr", "1".into()),
        ("group.initial.rebalance.delay.ms", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for mechanism in SCRAM_MECHANISMS {
        props.push((
            format!(
                "listener.name.sasl_ssl.{}.sasl.jaas.config",
                mechanism.to_ascii_lowercase()
            ),
            "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
        ));
    }
    props.extend(opts.extra_properties.iter().cloned());
    props
        .iter()
        .map(|(k, v)| format!("{k}={}\n", properties_escape(v)))
        .collect()
}

/// Log4j2 config of the broker: INFO to stdout, which goes to kafka.log.
const BROKER_LOG4J2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stdout" target="SYSTEM_OUT">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
"#;

/// `java` (from JAVA_HOME when set) with a heap cap, JVM flags and a classpath; add the class.
fn java(classpath: &str, max_heap: &str, jvm_flags: &[&str]) -> Command {
    let java = std::env::var_os("JAVA_HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join("bin/java"))
        .filter(|j| j.is_file())
        .unwrap_or_else(|| PathBuf::from("java"));
    let mut cmd = Command::new(java);
    cmd.arg(format!("-Xmx{max_heap}"))
        .arg("-Djava.awt.headless=true")
        .args(jvm_flags)
        .arg("-cp")
        .arg(classpath);
    cmd
}

fn pick_ports(port: u16) -> anyhow::Result<(u16, u16, u16)> {
    for _ in 0..16 {
        let free = process::free_ports(3)?;
        let sasl = if port == 0 { free[2] } else { port };
        if free[0] != sasl && free[1] != sasl {
            return Ok((sasl, free[0], free[1]));
        }
    }
    bail!("cannot pick Kafka ports distinct from {port}")
}

/// A random cluster id: 16 bytes, base64url without padding, as `kafka-storage random-uuid`
/// (which likewise never starts one with `-`, since that reads as a command-line flag).
fn cluster_id() -> String {
    loop {
        let hex = process::random_hex(16);
        let bytes: Vec<u8> = (0..16)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("random_hex gives hex"))
            .collect();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn redirect(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(())
}

fn tls_client_config(ca_pem: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("parsing the CA PEM")?)
            .context("adding the CA to the trust store")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn is_certificate_error(err: &anyhow::Error) -> bool {
    let rustls_error = err
        .downcast_ref::<io::Error>()
        .and_then(|e| e.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .or_else(|| err.downcast_ref::<rustls::Error>());
    matches!(rustls_error, Some(rustls::Error::InvalidCertificate(_)))
}

/// One verified TLS handshake (the SASL exchange that would follow is not started).
fn tls_handshake(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    server_name: &str,
) -> anyhow::Result<()> {
    let name = ServerName::try_from(server_name.to_string())?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name)?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.set_write_timeout(Some(Duration::from_secs(2)))?;
    while conn.is_handshaking() {
        let (read, written) = conn.complete_io(&mut sock)?;
        if read == 0 && written == 0 && conn.is_handshaking() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
    Ok(())
}
