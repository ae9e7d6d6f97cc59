//! cert-manager's controller, as built by hack/cert-manager.sh, issuing the same certificates as
//! the TLS section of the benchmark policies, from one CA ClusterIssuer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster;
use crate::process::Measured;

/// The cert-manager version the wrapper module pins.
pub fn version() -> Option<String> {
    let gomod = include_str!("cert-manager/go.mod");
    gomod.lines().find_map(|l| {
        let l = l.trim().trim_start_matches("require").trim();
        l.strip_prefix("github.com/cert-manager/cert-manager ")
            .map(|v| v.split_whitespace().next().unwrap_or_default().to_string())
    })
}

/// Where hack/cert-manager.sh caches the build: `CERT_MANAGER_DIR`, or the default cache path.
pub fn build_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("CERT_MANAGER_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
            cache
                .join("bulwark")
                .join(format!("cert-manager-{}", version()?))
        }
    };
    dir.join("cert-manager-controller").is_file().then_some(dir)
}

pub fn crds(dir: &Path) -> Vec<CustomResourceDefinition> {
    let mut crds = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("crds"))
        .expect("cert-manager CRDs")
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read CRD");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc).expect("CRD YAML");
            if value.is_null() {
                continue;
            }
            crds.push(serde_yaml::from_value(value).expect("a CustomResourceDefinition"));
        }
    }
    crds
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", kind),
        plural,
    )
}

pub fn certificates() -> ApiResource {
    resource("Certificate", "certificates")
}

/// A CA Secret in kube-system (the cluster resource namespace) and a ClusterIssuer of kind CA.
pub async fn create_ca_issuer(client: &Client) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params
        .distinguished_name
        .push(DnType::CommonName, "bench-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA certificate");
    let data = BTreeMap::from([
        ("tls.crt".to_string(), cert.pem().into_bytes()),
        ("tls.key".to_string(), key.serialize_pem().into_bytes()),
    ]);
    cluster::create_secrets(
        client,
        vec![("kube-system".into(), "bench-ca".into(), data)],
    )
    .await;
    let issuers: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("ClusterIssuer", "clusterissuers"));
    let issuer = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "ClusterIssuer",
        "metadata": {"name": "bench-ca"},
        "spec": {"ca": {"secretName": "bench-ca"}}
    });
    issuers
        .patch(
            "bench-ca",
            &PatchParams::apply("bench-user").force(),
            &Patch::Apply(&issuer),
        )
        .await
        .expect("create the ClusterIssuer");
}

/// Waits until the ClusterIssuer is Ready.
pub async fn wait_issuer_ready(client: &Client, controller: &mut Measured, timeout: Duration) {
    let issuers: Api<DynamicObject> =
        Api::all_with(client.clone(), &resource("ClusterIssuer", "clusterissuers"));
    let deadline = Instant::now() + timeout;
    loop {
        assert!(controller.running(), "cert-manager's controller exited");
        let ready = issuers.get("bench-ca").await.ok().is_some_and(|i| {
            i.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ClusterIssuer not Ready in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The three certificates of the example policy's TLS section as cert-manager Certificates in
/// `ns`: same Secret names, DNS names, key (ECDSA P-256), duration and renewal.
pub fn certificate_objects(ns: &str) -> Vec<Value> {
    let policy = cluster::policy(ns, cluster::PolicyShape::TlsOnly);
    let tls = &policy["spec"]["tls"];
    tls["certificates"]
        .as_array()
        .expect("certificates")
        .iter()
        .map(|c| {
            json!({
                "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
                "metadata": {"name": c["name"], "namespace": ns},
                "spec": {
                    "secretName": c["secretName"],
                    "dnsNames": c["dnsNames"],
                    "duration": tls["defaults"]["duration"],
                    "renewBefore": tls["defaults"]["renewBefore"],
                    "privateKey": {"algorithm": "ECDSA", "size": 256},
                    "issuerRef": {"name": "bench-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
                }
            })
        })
        .collect()
}

/// cert-manager's controller against `kubeconfig`.
pub fn start(dir: &Path, kubeconfig: &Path, log: &Path) -> Measured {
    let mut cmd = Command::new(dir.join("cert-manager-controller"));
    cmd.arg("--kubeconfig").arg(kubeconfig);
    Measured::command(cmd, log)
}
