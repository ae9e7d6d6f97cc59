use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::*;
use crate::api::SecurityPolicySpec;
use crate::kube_io::{LABEL_FACET, LABEL_POLICY};

fn policy(jwt: &str) -> SecurityPolicy {
    let yaml = format!(
        "tiers:\n  backend: {{podSelector: {{matchLabels: {{tier: backend}}}}}}\njwt:\n{jwt}"
    );
    crate::facets::test_policy(&yaml)
}

const API_MONTHLY: &str =
    "  - {name: api, secretName: api-jwt, algorithm: ES256, rotateEvery: 720h}\n";

fn t0() -> Timestamp {
    "2026-12-01T00:00:00Z".parse().unwrap()
}

fn at_hours(h: i64) -> Timestamp {
    t0().checked_add(SignedDuration::from_hours(h)).unwrap()
}

fn run(p: &SecurityPolicy, observed: &ObservedJwt, now: Timestamp) -> Vec<DesiredJwtKey> {
    desired_jwt(p, observed, now).unwrap()
}

/// What the reconciler reads back after applying `out`.
fn world(out: &[DesiredJwtKey]) -> ObservedJwt {
    ObservedJwt {
        keys: out
            .iter()
            .map(|k| {
                let observed = ObservedJwtKey {
                    secret: Some(Sensitive::new(k.secret.data.clone().unwrap())),
                    jwks: k.jwks.data.clone(),
                    rotate: false,
                };
                (k.name.clone(), observed)
            })
            .collect(),
    }
}

fn requesting_rotation(mut observed: ObservedJwt, name: &str) -> ObservedJwt {
    observed.keys.get_mut(name).unwrap().rotate = true;
    observed
}

