use std::path::PathBuf;
use std::process::Command;

use k8s_openapi::ByteString;
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};

use super::*;
use crate::api::{CertificateDefaults, PrivateKeySpec};
use crate::kube_io::{LABEL_FACET, LABEL_MANAGED_BY, LABEL_POLICY};

const POLICY: &str = r#"
tiers:
  data: {podSelector: {matchLabels: {tier: data}}}
tls:
  ca: {secretName: traffic-ca, commonName: traffic-ca}
  certificates:
    - {name: kafka, secretName: kafka-tls, dnsNames: [kafka.traffic.svc, "*.kafka-brokers.traffic.svc"], usages: [server, client], formats: [PKCS12]}
    - {name: postgres, secretName: postgres-tls, dnsNames: [postgres.traffic.svc], ipAddresses: ["10.0.0.7"]}
"#;

use crate::facets::test_policy as policy;

fn now() -> Timestamp {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

fn hours(h: u64) -> Duration {
    Duration::from_secs(h * 3600)
}

fn later(h: u64) -> Timestamp {
    pki::plus(now(), hours(h))
}

/// Secrets of a previous run, as the reconciler would read them back.
struct World {
    ca: Option<SecretData>,
    ca_annotations: Option<BTreeMap<String, String>>,
    leaves: BTreeMap<String, SecretData>,
}

impl World {
    fn empty() -> Self {
        Self {
            ca: None,
            ca_annotations: None,
            leaves: BTreeMap::new(),
        }
    }

    fn after(desired: &DesiredTls) -> Self {
        Self {
            ca: desired.ca_secret.as_ref().map(data),
            ca_annotations: desired
                .ca_secret
                .as_ref()
                .and_then(|s| s.metadata.annotations.clone()),
            leaves: desired
                .leaf_secrets
                .iter()
                .map(|s| (s.name_any(), data(s)))
                .collect(),
        }
    }

    fn observed(&self) -> ObservedTls<'_> {
        ObservedTls {
            ca: self.ca.as_ref(),
            ca_annotations: self.ca_annotations.as_ref(),
            leaves: self.leaves.iter().map(|(k, v)| (k.clone(), v)).collect(),
            ..ObservedTls::default()
        }
    }
}

fn data(secret: &Secret) -> SecretData {
    secret.data.clone().unwrap()
}

fn run(p: &SecurityPolicy, world: &World, at: Timestamp) -> DesiredTls {
    desired_tls(p, &world.observed(), at).unwrap().unwrap()
}

fn leaf<'a>(desired: &'a DesiredTls, name: &str) -> &'a Secret {
    desired
        .leaf_secrets
        .iter()
        .find(|s| s.name_any() == name)
        .unwrap()
}

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bulwark-tls-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn reasons(desired: &DesiredTls) -> Vec<(String, ReissueReason)> {
    desired
        .issued
        .iter()
        .map(|i| (i.name.clone(), i.reason))
        .collect()
}

fn request(dns: &[&str], kind: KeyKind) -> LeafRequest {
    LeafRequest {
        name: "api".into(),
        secret_name: "api-tls".into(),
        common_name: dns[0].into(),
        dns_names: dns.iter().map(|d| d.to_string()).collect(),
        ip_addresses: BTreeSet::new(),
        usages: Usages {
            server: true,
            client: false,
        },
        key: kind,
        duration: hours(2160),
        renew_before: hours(720),
        pkcs12: false,
    }
}

fn ca(kind: KeyKind, cn: &str) -> CertificateAuthority {
    CertificateAuthority::generate(
        &CaRequest {
            common_name: cn.into(),
            key: kind,
            duration: hours(43800),
            renew_before: hours(8760),
        },
        now(),
    )
    .unwrap()
}

fn leaf_data(leaf: &IssuedLeaf) -> SecretData {
    BTreeMap::from([
        (TLS_CRT.to_string(), bytes(&leaf.chain_pem)),
        (TLS_KEY.to_string(), bytes(leaf.key_pem.expose())),
    ])
}

#[test]
fn first_run_issues_the_ca_and_every_leaf_into_labelled_tls_secrets() {
    let p = policy(POLICY);
    let desired = run(&p, &World::empty(), now());
    assert_eq!(
        reasons(&desired),
        vec![
            ("ca".to_string(), ReissueReason::Missing),
            ("kafka".to_string(), ReissueReason::Missing),
            ("postgres".to_string(), ReissueReason::Missing),
        ]
    );
    let ca_secret = desired.ca_secret.as_ref().unwrap();
    assert_eq!(ca_secret.name_any(), "traffic-ca");
    let mut all: Vec<&Secret> = desired.leaf_secrets.iter().collect();
    all.push(ca_secret);
    for s in &all {
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], "bulwark");
        assert_eq!(labels[LABEL_POLICY], "traffic");
        assert_eq!(labels[LABEL_FACET], "tls");
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "0b6f3c52-policy-uid");
        assert!(text(s, TLS_KEY).starts_with("-----BEGIN PRIVATE KEY-----"));
    }
    let bundle = &desired.trust_bundle;
    assert_eq!(bundle.name_any(), "traffic-trust-bundle");
    let bundle_pem = &bundle.data.as_ref().unwrap()[CA_CRT];
    assert_eq!(bundle_pem, &text(ca_secret, TLS_CRT));
    for s in &desired.leaf_secrets {
        assert_eq!(&text(s, CA_CRT), bundle_pem);
        // tls.crt is the leaf followed by the CA.
        let chain = pki::pem_certificates(text(s, TLS_CRT).as_bytes()).unwrap();
        assert_eq!(chain.len(), 2);
    }
    assert!(
        leaf(&desired, "kafka-tls")
            .data
            .as_ref()
            .unwrap()
            .contains_key(KEYSTORE_P12)
    );
    assert!(
        !leaf(&desired, "postgres-tls")
            .data
            .as_ref()
            .unwrap()
            .contains_key(KEYSTORE_P12)
    );
}

