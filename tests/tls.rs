//! The TLS facet against a real control plane and real TLS peers: PostgreSQL with
//! verify-full, Java's keytool, openssl.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use bulwark::api::SecurityPolicy;
use bulwark_testenv::{PgTls, Postgres};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use support::*;

async fn serials(client: &kube::Client, ns: &str) -> BTreeMap<String, String> {
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    let status = api.get("traffic").await.unwrap().status.unwrap_or_default();
    status
        .certificates
        .into_iter()
        .map(|c| (c.name, c.serial))
        .collect()
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_certificates_are_trusted_by_real_tls_peers() {
    let client = client().await;
    let ns = namespace(&client, "tls-peers").await;
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "TLSReady", "True").await;
    assert_eq!(reason, "Issued", "{message}");
    wait_condition(&client, &ns, "traffic", "Ready", "True").await;

    let inventory = serials(&client, &ns).await;
    assert_eq!(
        inventory.keys().collect::<Vec<_>>(),
        ["api", "ca", "kafka", "postgres"],
        "status lists the CA and every certificate"
    );

    let pg = secret_bytes(&client, &ns, "postgres-tls").await;
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("traffic-trust-bundle")
        .await
        .unwrap()
        .data
        .unwrap()["ca.crt"]
        .clone();
    assert_eq!(
        String::from_utf8(pg["ca.crt"].clone()).unwrap(),
        bundle,
        "Secret ca.crt is the trust bundle"
    );

    // PostgreSQL serves the produced certificate; libpq verifies it against the bundle by host name.
    let server = Postgres::start(Some(PgTls {
        cert_pem: String::from_utf8(pg["tls.crt"].clone()).unwrap(),
        key_pem: String::from_utf8(pg["tls.key"].clone()).unwrap(),
        ca_pem: bundle.clone(),
    }))
    .expect("PostgreSQL starts with the produced certificate");
    let dir = scratch_dir("pg");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, &bundle).unwrap();
    let psql = |host: &str| {
        Command::new("psql")
            .arg(format!(
                "host={host} hostaddr=127.0.0.1 port={} user={} dbname=postgres sslmode=verify-full sslrootcert={}",
                server.port(),
                server.superuser(),
                ca_file.display()
            ))
            .args(["-XAtqc", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"])
            .env("PGPASSWORD", server.superuser_password())
            .output()
            .unwrap()
    };
    let ok = psql("postgres.traffic.svc");
    assert!(
        ok.status.success(),
        "verify-full failed: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "t");
    let wrong_host = psql("kafka.traffic.svc");
    assert!(
        !wrong_host.status.success(),
        "a name outside the certificate must fail verify-full"
    );

    // Java reads the PKCS#12 keystore and truststore with the generated password, as-is.
    let kafka = secret_bytes(&client, &ns, "kafka-tls").await;
    let password = String::from_utf8(kafka["keystore.password"].clone()).unwrap();
    assert!(password.len() >= 16);
    if Command::new("keytool").arg("-help").output().is_ok() {
        for (file, entry) in [
            ("keystore.p12", "PrivateKeyEntry"),
            ("truststore.p12", "trustedCertEntry"),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, &kafka[file]).unwrap();
            let out = Command::new("keytool")
                .args(["-list", "-storetype", "PKCS12", "-keystore"])
                .arg(&path)
                .args(["-storepass", &password])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(entry),
                "keytool on {file}: {text}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_annotation_reissues_leaves_once_and_keeps_the_ca() {
    let client = client().await;
    let ns = namespace(&client, "tls-rotate").await;
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();
    wait_condition(&client, &ns, "traffic", "TLSReady", "True").await;
    let before = serials(&client, &ns).await;
    let ca_before = secret_bytes(&client, &ns, "traffic-ca").await;

    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "2026-12-04"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the rotation to be handled",
        || async {
            let status = api.get("traffic").await.ok()?.status?;
            (status.handled_rotation.as_deref() == Some("2026-12-04")).then_some(())
        },
    )
    .await;
    let after = serials(&client, &ns).await;
    assert_eq!(before["ca"], after["ca"], "the CA stays");
    for leaf in ["api", "kafka", "postgres"] {
        assert_ne!(before[leaf], after[leaf], "{leaf} is re-issued");
    }
    assert_eq!(ca_before, secret_bytes(&client, &ns, "traffic-ca").await);

    // Once handled, the same annotation value rotates nothing more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(after, serials(&client, &ns).await);
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_secret_yields_conflict_and_stays_untouched() {
    let client = client().await;
    let ns = namespace(&client, "tls-conflict").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let foreign = Secret {
        metadata: ObjectMeta {
            name: Some("api-tls".into()),
            ..ObjectMeta::default()
        },
        string_data: Some([("tls.crt".to_string(), "someone else's".to_string())].into()),
        ..Secret::default()
    };
    let foreign = secrets
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();
    let operator = Operator::start(&client, &ns);
    apply_policy(&client, &example_policy(&ns)).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "TLSReady", "False").await;
    assert_eq!(reason, "Conflict");
    assert!(message.contains("Secret api-tls"), "{message}");
    let live = secrets.get("api-tls").await.unwrap();
    assert_eq!(
        live.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert!(
        secrets.get_opt("kafka-tls").await.unwrap().is_some(),
        "other certificates are still issued"
    );
    operator.stop().await;
}

/// Verifies every leaf against the bundle with openssl, as a client holding that bundle would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_rollover_keeps_every_leaf_trusted_through_each_phase() {
    let client = client().await;
    let ns = namespace(&client, "tls-rollover").await;
    let dir = scratch_dir("rollover");
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    let ca = policy.spec.tls.as_mut().unwrap().ca.as_mut().unwrap();
    ca.rollover_propagation = Some("2s".into());
    ca.rollover_overlap = Some("3s".into());
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "TLSReady", "True").await;
    let before = serials(&client, &ns).await;

    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch =
        serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate-ca": "compromised"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();

    let bundles: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let mut phases: Vec<String> = Vec::new();
    let mut published: Vec<String> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = api.get("traffic").await.unwrap().status.unwrap_or_default();
        let phase = status.ca_rollover_phase.clone().unwrap_or_default();
        let bundle = bundles
            .get("traffic-trust-bundle")
            .await
            .unwrap()
            .data
            .unwrap()["ca.crt"]
            .clone();
        if published.last() != Some(&bundle) {
            // Clients holding this bundle, or the one before it, must trust every leaf served now.
            leaves_verify_against(&client, &ns, &bundle, &dir)
                .await
                .unwrap();
            if let Some(previous) = published.last() {
                leaves_verify_against(&client, &ns, previous, &dir)
                    .await
                    .unwrap();
            }
            published.push(bundle.clone());
        }
        if phases.last() != Some(&phase) {
            phases.push(phase.clone());
        }
        let done = status.handled_ca_rotation.as_deref() == Some("compromised")
            && phase == "Stable"
            && phases.len() > 1;
        if done {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollover did not finish; phases seen: {phases:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        phases,
        ["Stable", "NewCATrusted", "LeavesReissued", "Stable"]
    );
    let after = serials(&client, &ns).await;
    assert_ne!(before["ca"], after["ca"], "a new CA signs");
    for leaf in ["api", "kafka", "postgres"] {
        assert_ne!(before[leaf], after[leaf], "{leaf} moved to the new CA");
    }
    let final_bundle = published.last().unwrap();
    assert_eq!(
        final_bundle.matches("BEGIN CERTIFICATE").count(),
        1,
        "the old CA left the bundle"
    );
    assert!(
        published
            .iter()
            .any(|b| b.matches("BEGIN CERTIFICATE").count() == 2),
        "both CAs were trusted at once"
    );
    std::fs::remove_dir_all(&dir).ok();
    operator.stop().await;
}

/// A rustls server serving `chain_pem`/`key_pem` and a rustls client trusting only `trusted_pem`
/// complete a handshake for `server_name` over loopback.
fn rustls_handshake(
    chain_pem: &[u8],
    key_pem: &[u8],
    trusted_pem: &[u8],
    server_name: &str,
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use std::io::{Read, Write};
    use std::sync::Arc;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| e.to_string())?;
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(trusted_pem) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 5];
        if tls.read_exact(&mut buf).is_ok() {
            let _ = tls.write_all(b"pong!");
            let _ = tls.flush();
        }
    });
    let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(Arc::new(client_config), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, std::net::TcpStream::connect(addr).unwrap());
    let result = tls
        .write_all(b"ping!")
        .and_then(|_| tls.flush())
        .and_then(|_| {
            let mut buf = [0u8; 5];
            tls.read_exact(&mut buf).map(|_| buf)
        });
    drop(tls);
    server.join().unwrap();
    match result {
        Ok(buf) if &buf == b"pong!" => Ok(()),
        Ok(_) => Err("unexpected reply".into()),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_peers_handshake_and_san_changes_reissue_only_that_certificate() {
    let client = client().await;
    let ns = namespace(&client, "tls-rustls").await;
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    apply_policy(&client, &policy).await.unwrap();
    wait_condition(&client, &ns, "traffic", "TLSReady", "True").await;

    let api_tls = secret_bytes(&client, &ns, "api-tls").await;
    rustls_handshake(
        &api_tls["tls.crt"],
        &api_tls["tls.key"],
        &api_tls["ca.crt"],
        "api.traffic.svc",
    )
    .expect("client trusting ca.crt accepts the API certificate");
    let kafka = secret_bytes(&client, &ns, "kafka-tls").await;
    rustls_handshake(
        &kafka["tls.crt"],
        &kafka["tls.key"],
        &kafka["ca.crt"],
        "broker-0.kafka-brokers.traffic.svc",
    )
    .expect("wildcard SAN matches a broker name");
    let err = rustls_handshake(
        &api_tls["tls.crt"],
        &api_tls["tls.key"],
        &api_tls["ca.crt"],
        "db.traffic.svc",
    )
    .expect_err("a name outside the SANs fails");
    assert!(err.contains("certificate"), "{err}");
    let other = bulwark_testenv::tls::test_pki(&["api.traffic.svc"], &[]);
    rustls_handshake(
        &api_tls["tls.crt"],
        &api_tls["tls.key"],
        other.ca_pem.as_bytes(),
        "api.traffic.svc",
    )
    .expect_err("a client trusting another CA fails");

    let before = serials(&client, &ns).await;
    add_dns_name(&mut policy, "api", "api.internal.traffic.svc");
    apply_policy(&client, &policy).await.unwrap();
    let after = eventually(
        Duration::from_secs(30),
        "the api certificate to be re-issued",
        || async {
            let now = serials(&client, &ns).await;
            (now["api"] != before["api"]).then_some(now)
        },
    )
    .await;
    for unchanged in ["ca", "kafka", "postgres"] {
        assert_eq!(
            before[unchanged], after[unchanged],
            "{unchanged} must not be re-issued"
        );
    }
    let api_tls = secret_bytes(&client, &ns, "api-tls").await;
    rustls_handshake(
        &api_tls["tls.crt"],
        &api_tls["tls.key"],
        &api_tls["ca.crt"],
        "api.internal.traffic.svc",
    )
    .expect("the new SAN is served");
    operator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_invalid_own_ca_is_reported_and_nothing_is_issued() {
    let client = client().await;
    let ns = namespace(&client, "tls-byo").await;
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    let ca = policy.spec.tls.as_mut().unwrap().ca.as_mut().unwrap();
    ca.secret_name = None;
    ca.existing_secret = Some("corp-ca".into());
    apply_policy(&client, &policy).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "TLSReady", "False").await;
    assert_eq!(reason, "CASecretMissing", "{message}");
    assert!(message.contains("spec.tls.ca.existingSecret"), "{message}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    assert!(
        secrets.get_opt("api-tls").await.unwrap().is_none(),
        "nothing is issued without a CA"
    );

    // A leaf certificate is not a CA: refused, still nothing issued.
    let leaf = bulwark_testenv::tls::test_pki(&["not-a-ca.example"], &[]);
    let not_ca = Secret {
        metadata: ObjectMeta {
            name: Some("corp-ca".into()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            [
                ("tls.crt".to_string(), leaf.cert_pem.clone()),
                ("tls.key".to_string(), leaf.key_pem.clone()),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    secrets
        .create(&PostParams::default(), &not_ca)
        .await
        .unwrap();
    let (reason, message) = eventually(
        Duration::from_secs(90),
        "the invalid CA to be reported",
        || async {
            condition(&client, &ns, "traffic", "TLSReady")
                .await
                .filter(|(_, r, _)| r == "CASecretInvalid")
                .map(|(_, r, m)| (r, m))
        },
    )
    .await;
    assert!(!message.contains("PRIVATE KEY"), "{message}");
    assert_eq!(reason, "CASecretInvalid");
    assert!(secrets.get_opt("api-tls").await.unwrap().is_none());
    operator.stop().await;
}