fn secret_text(k: &DesiredJwtKey, key: &str) -> String {
    String::from_utf8(k.secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn jwks_json(k: &DesiredJwtKey) -> String {
    k.jwks.data.as_ref().unwrap()[JWKS_JSON].clone()
}

fn jose_alg(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::RS256 => Algorithm::RS256,
    }
}

/// A token the API would issue: signed with private.pem, kid from the Secret.
fn sign(k: &DesiredJwtKey, subject: &str) -> String {
    let pem = secret_text(k, PRIVATE_PEM);
    let key = match k.algorithm {
        JwtAlgorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        JwtAlgorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        JwtAlgorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(jose_alg(k.algorithm));
    header.kid = Some(secret_text(k, KID));
    let claims = serde_json::json!({"sub": subject, "exp": 4_102_444_800u64});
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// What a relying party does with only jwks.json: pick the key by kid, verify.
fn verify(token: &str, jwks: &str) -> Result<String, String> {
    let set: JwkSet = serde_json::from_str(jwks).map_err(|e| e.to_string())?;
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = set.find(&kid).ok_or("unknown kid")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &Validation::new(header.alg))
        .map_err(|e| e.to_string())?;
    Ok(data.claims["sub"].as_str().unwrap().to_string())
}

fn published_kids(k: &DesiredJwtKey) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&jwks_json(k)).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn rfc7638_example_thumbprint() {
    let jwk = Jwk {
        kty: "RSA".into(),
        crv: None,
        x: None,
        y: None,
        n: Some(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
                .into(),
        ),
        e: Some("AQAB".into()),
        kid: "2011-04-29".into(),
        alg: "RS256".into(),
        use_: "sig".into(),
    };
    assert_eq!(
        jwk.thumbprint().as_deref(),
        Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
    );
    // Members outside the canonical set cannot smuggle JSON into the digest input.
    let mut forged = jwk.clone();
    forged.e = Some(r#"AQAB","kty":"EC"#.into());
    assert_eq!(forged.thumbprint(), None);
}

#[test]
fn every_algorithm_signs_tokens_the_published_jwks_verifies() {
    for (algorithm, kty, crv) in [
        ("ES256", "EC", Some("P-256")),
        ("EdDSA", "OKP", Some("Ed25519")),
        ("RS256", "RSA", None),
    ] {
        let p = policy(&format!(
            "  - {{name: api, secretName: api-jwt, algorithm: {algorithm}}}\n"
        ));
        let out = run(&p, &ObservedJwt::default(), t0());
        assert_eq!(out.len(), 1);
        let k = &out[0];
        assert_eq!(k.change, Some(KeyChange::Created));
        assert!(secret_text(k, PRIVATE_PEM).starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(secret_text(k, PUBLIC_PEM).starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(secret_text(k, KID), k.kid);
        assert_eq!(secret_text(k, ROTATED_AT), "2026-12-01T00:00:00Z");

        let set: serde_json::Value = serde_json::from_str(&jwks_json(k)).unwrap();
        let keys = set["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{algorithm}");
        let jwk = &keys[0];
        assert_eq!(jwk["kty"], kty);
        assert_eq!(jwk["crv"].as_str(), crv);
        assert_eq!(jwk["alg"], algorithm);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], k.kid.as_str());
        assert!(
            jwk.get("d").is_none(),
            "{algorithm}: private member published"
        );
        if kty == "RSA" {
            assert_eq!(jwk["e"], "AQAB");
            let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
            assert_eq!(n.len() * 8, 2048, "RSA modulus without a sign byte");
        }
        let ours: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        assert_eq!(ours.thumbprint().as_deref(), Some(k.kid.as_str()));

        let token = sign(k, "alice");
        assert_eq!(verify(&token, &jwks_json(k)), Ok("alice".to_string()));
        let mut tampered = token.clone();
        tampered.insert_str(token.find('.').unwrap() + 1, "eyJ4IjoxfQ");
        assert!(verify(&tampered, &jwks_json(k)).is_err(), "{algorithm}");
    }
}

#[test]
fn objects_carry_names_labels_and_owner() {
    let p = policy(API_MONTHLY);
    let k = &run(&p, &ObservedJwt::default(), t0())[0];
    assert_eq!(k.secret.name_any(), "api-jwt");
    assert_eq!(k.jwks.name_any(), "api-jwks");
    for meta in [&k.secret.metadata, &k.jwks.metadata] {
        assert_eq!(meta.namespace.as_deref(), Some("traffic"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_FACET], "jwt");
        assert_eq!(labels[LABEL_POLICY], "traffic");
        assert_eq!(
            meta.owner_references.as_ref().unwrap()[0].uid,
            "0b6f3c52-policy-uid"
        );
    }
    assert_eq!(k.next_rotation, Some(at_hours(720)));
    assert_eq!(k.next_event, Some(at_hours(720)));
}

#[test]
fn no_jwt_section_produces_nothing() {
    let spec: SecurityPolicySpec =
        serde_yaml::from_str("tiers: {backend: {podSelector: {}}}").unwrap();
    let p = SecurityPolicy::new("traffic", spec);
    assert!(run(&p, &ObservedJwt::default(), t0()).is_empty());
}

#[test]
fn restarts_and_resyncs_change_nothing_until_the_next_event() {
    let p = policy(API_MONTHLY);
    let first = run(&p, &ObservedJwt::default(), t0());
    let seen = world(&first);
    let again = run(&p, &seen, t0());
    let later = run(&p, &seen, at_hours(719));
    for k in [&again[0], &later[0]] {
        assert_eq!(k.secret, first[0].secret);
        assert_eq!(k.jwks, first[0].jwks);
        assert_eq!(k.change, None);
        assert_eq!(k.next_event, Some(at_hours(720)));
    }
    // Twice from the same observed state and time: byte-identical, also mid-grace.
    let rotated = run(&p, &seen, at_hours(720));
    let seen = world(&rotated);
    let a = run(&p, &seen, at_hours(800));
    let b = run(&p, &seen, at_hours(800));
    assert_eq!(a[0].secret, b[0].secret);
    assert_eq!(a[0].jwks, b[0].jwks);
    assert_eq!(a[0].secret, rotated[0].secret);
    assert_eq!(a[0].jwks, rotated[0].jwks);

    // Without rotateEvery nothing is scheduled, however long it runs.
    let p = policy("  - {name: api, secretName: api-jwt}\n");
    let first = run(&p, &ObservedJwt::default(), t0());
    assert_eq!(first[0].algorithm, JwtAlgorithm::ES256);
    assert_eq!(first[0].next_event, None);
    let years = run(&p, &world(&first), at_hours(24 * 365 * 5));
    assert_eq!(years[0].secret, first[0].secret);
    assert_eq!(years[0].change, None);
}

#[test]
fn rotation_keeps_old_tokens_verifying_for_the_grace_period_only() {
    let p = policy(
        "  - {name: api, secretName: api-jwt, algorithm: ES256, rotateEvery: 720h, gracePeriod: 24h}\n",
    );
    let first = run(&p, &ObservedJwt::default(), t0());
    let old_kid = first[0].kid.clone();
    let old_token = sign(&first[0], "issued-before");

    let rotated = run(&p, &world(&first), at_hours(720));
    let k = &rotated[0];
    assert_eq!(k.change, Some(KeyChange::Scheduled));
    assert_ne!(k.kid, old_kid);
    assert_eq!(published_kids(k), vec![k.kid.clone(), old_kid.clone()]);
    assert_eq!(k.previous_kids, vec![old_kid.clone()]);
    assert_eq!(k.rotated_at, at_hours(720));
    assert_eq!(k.next_rotation, Some(at_hours(1440)));
    assert_eq!(
        k.next_event,
        Some(at_hours(744)),
        "the old key's retirement"
    );

    let new_token = sign(k, "issued-after");
    let header = jsonwebtoken::decode_header(&new_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(k.kid.as_str()));
    assert_eq!(
        verify(&new_token, &jwks_json(k)).as_deref(),
        Ok("issued-after")
    );
    assert_eq!(
        verify(&old_token, &jwks_json(k)).as_deref(),
        Ok("issued-before")
    );

    let last_second = run(
        &p,
        &world(&rotated),
        at_hours(744) - SignedDuration::from_secs(1),
    );
    assert_eq!(last_second[0].jwks, k.jwks);
    assert_eq!(
        verify(&old_token, &jwks_json(&last_second[0])).as_deref(),
        Ok("issued-before")
    );

    let retired = run(&p, &world(&rotated), at_hours(744));
    let r = &retired[0];
    assert_eq!(r.change, None);
    assert_eq!(r.kid, k.kid);
    assert_eq!(published_kids(r), vec![k.kid.clone()]);
    assert!(r.previous_kids.is_empty());
    assert!(!r.secret.data.as_ref().unwrap().contains_key(PREVIOUS_KEYS));
    assert_eq!(r.next_event, Some(at_hours(1440)));
    assert_eq!(verify(&old_token, &jwks_json(r)), Err("unknown kid".into()));
    // Not only the kid lookup: the old signature does not verify under the remaining key.
    let set: JwkSet = serde_json::from_str(&jwks_json(r)).unwrap();
    let current = DecodingKey::from_jwk(&set.keys[0]).unwrap();
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(
            &old_token,
            &current,
            &Validation::new(Algorithm::ES256)
        )
        .is_err()
    );
    assert_eq!(
        verify(&new_token, &jwks_json(r)).as_deref(),
        Ok("issued-after")
    );
    // Retirement is stable too.
    assert_eq!(run(&p, &world(&retired), at_hours(800))[0].secret, r.secret);
}

#[test]
fn default_grace_period_is_seven_days() {
    let p = policy(API_MONTHLY);
    let first = run(&p, &ObservedJwt::default(), t0());
    let rotated = run(&p, &world(&first), at_hours(720));
    assert_eq!(rotated[0].next_event, Some(at_hours(720 + 168)));
    let before = run(&p, &world(&rotated), at_hours(720 + 167));
    assert_eq!(before[0].previous_kids, vec![first[0].kid.clone()]);
    let after = run(&p, &world(&rotated), at_hours(720 + 168));
    assert!(after[0].previous_kids.is_empty());
}

#[test]
fn rotate_request_rotates_exactly_once() {
    let p = policy("  - {name: api, secretName: api-jwt, algorithm: EdDSA}\n");
    let first = run(&p, &ObservedJwt::default(), t0());
    let old_token = sign(&first[0], "before");

    let rotated = run(&p, &requesting_rotation(world(&first), "api"), at_hours(1));
    let k = &rotated[0];
    assert_eq!(k.change, Some(KeyChange::Requested));
    assert_ne!(k.kid, first[0].kid);
    assert_eq!(k.rotated_at, at_hours(1));
    assert_eq!(k.next_event, Some(at_hours(1 + 168)));
    assert_eq!(verify(&old_token, &jwks_json(k)).as_deref(), Ok("before"));

    // The reconciler records the request as handled; fed its own output back, nothing moves.
    let mut seen = world(&rotated);
    for hour in [1, 2, 100] {
        let again = run(&p, &seen, at_hours(hour));
        assert_eq!(again[0].change, None);
        assert_eq!(again[0].secret, k.secret);
        seen = world(&again);
    }
}

#[test]
fn rapid_rotation_requests_keep_every_key_within_its_grace_up_to_the_cap() {
    let p = policy("  - {name: api, secretName: api-jwt}\n");
    let mut out = run(&p, &ObservedJwt::default(), t0());
    let mut kids = vec![out[0].kid.clone()];
    for hour in 1..=6 {
        out = run(&p, &requesting_rotation(world(&out), "api"), at_hours(hour));
        kids.push(out[0].kid.clone());
    }
    let mut expected: Vec<String> = kids
        .iter()
        .rev()
        .take(1 + MAX_PREVIOUS_KEYS)
        .cloned()
        .collect();
    assert_eq!(published_kids(&out[0]), expected);
    expected.remove(0);
    assert_eq!(out[0].previous_kids, expected);
    // Key i stopped signing at hour i + 1; the oldest one kept (key 2) leaves first.
    assert_eq!(out[0].next_event, Some(at_hours(3 + 168)));
}

#[test]
fn algorithm_change_rotates_and_keeps_the_old_key_published() {
    let es = policy("  - {name: api, secretName: api-jwt, algorithm: ES256}\n");
    let first = run(&es, &ObservedJwt::default(), t0());
    let old_token = sign(&first[0], "ec");

    let rs = policy("  - {name: api, secretName: api-jwt, algorithm: RS256}\n");
    let changed = run(&rs, &world(&first), at_hours(5));
    let k = &changed[0];
    assert_eq!(k.change, Some(KeyChange::AlgorithmChanged));
    assert_eq!(k.algorithm, JwtAlgorithm::RS256);
    assert_eq!(k.previous_kids, vec![first[0].kid.clone()]);
    assert_eq!(verify(&old_token, &jwks_json(k)).as_deref(), Ok("ec"));
    assert_eq!(verify(&sign(k, "rsa"), &jwks_json(k)).as_deref(), Ok("rsa"));
    // And it settles.
    let again = run(&rs, &world(&changed), at_hours(6));
    assert_eq!(again[0].change, None);
    assert_eq!(again[0].secret, k.secret);
}

#[test]
fn lost_signing_secret_keeps_the_published_keys_verifying() {
    let p = policy(API_MONTHLY);
    let first = run(&p, &ObservedJwt::default(), t0());
    let old_token = sign(&first[0], "survivor");
    let mut seen = world(&first);
    seen.keys.get_mut("api").unwrap().secret = None;

    let recreated = run(&p, &seen, at_hours(10));
    let k = &recreated[0];
    assert_eq!(k.change, Some(KeyChange::Created));
    assert_ne!(k.kid, first[0].kid);
    assert_eq!(k.previous_kids, vec![first[0].kid.clone()]);
    assert_eq!(verify(&old_token, &jwks_json(k)).as_deref(), Ok("survivor"));
    assert_eq!(k.next_event, Some(at_hours(10 + 168)));
}

#[test]
fn unreadable_private_key_is_replaced_and_its_public_key_kept() {
    let p = policy(API_MONTHLY);
    let first = run(&p, &ObservedJwt::default(), t0());
    let old_token = sign(&first[0], "old");
    let mut seen = world(&first);
    let entry = seen.keys.get_mut("api").unwrap();
    let mut data = entry.secret.take().unwrap().into_inner();
    data.insert(PRIVATE_PEM.into(), ByteString(b"not a key".to_vec()));
    entry.secret = Some(Sensitive::new(data));
    entry.jwks = None;

    let k = &run(&p, &seen, at_hours(3))[0];
    assert_eq!(k.change, Some(KeyChange::Unusable));
    assert_ne!(k.kid, first[0].kid);
    assert_eq!(k.previous_kids, vec![first[0].kid.clone()]);
    assert_eq!(verify(&old_token, &jwks_json(k)).as_deref(), Ok("old"));
}

#[test]
fn drifted_public_fields_are_repaired_from_the_private_key() {
    let p = policy(API_MONTHLY);
    let first = run(&p, &ObservedJwt::default(), t0());
    let mut seen = world(&first);
    let entry = seen.keys.get_mut("api").unwrap();
    let mut data = entry.secret.take().unwrap().into_inner();
    data.insert(KID.into(), ByteString(b"edited".to_vec()));
    data.remove(PUBLIC_PEM);
    entry.secret = Some(Sensitive::new(data));
    entry.jwks = None;

    let repaired = run(&p, &seen, at_hours(1));
    assert_eq!(repaired[0].change, None);
    assert_eq!(repaired[0].secret, first[0].secret);
    assert_eq!(repaired[0].jwks, first[0].jwks);
}

#[test]
fn debug_output_never_shows_key_material() {
    let p = policy(
        "  - {name: api, secretName: api-jwt, algorithm: RS256}\n  - {name: web, secretName: web-jwt, algorithm: EdDSA}\n",
    );
    let out = run(&p, &ObservedJwt::default(), t0());
    let seen = world(&out);
    let printed = format!("{out:?} {out:#?} {seen:?} {seen:#?}");
    assert!(printed.contains("api-jwt") && printed.contains(&out[0].kid));
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    for k in &out {
        let pem = secret_text(k, PRIVATE_PEM);
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!printed.contains(body_line));
    }
}