#[test]
fn rerun_on_its_own_output_keeps_every_secret_byte_identical() {
    let p = policy(POLICY);
    let first = run(&p, &World::empty(), now());
    let world = World::after(&first);
    for h in [0, 1, 24 * 30] {
        let again = run(&p, &world, later(h));
        assert!(again.issued.is_empty(), "{:?}", again.issued);
        assert_eq!(again.ca_secret, first.ca_secret);
        assert_eq!(again.leaf_secrets, first.leaf_secrets);
        assert_eq!(again.trust_bundle, first.trust_bundle);
        assert_eq!(again.certificates, first.certificates);
    }
}

#[test]
fn san_change_reissues_only_that_certificate() {
    let first = run(&policy(POLICY), &World::empty(), now());
    let world = World::after(&first);
    let edited = policy(&POLICY.replace(
        "dnsNames: [postgres.traffic.svc]",
        "dnsNames: [postgres.traffic.svc, pg.traffic.svc]",
    ));
    let second = run(&edited, &world, later(1));
    assert_eq!(
        reasons(&second),
        vec![("postgres".to_string(), ReissueReason::SansChanged)]
    );
    assert_eq!(leaf(&second, "kafka-tls"), leaf(&first, "kafka-tls"));
    assert_eq!(second.ca_secret, first.ca_secret);
    assert_ne!(
        text(leaf(&second, "postgres-tls"), TLS_KEY),
        text(leaf(&first, "postgres-tls"), TLS_KEY),
        "a re-issued certificate gets a fresh key"
    );
}

#[test]
fn openssl_verifies_every_leaf_and_reads_the_requested_sans_and_usages() {
    let desired = run(&policy(POLICY), &World::empty(), now());
    let dir = scratch("verify");
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, text(leaf(&desired, "kafka-tls"), CA_CRT)).unwrap();
    let ca_path = ca_path.to_str().unwrap();
    let check = |secret: &str| {
        let path = dir.join(format!("{secret}.crt"));
        std::fs::write(&path, text(leaf(&desired, secret), TLS_CRT)).unwrap();
        let path = path.to_str().unwrap().to_string();
        // -attime: the certificates are dated at the test's fixed clock.
        let at = (now().as_second() + 3600).to_string();
        let (ok, out) = openssl(&["verify", "-attime", &at, "-CAfile", ca_path, &path]);
        assert!(ok, "openssl verify {secret}: {out}");
        let (ok, ext) = openssl(&[
            "x509",
            "-in",
            &path,
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage,basicConstraints",
        ]);
        assert!(ok, "{ext}");
        ext
    };
    let kafka = check("kafka-tls");
    assert!(kafka.contains("DNS:kafka.traffic.svc"), "{kafka}");
    assert!(kafka.contains("DNS:*.kafka-brokers.traffic.svc"), "{kafka}");
    assert!(kafka.contains("TLS Web Server Authentication"), "{kafka}");
    assert!(kafka.contains("TLS Web Client Authentication"), "{kafka}");
    assert!(kafka.contains("CA:FALSE"), "{kafka}");
    let pg = check("postgres-tls");
    assert!(pg.contains("DNS:postgres.traffic.svc"), "{pg}");
    assert!(pg.contains("IP Address:10.0.0.7"), "{pg}");
    assert!(pg.contains("TLS Web Server Authentication"), "{pg}");
    assert!(!pg.contains("Client Authentication"), "{pg}");

    // A leaf does not verify against some other CA.
    let other = ca(KeyKind::EcdsaP256, "traffic-ca");
    let other_path = dir.join("other.crt");
    std::fs::write(&other_path, &other.chain_pem).unwrap();
    let at = (now().as_second() + 3600).to_string();
    let (ok, out) = openssl(&[
        "verify",
        "-attime",
        &at,
        "-CAfile",
        other_path.to_str().unwrap(),
        dir.join("kafka-tls.crt").to_str().unwrap(),
    ]);
    assert!(!ok, "verified against a foreign CA: {out}");
}

#[test]
fn reuse_keeps_a_fresh_matching_leaf_and_reissues_for_each_reason() {
    let authority = ca(KeyKind::EcdsaP256, "traffic-ca");
    let trusted = vec![authority.cert_der.clone()];
    let req = request(&["api.traffic.svc"], KeyKind::EcdsaP256);
    let issued = authority.issue(&req, now()).unwrap();
    let observed = leaf_data(&issued);
    let decide =
        |r: &LeafRequest, d: Option<&SecretData>, t: &[Vec<u8>], at| decide_leaf(r, d, t, at);
    use ReissueReason::*;

    assert_eq!(decide(&req, Some(&observed), &trusted, now()), Reuse::Keep);
    // Renewal time is notAfter - renewBefore = now + 1440h.
    assert_eq!(
        decide(&req, Some(&observed), &trusted, later(1439)),
        Reuse::Keep
    );
    assert_eq!(
        decide(&req, Some(&observed), &trusted, later(1440)),
        Reuse::Reissue(RenewalDue)
    );
    assert_eq!(decide(&req, None, &trusted, now()), Reuse::Reissue(Missing));

    let more_names = request(&["api.traffic.svc", "api.example.com"], KeyKind::EcdsaP256);
    let mut more_names = more_names;
    more_names.common_name = "api.traffic.svc".into();
    assert_eq!(
        decide(&more_names, Some(&observed), &trusted, now()),
        Reuse::Reissue(SansChanged)
    );
    let mut with_ip = req.clone();
    with_ip.ip_addresses.insert("10.1.2.3".parse().unwrap());
    assert_eq!(
        decide(&with_ip, Some(&observed), &trusted, now()),
        Reuse::Reissue(SansChanged)
    );
    let mut client_too = req.clone();
    client_too.usages.client = true;
    assert_eq!(
        decide(&client_too, Some(&observed), &trusted, now()),
        Reuse::Reissue(UsagesChanged)
    );
    let p384 = LeafRequest {
        key: KeyKind::EcdsaP384,
        ..req.clone()
    };
    assert_eq!(
        decide(&p384, Some(&observed), &trusted, now()),
        Reuse::Reissue(KeyAlgorithmChanged)
    );

    // The key of another certificate.
    let other_leaf = authority.issue(&req, now()).unwrap();
    let mut swapped = observed.clone();
    swapped.insert(TLS_KEY.into(), bytes(other_leaf.key_pem.expose()));
    assert_eq!(
        decide(&req, Some(&swapped), &trusted, now()),
        Reuse::Reissue(KeyMismatch)
    );

    // Same subject name, different CA key: the signature decides, not the name.
    let impostor = ca(KeyKind::EcdsaP256, "traffic-ca");
    let foreign = leaf_data(&impostor.issue(&req, now()).unwrap());
    assert_eq!(
        decide(&req, Some(&foreign), &trusted, now()),
        Reuse::Reissue(UntrustedIssuer)
    );
    // ...and it is kept once that CA is in the bundle too (a rollover's overlap).
    let both = vec![authority.cert_der.clone(), impostor.cert_der.clone()];
    assert_eq!(decide(&req, Some(&foreign), &both, now()), Reuse::Keep);

    let mut garbage = observed.clone();
    garbage.insert(TLS_CRT.into(), ByteString(b"not a certificate".to_vec()));
    assert_eq!(
        decide(&req, Some(&garbage), &trusted, now()),
        Reuse::Reissue(Unreadable)
    );
}

