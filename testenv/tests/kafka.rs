//! The Kafka harness runs a real KRaft broker with SASL_SSL, real SCRAM credentials and TLS.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use bulwark_testenv::kafka::{
    ClientOutcome, Kafka, KafkaOptions, KafkaTls, properties_escape, roundtrip,
};
use bulwark_testenv::tls::{TestPki, test_pki};

/// A client.properties file that is removed when dropped.
struct PropsFile(PathBuf);

impl PropsFile {
    fn new(name: &str, contents: &str) -> PropsFile {
        let path = std::env::temp_dir().join(format!(
            "bulwark-testenv-test-{}-{name}.properties",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        PropsFile(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PropsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn server_pki() -> TestPki {
    test_pki(&["localhost"], &["127.0.0.1"])
}

fn tls_of(pki: &TestPki) -> KafkaTls {
    KafkaTls {
        cert_chain_pem: pki.cert_pem.clone(),
        key_pem: pki.key_pem.clone(),
        ca_pem: pki.ca_pem.clone(),
    }
}

/// One SCRAM-SHA-512 broker for the tests that only need a client to connect.
fn scram_broker() -> &'static Kafka {
    static BROKER: OnceLock<Kafka> = OnceLock::new();
    BROKER.get_or_init(|| {
        let started = Instant::now();
        let kafka = Kafka::start(KafkaOptions::new(tls_of(&server_pki())))
            .unwrap_or_else(|e| panic!("starting the SCRAM broker: {e:#}"));
        eprintln!(
            "kafka: SCRAM broker at {} ready in {:?}",
            kafka.bootstrap(),
            started.elapsed()
        );
        kafka
    })
}

/// client.properties written the way the operator writes them: the PEM truststore inline,
/// its newlines escaped as `\n`.
fn scram_client_props(kafka: &Kafka, mechanism: &str, password: &str, ca_pem: &str) -> String {
    format!(
        "bootstrap.servers={}\n\
         security.protocol=SASL_SSL\n\
         sasl.mechanism={mechanism}\n\
         sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
         username=\"{}\" password=\"{password}\";\n\
         ssl.truststore.type=PEM\n\
         ssl.truststore.certificates={}\n",
        kafka.bootstrap(),
        kafka.admin_user(),
        ca_pem.replace('\n', "\\n"),
    )
}

fn topic(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

#[test]
fn scram_admin_round_trips_through_an_inline_pem_truststore() {
    let kafka = scram_broker();
    assert_eq!(kafka.bootstrap(), format!("localhost:{}", kafka.port()));
    let props = scram_client_props(
        kafka,
        "SCRAM-SHA-512",
        kafka.admin_password(),
        kafka.ca_pem(),
    );
    assert!(
        props.contains("-----BEGIN CERTIFICATE-----\\n"),
        "the truststore PEM must sit on one line: {props}"
    );
    let file = PropsFile::new("scram-ok", &props);
    assert_eq!(
        roundtrip(file.path(), &topic("scram-ok"), &[]).unwrap(),
        ClientOutcome::Ok
    );
}

#[test]
fn wrong_password_is_an_authentication_failure() {
    let kafka = scram_broker();
    let file = PropsFile::new(
        "scram-bad-password",
        &scram_client_props(kafka, "SCRAM-SHA-512", "not-the-password", kafka.ca_pem()),
    );
    let outcome = roundtrip(file.path(), &topic("scram-bad-password"), &[]).unwrap();
    assert!(
        matches!(&outcome, ClientOutcome::AuthFailed(m) if m.starts_with("SaslAuthenticationException:")),
        "{outcome:?}"
    );
}

#[test]
fn mechanism_not_enabled_on_the_listener_is_an_authentication_failure() {
    let kafka = scram_broker();
    let file = PropsFile::new(
        "scram-256-disabled",
        &scram_client_props(
            kafka,
            "SCRAM-SHA-256",
            kafka.admin_password(),
            kafka.ca_pem(),
        ),
    );
    let outcome = roundtrip(file.path(), &topic("scram-256-disabled"), &[]).unwrap();
    assert!(
        matches!(&outcome, ClientOutcome::AuthFailed(m) if m.starts_with("UnsupportedSaslMechanismException:")),
        "{outcome:?}"
    );
}

#[test]
fn client_trusting_another_ca_fails_the_tls_handshake() {
    let kafka = scram_broker();
    let other_ca = server_pki().ca_pem;
    let file = PropsFile::new(
        "other-ca",
        &scram_client_props(kafka, "SCRAM-SHA-512", kafka.admin_password(), &other_ca),
    );
    let outcome = roundtrip(file.path(), &topic("other-ca"), &[]).unwrap();
    assert!(
        matches!(&outcome, ClientOutcome::TlsFailed(m) if m.starts_with("SslAuthenticationException:")),
        "{outcome:?}"
    );
}

#[test]
fn plaintext_client_on_the_sasl_ssl_port_gets_nowhere() {
    let kafka = scram_broker();
    let file = PropsFile::new(
        "plaintext",
        &format!(
            "bootstrap.servers={}\nsecurity.protocol=PLAINTEXT\n",
            kafka.bootstrap()
        ),
    );
    // Overrides win over the file, as the operator's Job would pass them.
    let outcome = roundtrip(
        file.path(),
        &topic("plaintext"),
        &[("default.api.timeout.ms", "5000")],
    )
    .unwrap();
    // Not an authentication failure either: the broker never gets to SASL.
    assert!(
        matches!(&outcome, ClientOutcome::Other(m) if m.starts_with("TimeoutException:")),
        "{outcome:?}"
    );
}

#[test]
fn plain_mechanism_from_extra_properties_and_scram_sha_256_admin_both_work() {
    let pki = server_pki();
    let mut opts = KafkaOptions::new(tls_of(&pki));
    opts.sasl_mechanisms = vec!["PLAIN".into(), "SCRAM-SHA-256".into()];
    opts.extra_properties.push((
        "listener.name.sasl_ssl.plain.sasl.jaas.config".into(),
        "org.apache.kafka.common.security.plain.PlainLoginModule required \
         user_alice=\"alice-secret\";"
            .into(),
    ));
    let kafka = Kafka::start(opts).unwrap_or_else(|e| panic!("starting the PLAIN broker: {e:#}"));

    let alice = PropsFile::new(
        "plain-alice",
        &kafka.client_properties("PLAIN", "alice", "alice-secret"),
    );
    assert_eq!(
        roundtrip(alice.path(), &topic("plain-alice"), &[]).unwrap(),
        ClientOutcome::Ok
    );
    let outcome = roundtrip(
        alice.path(),
        &topic("plain-alice"),
        &[(
            "sasl.jaas.config",
            "org.apache.kafka.common.security.plain.PlainLoginModule required \
             username=\"alice\" password=\"wrong\";",
        )],
    )
    .unwrap();
    assert!(
        matches!(&outcome, ClientOutcome::AuthFailed(m) if m.starts_with("SaslAuthenticationException:")),
        "{outcome:?}"
    );

    let admin = PropsFile::new(
        "scram-256-admin",
        &scram_client_props(&kafka, "SCRAM-SHA-256", kafka.admin_password(), &pki.ca_pem),
    );
    assert_eq!(
        roundtrip(admin.path(), &topic("scram-256-admin"), &[]).unwrap(),
        ClientOutcome::Ok
    );

    let dir = kafka.state_dir().to_path_buf();
    let port = kafka.port();
    drop(kafka);
    assert!(!dir.exists(), "{} survived the drop", dir.display());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "port {port} still accepts connections after the drop"
    );
}

#[test]
fn properties_escape_keeps_a_pem_on_one_line() {
    let escaped = properties_escape(" a\\b\nc\u{e9}");
    assert_eq!(escaped, "\\ a\\\\b\\nc\\u00e9");
    assert!(!escaped.contains('\n'));
}

#[test]
fn start_fails_fast_when_the_certificate_does_not_cover_the_advertised_host() {
    let pki = test_pki(&["kafka.example"], &[]);
    let started = Instant::now();
    let err = Kafka::start(KafkaOptions::new(tls_of(&pki))).unwrap_err();
    assert!(
        format!("{err:#}").contains("does not verify for \"localhost\""),
        "{err:#}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}