#[test]
fn invalid_durations_name_the_field() {
    let p = policy(
        "  - {name: api, secretName: api-jwt}\n  - {name: web, secretName: web-jwt, rotateEvery: 0h}\n",
    );
    let err = desired_jwt(&p, &ObservedJwt::default(), t0()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "spec.jwt[1].rotateEvery: must be at least 1h"
    );
    assert_eq!(err.reason(), "InvalidSpec");

    let p = policy("  - {name: api, secretName: api-jwt, gracePeriod: 7d}\n");
    let err = desired_jwt(&p, &ObservedJwt::default(), t0()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.jwt[0].gracePeriod: invalid duration \"7d\""),
        "{err}"
    );
}

/// A second ecosystem: Python's `cryptography`, given only jwks.json and the token.
const PYTHON_VERIFY: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

def b64(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

def num(s):
    return int.from_bytes(b64(s), "big")

jwks, token = json.loads(sys.argv[1]), sys.argv[2]
head, body, sig = token.split(".")
header = json.loads(b64(head))
key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
assert key["alg"] == header["alg"]
msg, sig = f"{head}.{body}".encode(), b64(sig)
if key["kty"] == "EC":
    pub = ec.EllipticCurvePublicNumbers(num(key["x"]), num(key["y"]), ec.SECP256R1()).public_key()
    der = utils.encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub.verify(der, msg, ec.ECDSA(hashes.SHA256()))
elif key["kty"] == "OKP":
    ed25519.Ed25519PublicKey.from_public_bytes(b64(key["x"])).verify(sig, msg)
else:
    pub = rsa.RSAPublicNumbers(num(key["e"]), num(key["n"])).public_key()
    pub.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
print(json.loads(b64(body))["sub"])
"#;

fn python_verify(jwks: &str, token: &str) -> Option<Result<String, String>> {
    let out = std::process::Command::new("python3")
        .args(["-c", PYTHON_VERIFY, jwks, token])
        .output()
        .ok()?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if stderr.contains("No module named 'cryptography'") {
        return None;
    }
    Some(if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    })
}