#[test]
fn every_key_algorithm_issues_a_chain_that_verifies() {
    for (ca_kind, leaf_kind) in [
        (KeyKind::EcdsaP256, KeyKind::EcdsaP256),
        (KeyKind::EcdsaP384, KeyKind::EcdsaP384),
        (KeyKind::Rsa2048, KeyKind::Rsa2048),
        (KeyKind::Ed25519, KeyKind::Ed25519),
        (KeyKind::Rsa2048, KeyKind::EcdsaP256),
    ] {
        let authority = ca(ca_kind, "algo-ca");
        let ca_cert = pki::parse_certificate(&authority.cert_der).unwrap();
        assert_eq!(KeyKind::of_certificate(&ca_cert), Some(ca_kind));
        assert!(pki::is_ca(&ca_cert));
        let req = request(&["algo.traffic.svc"], leaf_kind);
        let issued = authority.issue(&req, now()).unwrap();
        let observed = leaf_data(&issued);
        assert_eq!(
            decide_leaf(
                &req,
                Some(&observed),
                std::slice::from_ref(&authority.cert_der),
                now()
            ),
            Reuse::Keep,
            "{ca_kind:?} -> {leaf_kind:?}"
        );
        assert!(
            issued
                .key_pem
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
    }
}

#[test]
fn key_specs_map_to_kinds_and_bad_sizes_are_refused() {
    let spec = |algorithm, size| PrivateKeySpec { algorithm, size };
    use crate::api::KeyAlgorithm::*;
    assert_eq!(KeyKind::from_spec(None, "f").unwrap(), KeyKind::EcdsaP256);
    assert_eq!(
        KeyKind::from_spec(Some(&spec(Ecdsa, Some(384))), "f").unwrap(),
        KeyKind::EcdsaP384
    );
    assert_eq!(
        KeyKind::from_spec(Some(&spec(Rsa, None)), "f").unwrap(),
        KeyKind::Rsa2048
    );
    assert_eq!(
        KeyKind::from_spec(Some(&spec(Rsa, Some(4096))), "f").unwrap(),
        KeyKind::Rsa4096
    );
    assert_eq!(
        KeyKind::from_spec(Some(&spec(Ed25519, None)), "f").unwrap(),
        KeyKind::Ed25519
    );
    let err = KeyKind::from_spec(
        Some(&spec(Ecdsa, Some(521))),
        "spec.tls.defaults.privateKey",
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("spec.tls.defaults.privateKey"),
        "{err}"
    );
    assert_eq!(err.reason(), "InvalidSpec");
}

#[test]
fn defaults_fill_in_duration_renewal_and_key() {
    let p = policy(POLICY);
    let tls = p.spec.tls.as_ref().unwrap();
    let req = leaf_request(tls, &tls.certificates[0], 0).unwrap();
    assert_eq!(req.duration, hours(2160));
    assert_eq!(req.renew_before, hours(720));
    assert_eq!(req.key, KeyKind::EcdsaP256);
    assert_eq!(req.common_name, "kafka.traffic.svc");
    assert!(req.pkcs12);
    assert_eq!(
        req.usages,
        Usages {
            server: true,
            client: true
        }
    );

    let mut tls = tls.clone();
    tls.defaults = Some(CertificateDefaults {
        duration: Some("100h".into()),
        renew_before: Some("10h".into()),
        private_key: Some(PrivateKeySpec {
            algorithm: crate::api::KeyAlgorithm::Ed25519,
            size: None,
        }),
    });
    let req = leaf_request(&tls, &tls.certificates[1], 1).unwrap();
    assert_eq!((req.duration, req.renew_before), (hours(100), hours(10)));
    assert_eq!(req.key, KeyKind::Ed25519);
    assert_eq!(
        req.usages,
        Usages {
            server: true,
            client: false
        }
    );

    let ca = ca_request("traffic", tls.ca.as_ref()).unwrap();
    assert_eq!(ca.duration, hours(43800));
    assert_eq!(ca.renew_before, hours(8760));
    assert_eq!(ca.common_name, "traffic-ca");

    tls.certificates[1].renew_before = Some("200h".into());
    let err = leaf_request(&tls, &tls.certificates[1], 1).unwrap_err();
    assert!(
        err.to_string()
            .contains("spec.tls.certificates[1].renewBefore"),
        "{err}"
    );
}

#[test]
fn inventory_reports_rfc3339_times_and_requeues_at_the_earliest_renewal() {
    let desired = run(&policy(POLICY), &World::empty(), now());
    let kafka = &desired.certificates[0];
    assert_eq!(kafka.name, "kafka");
    assert_eq!(kafka.secret_name, "kafka-tls");
    assert_eq!(kafka.not_after, "2027-03-01T00:00:00Z");
    assert_eq!(kafka.renewal_time.as_deref(), Some("2027-01-30T00:00:00Z"));
    assert!(!kafka.serial.is_empty());
    assert_eq!(desired.ca.secret_name, "traffic-ca");
    assert_eq!(
        desired.ca.renewal_time.as_deref(),
        Some("2030-11-30T00:00:00Z")
    );
    assert_eq!(desired.next_renewal, Some(later(1440)));
    let json = serde_json::to_value(kafka).unwrap();
    assert!(json.get("renewalTime").is_some() && json.get("notAfter").is_some());
}

#[test]
fn renewal_time_reissues_the_leaf_and_ca_renewal_starts_a_rollover() {
    let p = policy(POLICY);
    let first = run(&p, &World::empty(), now());
    let world = World::after(&first);
    let renewed = run(&p, &world, later(1440));
    assert_eq!(
        reasons(&renewed),
        vec![
            ("kafka".to_string(), ReissueReason::RenewalDue),
            ("postgres".to_string(), ReissueReason::RenewalDue),
        ]
    );
    // The keystore password survives re-issuance.
    assert_eq!(
        text(leaf(&renewed, "kafka-tls"), KEYSTORE_PASSWORD),
        text(leaf(&first, "kafka-tls"), KEYSTORE_PASSWORD)
    );
    let world = World::after(&renewed);
    let ca_renewed = run(&p, &world, later(43800 - 8760));
    assert_eq!(ca_renewed.phase, RolloverPhase::NewCaTrusted);
    let got = reasons(&ca_renewed);
    assert_eq!(got[0], ("ca".to_string(), ReissueReason::RenewalDue));
    // The leaves expired long ago: renewed, but still under the old CA, which signs until the
    // new one has propagated.
    assert!(
        got[1..]
            .iter()
            .all(|(_, r)| *r == ReissueReason::RenewalDue),
        "{got:?}"
    );
    assert_eq!(got.len(), 3);
    let old_ca = data(first.ca_secret.as_ref().unwrap());
    let old_der = &pki::pem_certificates(&old_ca[TLS_CRT].0).unwrap()[0];
    for s in &ca_renewed.leaf_secrets {
        assert!(leaf_signed_by(s.data.as_ref(), old_der));
    }
}

#[test]
fn decide_ca_keeps_a_valid_ca_and_refuses_a_leaf_in_its_place() {
    let authority = ca(KeyKind::EcdsaP256, "traffic-ca");
    let data = BTreeMap::from([
        (TLS_CRT.to_string(), bytes(&authority.chain_pem)),
        (TLS_KEY.to_string(), bytes(authority.key_pem.expose())),
    ]);
    assert_eq!(decide_ca(Some(&data), hours(8760), now()), Reuse::Keep);
    assert_eq!(
        decide_ca(Some(&data), hours(8760), later(43800 - 8760)),
        Reuse::Reissue(ReissueReason::RenewalDue)
    );
    let not_ca = leaf_data(
        &authority
            .issue(&request(&["x.svc"], KeyKind::EcdsaP256), now())
            .unwrap(),
    );
    assert_eq!(
        decide_ca(Some(&not_ca), hours(8760), now()),
        Reuse::Reissue(ReissueReason::NotCa)
    );
}

#[test]
fn existing_ca_signs_leaves_and_is_never_written() {
    let own = ca(KeyKind::EcdsaP384, "corp-root");
    let own_data = BTreeMap::from([
        (TLS_CRT.to_string(), bytes(&own.chain_pem)),
        (TLS_KEY.to_string(), bytes(own.key_pem.expose())),
    ]);
    let yaml = POLICY.replace(
        "ca: {secretName: traffic-ca, commonName: traffic-ca}",
        "ca: {existingSecret: corp-ca}",
    );
    let p = policy(&yaml);
    let world = World {
        ca: Some(own_data.clone()),
        ..World::empty()
    };
    let desired = run(&p, &world, now());
    assert!(desired.ca_secret.is_none());
    assert_eq!(desired.ca.secret_name, "corp-ca");
    assert_eq!(desired.ca.renewal_time, None);
    assert_eq!(
        desired.trust_bundle.data.as_ref().unwrap()[CA_CRT],
        own.chain_pem
    );
    for s in &desired.leaf_secrets {
        let chain = pki::pem_certificates(text(s, TLS_CRT).as_bytes()).unwrap();
        let cert = pki::parse_certificate(&chain[0]).unwrap();
        assert!(pki::signed_by(&cert, &own.cert_der));
    }
    // next_renewal ignores a CA Bulwark cannot renew.
    assert_eq!(desired.next_renewal, Some(later(1440)));

    let missing = desired_tls(&p, &ObservedTls::default(), now()).unwrap_err();
    assert_eq!(missing.reason(), "CASecretMissing");
    assert!(missing.to_string().contains("corp-ca"), "{missing}");

    let mut no_key = own_data.clone();
    no_key.remove(TLS_KEY);
    let obs = ObservedTls {
        ca: Some(&no_key),
        ..ObservedTls::default()
    };
    let err = desired_tls(&p, &obs, now()).unwrap_err();
    assert_eq!(err.reason(), "CASecretInvalid");
    assert!(err.to_string().contains("tls.key"), "{err}");

    let leaf = own
        .issue(&request(&["x.svc"], KeyKind::EcdsaP256), now())
        .unwrap();
    let not_ca = leaf_data(&leaf);
    let obs = ObservedTls {
        ca: Some(&not_ca),
        ..ObservedTls::default()
    };
    let err = desired_tls(&p, &obs, now()).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    let body = leaf.key_pem.expose().lines().nth(1).unwrap().to_string();
    assert!(!format!("{err} {err:?}").contains(&body));

    let err = desired_tls(&p, &world.observed(), later(43801)).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

#[test]
fn keys_and_passwords_never_appear_in_debug_output() {
    let desired = run(&policy(POLICY), &World::empty(), now());
    let debug = format!("{desired:?} {desired:#?}");
    let mut secrets: Vec<String> = desired
        .leaf_secrets
        .iter()
        .chain(desired.ca_secret.iter())
        .map(|s| text(s, TLS_KEY).lines().nth(1).unwrap().to_string())
        .collect();
    secrets.push(text(leaf(&desired, "kafka-tls"), KEYSTORE_PASSWORD));
    for secret in &secrets {
        assert!(!debug.contains(secret.as_str()), "leaked in {debug}");
    }
    assert!(debug.contains("kafka-tls"));

    let authority = ca(KeyKind::EcdsaP256, "traffic-ca");
    let issued = authority
        .issue(&request(&["api.traffic.svc"], KeyKind::EcdsaP256), now())
        .unwrap();
    for (debug, pem) in [
        (format!("{authority:?}"), authority.key_pem.expose().clone()),
        (format!("{issued:?}"), issued.key_pem.expose().clone()),
    ] {
        assert!(!debug.contains(pem.lines().nth(1).unwrap()), "{debug}");
        assert!(debug.contains("<redacted>"));
    }
}

#[test]
fn pkcs12_keystore_and_truststore_read_back_with_the_secret_password() {
    let desired = run(&policy(POLICY), &World::empty(), now());
    let kafka = leaf(&desired, "kafka-tls");
    let d = kafka.data.as_ref().unwrap();
    let password = text(kafka, KEYSTORE_PASSWORD);
    assert_eq!(password.len(), 32);
    assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));

    let ks =
        KeyStore::from_pkcs12(&d[KEYSTORE_P12].0, &password, Pkcs12ImportPolicy::Strict).unwrap();
    let (alias, chain) = ks.private_key_chain().unwrap();
    assert_eq!(alias, "kafka");
    assert_eq!(chain.certs().len(), 2, "leaf and CA");
    let tls_chain = pki::pem_certificates(&d[TLS_CRT].0).unwrap();
    assert_eq!(chain.certs()[0].as_der(), tls_chain[0].as_slice());
    let key_der = pki::parse_key(&d[TLS_KEY].0)
        .unwrap()
        .expose()
        .serialize_der();
    assert_eq!(chain.key().as_der(), key_der.as_slice());
    assert!(
        KeyStore::from_pkcs12(&d[KEYSTORE_P12].0, "wrong", Pkcs12ImportPolicy::Strict).is_err()
    );

    let ts =
        KeyStore::from_pkcs12(&d[TRUSTSTORE_P12].0, &password, Pkcs12ImportPolicy::Strict).unwrap();
    let trusted: Vec<_> = ts
        .entries()
        .filter_map(|(_, e)| match e {
            KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
            _ => None,
        })
        .collect();
    let bundle = pki::pem_certificates(&d[CA_CRT].0).unwrap();
    assert_eq!(trusted, bundle);

    if Command::new("keytool").arg("-help").output().is_err() {
        return;
    }
    let dir = scratch("p12");
    for (file, expect) in [
        (KEYSTORE_P12, "PrivateKeyEntry"),
        (TRUSTSTORE_P12, "trustedCertEntry"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, &d[file].0).unwrap();
        let out = Command::new("keytool")
            .args(["-list", "-storetype", "PKCS12", "-keystore"])
            .arg(&path)
            .args(["-storepass", &password])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "keytool {file}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(expect), "keytool {file}: {stdout}");
    }
}

