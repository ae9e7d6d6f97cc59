//! The JWT facet against a real control plane: tokens signed with the produced key verify
//! against the published JWKS in Rust (jsonwebtoken) and Python (PyJWT), across a rotation.

mod support;

use std::process::Command;
use std::time::Duration;

use bulwark::api::SecurityPolicy;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, jwk::JwkSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams};
use support::*;

const AUDIENCE: &str = "traffic-api";

fn sign(private_pem: &[u8], kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    let exp = jiff::Timestamp::now().as_second() + 900;
    let claims = serde_json::json!({"sub": "user-1", "aud": AUDIENCE, "exp": exp});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(private_pem).unwrap(),
    )
    .unwrap()
}

async fn jwks(client: &kube::Client, ns: &str) -> String {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    api.get("api-jwks").await.unwrap().data.unwrap()["jwks.json"].clone()
}

/// Verification as the API would do it, from the JWKS alone.
fn verify_rust(jwks_json: &str, token: &str) -> Result<(), String> {
    let set: JwkSet = serde_json::from_str(jwks_json).map_err(|e| e.to_string())?;
    let kid = jsonwebtoken::decode_header(token)
        .map_err(|e| e.to_string())?
        .kid
        .ok_or("no kid")?;
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[AUDIENCE]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn verify_python(jwks_json: &str, token: &str) -> Result<String, String> {
    let file = std::env::temp_dir().join(format!(
        "bulwark-jwks-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, jwks_json).unwrap();
    let out = Command::new("python3")
        .arg("tests/interop/verify_jwks.py")
        .arg(&file)
        .arg(token)
        .arg(AUDIENCE)
        .output()
        .expect("python3 runs");
    std::fs::remove_file(&file).ok();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn signing_key(client: &kube::Client, ns: &str) -> (Vec<u8>, String) {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data = api.get("api-jwt").await.unwrap().data.unwrap();
    (
        data["private.pem"].0.clone(),
        String::from_utf8(data["kid"].0.clone()).unwrap(),
    )
}

async fn status_kid(client: &kube::Client, ns: &str) -> Option<String> {
    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), ns);
    api.get("traffic")
        .await
        .ok()?
        .status?
        .jwt
        .first()
        .map(|k| k.kid.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_in_two_ecosystems_and_survive_rotation_until_the_grace_period_ends() {
    let client = client().await;
    let ns = namespace(&client, "jwt").await;
    let operator = Operator::start(&client, &ns);
    let mut policy = example_policy(&ns);
    policy.spec.jwt.as_mut().unwrap()[0].grace_period = Some("6s".into());
    apply_policy(&client, &policy).await.unwrap();
    let (reason, message) = wait_condition(&client, &ns, "traffic", "JWTReady", "True").await;
    assert_eq!(reason, "KeysPublished", "{message}");

    let (private_pem, kid) = signing_key(&client, &ns).await;
    assert_eq!(
        status_kid(&client, &ns).await.as_deref(),
        Some(kid.as_str()),
        "status shows the signing kid"
    );
    let old_token = sign(&private_pem, &kid);
    let published = jwks(&client, &ns).await;
    verify_rust(&published, &old_token).expect("jsonwebtoken verifies against jwks.json");
    assert_eq!(
        verify_python(&published, &old_token),
        Ok(kid.clone()),
        "PyJWT verifies against jwks.json"
    );
    let forged = sign(
        &bulwark_testenv::tls::test_pki(&["x"], &[])
            .key_pem
            .into_bytes(),
        &kid,
    );
    assert!(
        verify_rust(&published, &forged).is_err() && verify_python(&published, &forged).is_err()
    );

    let api: Api<SecurityPolicy> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"annotations": {"bulwark.dev/rotate": "jwt-1"}}});
    api.patch("traffic", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let new_kid = eventually(Duration::from_secs(30), "a new signing key", || async {
        status_kid(&client, &ns).await.filter(|k| *k != kid)
    })
    .await;
    let rotated_at = std::time::Instant::now();
    let (new_pem, secret_kid) = signing_key(&client, &ns).await;
    assert_eq!(secret_kid, new_kid);
    let new_token = sign(&new_pem, &new_kid);
    let during_grace = jwks(&client, &ns).await;
    for token in [&old_token, &new_token] {
        verify_rust(&during_grace, token)
            .expect("old and new tokens verify during the grace period");
        verify_python(&during_grace, token).expect("PyJWT agrees during the grace period");
    }

    // The grace period ends by a scheduled requeue: the old key leaves, old tokens fail.
    let after_grace = eventually(
        Duration::from_secs(30),
        "the previous key to leave the JWKS",
        || async {
            let doc = jwks(&client, &ns).await;
            (!doc.contains(&kid)).then_some(doc)
        },
    )
    .await;
    assert!(
        rotated_at.elapsed() >= Duration::from_secs(4),
        "the old key left before its grace period ended"
    );
    assert!(verify_rust(&after_grace, &old_token).is_err());
    assert!(verify_python(&after_grace, &old_token).is_err());
    verify_rust(&after_grace, &new_token).expect("new tokens keep verifying");
    assert_eq!(verify_python(&after_grace, &new_token), Ok(new_kid));

    // The handled request does not rotate again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(signing_key(&client, &ns).await.1, secret_kid);
    operator.stop().await;
}