#[test]
fn python_cryptography_verifies_tokens_from_the_jwks_alone() {
    for algorithm in ["ES256", "EdDSA", "RS256"] {
        let p = policy(&format!(
            "  - {{name: api, secretName: api-jwt, algorithm: {algorithm}}}\n"
        ));
        let first = run(&p, &ObservedJwt::default(), t0());
        let old_token = sign(&first[0], "bob");
        let Some(verdict) = python_verify(&jwks_json(&first[0]), &old_token) else {
            eprintln!("python3 with cryptography is not installed: skipped");
            return;
        };
        assert_eq!(verdict, Ok("bob".to_string()), "{algorithm}");

        // After a rotation the old token still verifies, and a forged signature does not.
        let rotated = run(&p, &requesting_rotation(world(&first), "api"), at_hours(1));
        let jwks = jwks_json(&rotated[0]);
        assert_eq!(python_verify(&jwks, &old_token).unwrap(), Ok("bob".into()));
        let new_token = sign(&rotated[0], "carol");
        assert_eq!(
            python_verify(&jwks, &new_token).unwrap(),
            Ok("carol".into())
        );
        let (unsigned, _) = new_token.rsplit_once('.').unwrap();
        let (_, old_signature) = old_token.rsplit_once('.').unwrap();
        let forged = format!("{unsigned}.{old_signature}");
        assert!(
            python_verify(&jwks, &forged).unwrap().is_err(),
            "{algorithm}"
        );
    }
}