#[test]
fn no_tls_section_produces_nothing() {
    let p = policy("tiers: {data: {podSelector: {}}}");
    assert!(
        desired_tls(&p, &ObservedTls::default(), now())
            .unwrap()
            .is_none()
    );
}

/// A real TLS peer: `openssl s_server` serves a leaf Secret, `openssl s_client` trusts only ca.crt.
#[test]
fn openssl_client_trusting_the_bundle_completes_a_handshake_with_hostname_verification() {
    // Real clock: s_server and s_client check validity against it.
    let desired = run(&policy(POLICY), &World::empty(), Timestamp::now());
    let kafka = leaf(&desired, "kafka-tls");
    let dir = scratch("handshake");
    let write = |file: &str, key: &str| {
        let path = dir.join(file);
        std::fs::write(&path, text(kafka, key)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (crt, key, ca_file) = (
        write("tls.crt", TLS_CRT),
        write("tls.key", TLS_KEY),
        write("ca.crt", CA_CRT),
    );
    let other = ca(KeyKind::EcdsaP256, "traffic-ca");
    let other_file = dir.join("other.crt");
    std::fs::write(&other_file, &other.chain_pem).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(port.to_string())
        .args(["-cert", &crt, "-key", &key, "-cert_chain", &crt])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let connect = format!("127.0.0.1:{port}");
    let client = |ca: &str, host: &str| {
        let mut last = String::new();
        for _ in 0..50 {
            let out = Command::new("openssl")
                .args(["s_client", "-connect", &connect, "-verify_return_error"])
                .args(["-CAfile", ca, "-verify_hostname", host, "-servername", host])
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !last.contains("Connection refused") {
                return (
                    out.status.success() && last.contains("Verify return code: 0 (ok)"),
                    last,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (false, last)
    };
    let trusted = client(&ca_file, "kafka.traffic.svc");
    let wildcard = client(&ca_file, "broker-0.kafka-brokers.traffic.svc");
    let wrong_host = client(&ca_file, "postgres.traffic.svc");
    let foreign = client(other_file.to_str().unwrap(), "kafka.traffic.svc");
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(trusted.0, "handshake failed: {}", trusted.1);
    assert!(wildcard.0, "wildcard SAN rejected: {}", wildcard.1);
    assert!(!wrong_host.0, "hostname not verified: {}", wrong_host.1);
    assert!(!foreign.0, "a foreign CA was accepted: {}", foreign.1);
}

#[test]
fn rotation_request_reissues_every_leaf_once_and_keeps_the_ca() {
    let p = policy(POLICY);
    let first = run(&p, &World::empty(), now());
    let world = World::after(&first);
    let mut observed = world.observed();
    observed.rotate_leaves = true;
    let rotated = desired_tls(&p, &observed, later(1)).unwrap().unwrap();
    assert_eq!(
        reasons(&rotated),
        vec![
            ("kafka".to_string(), ReissueReason::RotationRequested),
            ("postgres".to_string(), ReissueReason::RotationRequested),
        ]
    );
    assert_eq!(rotated.ca_secret, first.ca_secret);
    for name in ["kafka-tls", "postgres-tls"] {
        assert_ne!(
            text(leaf(&rotated, name), TLS_KEY),
            text(leaf(&first, name), TLS_KEY)
        );
    }
    // The keystore password survives; the keystore itself holds the new key.
    assert_eq!(
        text(leaf(&rotated, "kafka-tls"), KEYSTORE_PASSWORD),
        text(leaf(&first, "kafka-tls"), KEYSTORE_PASSWORD)
    );
    assert_ne!(
        leaf(&rotated, "kafka-tls").data.as_ref().unwrap()[KEYSTORE_P12],
        leaf(&first, "kafka-tls").data.as_ref().unwrap()[KEYSTORE_P12]
    );
    // Once handled, the next run keeps the rotated leaves.
    let settled = run(&p, &World::after(&rotated), later(2));
    assert!(settled.issued.is_empty(), "{:?}", settled.issued);
    assert_eq!(settled.leaf_secrets, rotated.leaf_secrets);
}

const ROLLOVER_POLICY: &str = r#"
tiers:
  data: {podSelector: {matchLabels: {tier: data}}}
tls:
  ca: {secretName: traffic-ca, commonName: traffic-ca, duration: 4000h, renewBefore: 1000h}
  certificates:
    - {name: kafka, secretName: kafka-tls, dnsNames: [kafka.traffic.svc], usages: [server, client], formats: [PKCS12]}
    - {name: postgres, secretName: postgres-tls, dnsNames: [postgres.traffic.svc]}
"#;

fn minutes(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

fn settings() -> RolloverSettings {
    RolloverSettings {
        overlap: hours(24),
        propagation: minutes(10),
    }
}

fn observed_with<'a>(world: &'a World, rotate_ca: bool) -> ObservedTls<'a> {
    ObservedTls {
        rotate_ca,
        rollover: settings(),
        ..world.observed()
    }
}

fn step(p: &SecurityPolicy, world: &World, at: Timestamp, rotate_ca: bool) -> DesiredTls {
    desired_tls(p, &observed_with(world, rotate_ca), at)
        .unwrap()
        .unwrap()
}

fn bundle_of(desired: &DesiredTls) -> String {
    desired.trust_bundle.data.as_ref().unwrap()[CA_CRT].clone()
}

fn bundle_ders(desired: &DesiredTls) -> Vec<Vec<u8>> {
    pki::pem_certificates(bundle_of(desired).as_bytes()).unwrap()
}

/// The DER of the CA certificate that signs in `desired` (tls.crt of the CA Secret).
fn signing_der(desired: &DesiredTls) -> Vec<u8> {
    let ca = data(desired.ca_secret.as_ref().unwrap());
    pki::pem_certificates(&ca[TLS_CRT].0).unwrap().remove(0)
}

/// Every leaf's served certificate verifies against `bundle_pem`, by signature and by openssl.
fn assert_leaves_trusted(desired: &DesiredTls, bundle_pem: &str, at: Timestamp, label: &str) {
    let bundle = pki::pem_certificates(bundle_pem.as_bytes()).unwrap();
    let dir = scratch("rollover");
    let ca_path = dir.join("bundle.crt");
    std::fs::write(&ca_path, bundle_pem).unwrap();
    for s in &desired.leaf_secrets {
        let chain = pki::pem_certificates(text(s, TLS_CRT).as_bytes()).unwrap();
        let cert = pki::parse_certificate(&chain[0]).unwrap();
        assert!(
            bundle.iter().any(|ca| pki::signed_by(&cert, ca)),
            "{label}: {} is not signed by any CA of the bundle",
            s.name_any()
        );
        let path = dir.join(format!("{}.crt", s.name_any()));
        std::fs::write(&path, text(s, TLS_CRT)).unwrap();
        let when = (at.as_second() + 60).to_string();
        let (ok, out) = openssl(&[
            "verify",
            "-attime",
            &when,
            "-CAfile",
            ca_path.to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        assert!(ok, "{label}: openssl verify {}: {out}", s.name_any());
    }
}

/// Drives the reconcile loop through a whole rollover, feeding each output back as what exists,
/// and checks at every step that clients reading this step's bundle, or the previous step's,
/// trust every served certificate.
#[test]
fn ca_rollover_never_breaks_trust_for_clients_one_step_behind() {
    let p = policy(ROLLOVER_POLICY);
    let renewal = later(3000);
    let first = step(&p, &World::empty(), now(), false);
    let old_ca = signing_der(&first);
    // Leaves renew at 1440h and 2880h; the CA renews at 3000h.
    let mut at = vec![now(), later(1), later(1440), later(2880), later(2999)];
    let rollover_start = renewal;
    at.extend([
        rollover_start,                                     // -> NewCaTrusted
        pki::plus(rollover_start, minutes(5)),              // waiting for propagation
        pki::plus(rollover_start, minutes(10)),             // -> LeavesReissued
        pki::plus(rollover_start, hours(1)),                // overlap running
        pki::plus(rollover_start, minutes(10) + hours(23)), // still running
        pki::plus(rollover_start, minutes(10) + hours(24)), // -> Stable
        pki::plus(rollover_start, hours(30)),
    ]);
    let mut previous = first;
    let mut phases = vec![previous.phase];
    let mut moved_at = None;
    for (i, t) in at.iter().copied().enumerate().skip(1) {
        let world = World::after(&previous);
        let desired = step(&p, &world, t, false);
        let label = format!("step {i} at {t} ({})", desired.phase.as_str());
        let bundle = bundle_of(&desired);
        assert_leaves_trusted(&desired, &bundle, t, &label);
        assert_leaves_trusted(
            &desired,
            &bundle_of(&previous),
            t,
            &format!("{label}, lagging"),
        );
        // Every copy of the bundle says the same thing.
        assert_eq!(text(desired.ca_secret.as_ref().unwrap(), CA_CRT), bundle);
        for s in &desired.leaf_secrets {
            assert_eq!(text(s, CA_CRT), bundle, "{label}");
        }
        let kafka = leaf(&desired, "kafka-tls");
        let ts = KeyStore::from_pkcs12(
            &kafka.data.as_ref().unwrap()[TRUSTSTORE_P12].0,
            &text(kafka, KEYSTORE_PASSWORD),
            Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        let mut trusted: Vec<_> = ts
            .entries()
            .filter_map(|(_, e)| match e {
                KeyStoreEntry::Certificate(c) => Some(c.as_der().to_vec()),
                _ => None,
            })
            .collect();
        let mut expected = bundle_ders(&desired);
        trusted.sort();
        expected.sort();
        assert_eq!(trusted, expected, "{label}: truststore.p12 is the bundle");

        // The old CA stays until every leaf moved and the overlap passed.
        let still_trusted = bundle_ders(&desired).contains(&old_ca);
        let all_moved = desired
            .leaf_secrets
            .iter()
            .all(|s| !leaf_signed_by(s.data.as_ref(), &old_ca));
        if all_moved && moved_at.is_none() {
            moved_at = Some(t);
        }
        if !still_trusted {
            let moved = moved_at.expect("old CA dropped before every leaf moved");
            assert!(
                t >= pki::plus(moved, hours(24)),
                "{label}: overlap cut short"
            );
        }
        // At most one phase per step.
        let order = |ph: RolloverPhase| match ph {
            RolloverPhase::Stable => 0,
            RolloverPhase::NewCaTrusted => 1,
            RolloverPhase::LeavesReissued => 2,
        };
        let (a, b) = (order(previous.phase), order(desired.phase));
        assert!(
            b == a || b == (a + 1) % 3,
            "{label}: jumped from {a} to {b}"
        );
        // A restart here (same Secrets, same clock) changes nothing when nothing is due.
        if desired.issued.is_empty() || desired.phase != previous.phase {
            let again = step(&p, &World::after(&desired), t, false);
            if again.phase == desired.phase {
                assert!(again.issued.is_empty(), "{label}: {:?}", again.issued);
                assert_eq!(again.ca_secret, desired.ca_secret, "{label}");
                assert_eq!(again.leaf_secrets, desired.leaf_secrets, "{label}");
                assert_eq!(again.trust_bundle, desired.trust_bundle, "{label}");
            }
        }
        phases.push(desired.phase);
        previous = desired;
    }
    use RolloverPhase::*;
    assert_eq!(
        phases,
        vec![
            Stable,
            Stable,
            Stable,
            Stable,
            Stable,
            NewCaTrusted,
            NewCaTrusted,
            LeavesReissued,
            LeavesReissued,
            LeavesReissued,
            Stable,
            Stable,
        ]
    );
    let new_ca = signing_der(&previous);
    assert_ne!(new_ca, old_ca);
    assert_eq!(bundle_ders(&previous), vec![new_ca]);
    assert_eq!(moved_at, Some(pki::plus(rollover_start, minutes(10))));
    assert!(
        !previous
            .ca_secret
            .as_ref()
            .unwrap()
            .data
            .as_ref()
            .unwrap()
            .keys()
            .any(|k| k == PREVIOUS_CRT || k == NEXT_CRT || k == NEXT_KEY)
    );
}

#[test]
fn each_rollover_phase_stores_its_state_in_the_ca_secret_and_requeues_at_its_end() {
    let p = policy(ROLLOVER_POLICY);
    let first = step(&p, &World::empty(), now(), false);
    let annotations = |d: &DesiredTls| d.ca_secret.as_ref().unwrap().annotations().clone();
    assert_eq!(first.phase.as_str(), "Stable");
    assert_eq!(annotations(&first)[ANNOTATION_ROLLOVER_PHASE], "Stable");
    assert!(!annotations(&first).contains_key(ANNOTATION_ROLLOVER_SINCE));
    assert_eq!(first.next_renewal, Some(later(1440)));

    let t0 = later(2);
    let trusted = step(&p, &World::after(&first), t0, true);
    assert_eq!(trusted.phase, RolloverPhase::NewCaTrusted);
    let ca = data(trusted.ca_secret.as_ref().unwrap());
    assert_eq!(
        ca[TLS_CRT],
        data(first.ca_secret.as_ref().unwrap())[TLS_CRT]
    );
    assert!(ca.contains_key(NEXT_CRT) && ca.contains_key(NEXT_KEY));
    assert!(!ca.contains_key(PREVIOUS_CRT));
    assert_eq!(
        annotations(&trusted)[ANNOTATION_ROLLOVER_PHASE],
        "NewCATrusted"
    );
    assert_eq!(
        annotations(&trusted)[ANNOTATION_ROLLOVER_SINCE],
        t0.to_string()
    );
    assert_eq!(trusted.next_renewal, Some(pki::plus(t0, minutes(10))));

    let t1 = pki::plus(t0, minutes(10));
    let moved = step(&p, &World::after(&trusted), t1, false);
    assert_eq!(moved.phase, RolloverPhase::LeavesReissued);
    let ca = data(moved.ca_secret.as_ref().unwrap());
    assert_eq!(
        ca[TLS_CRT],
        data(trusted.ca_secret.as_ref().unwrap())[NEXT_CRT]
    );
    assert_eq!(
        ca[TLS_KEY],
        data(trusted.ca_secret.as_ref().unwrap())[NEXT_KEY]
    );
    assert_eq!(
        ca[PREVIOUS_CRT],
        data(first.ca_secret.as_ref().unwrap())[TLS_CRT]
    );
    assert!(
        !ca.contains_key(NEXT_KEY),
        "the old key is gone once it signs nothing"
    );
    assert_eq!(
        reasons(&moved),
        vec![
            ("kafka".to_string(), ReissueReason::CaRollover),
            ("postgres".to_string(), ReissueReason::CaRollover),
        ]
    );
    // The bundle's bytes did not change when the new CA started signing: no pointless reload.
    assert_eq!(bundle_of(&moved), bundle_of(&trusted));
    assert_eq!(moved.next_renewal, Some(pki::plus(t1, hours(24))));

    // A restart with the annotations lost never shortens the overlap.
    let mut forgetful = World::after(&moved);
    forgetful.ca_annotations = None;
    let t2 = pki::plus(t1, hours(25));
    let restarted = step(&p, &forgetful, t2, false);
    assert_eq!(restarted.phase, RolloverPhase::LeavesReissued);
    assert_eq!(restarted.next_renewal, Some(pki::plus(t2, hours(24))));

    // With no propagation delay the next phase is due at once: requeue now.
    let immediate = desired_tls(
        &p,
        &ObservedTls {
            rotate_ca: true,
            rollover: RolloverSettings {
                overlap: hours(1),
                propagation: Duration::ZERO,
            },
            ..World::after(&first).observed()
        },
        t0,
    )
    .unwrap()
    .unwrap();
    assert_eq!(immediate.phase, RolloverPhase::NewCaTrusted);
    assert_eq!(immediate.next_renewal, Some(t0));
}

#[test]
fn rotate_ca_starts_a_rollover_before_renewal_and_nothing_rotates_without_a_trigger() {
    let p = policy(ROLLOVER_POLICY);
    let first = step(&p, &World::empty(), now(), false);
    let world = World::after(&first);
    // No trigger: nothing moves, however often it runs before the CA's renewal time.
    for h in [1, 100, 1439] {
        let quiet = step(&p, &world, later(h), false);
        assert_eq!(quiet.phase, RolloverPhase::Stable);
        assert!(quiet.issued.is_empty(), "{:?}", quiet.issued);
        assert_eq!(quiet.ca_secret, first.ca_secret);
        assert_eq!(quiet.leaf_secrets, first.leaf_secrets);
        assert!(!quiet.rotate_ca_handled);
    }
    // Just before the CA's renewal time the leaves renew, the CA does not.
    let late = step(&p, &world, later(2999), false);
    assert_eq!(late.phase, RolloverPhase::Stable);
    assert_eq!(late.ca_secret, first.ca_secret);
    assert!(late.issued.iter().all(|i| i.name != CA_INVENTORY_NAME));
    assert_eq!(late.next_renewal, Some(later(3000)));

    let rotated = step(&p, &world, later(1), true);
    assert_eq!(rotated.phase, RolloverPhase::NewCaTrusted);
    assert!(rotated.rotate_ca_handled);
    assert_eq!(
        reasons(&rotated),
        vec![("ca".to_string(), ReissueReason::RotationRequested)]
    );
    // Leaves untouched, new CA trusted beside the old one.
    for s in &rotated.leaf_secrets {
        let before = leaf(&first, &s.name_any());
        assert_eq!(text(s, TLS_CRT), text(before, TLS_CRT));
        assert_eq!(text(s, TLS_KEY), text(before, TLS_KEY));
    }
    assert_eq!(bundle_ders(&rotated).len(), 2);

    // A second request while the rollover runs waits for it to end instead of piling up.
    let world = World::after(&rotated);
    let again = step(&p, &world, later(1), true);
    assert!(!again.rotate_ca_handled);
    assert!(again.issued.is_empty(), "{:?}", again.issued);
    assert_eq!(again.ca_secret, rotated.ca_secret);

    // A CA you bring is never rotated; the request is answered by doing nothing.
    let own = ca(KeyKind::EcdsaP256, "corp-root");
    let own_data = BTreeMap::from([
        (TLS_CRT.to_string(), bytes(&own.chain_pem)),
        (TLS_KEY.to_string(), bytes(own.key_pem.expose())),
    ]);
    let byo = policy(&ROLLOVER_POLICY.replace(
        "ca: {secretName: traffic-ca, commonName: traffic-ca, duration: 4000h, renewBefore: 1000h}",
        "ca: {existingSecret: corp-ca}",
    ));
    let byo_world = World {
        ca: Some(own_data),
        ..World::empty()
    };
    let desired = step(&byo, &byo_world, later(1), true);
    assert!(desired.ca_secret.is_none());
    assert_eq!(desired.phase, RolloverPhase::Stable);
    assert!(desired.rotate_ca_handled);
    assert_eq!(bundle_of(&desired), own.chain_pem);
}
