//! The floor of issuance cost: rcgen key generation plus signing a leaf under a CA, in a loop
//! on one thread, with nothing else in between.

use std::time::Instant;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    PKCS_RSA_SHA256, RsaKeySize,
};

#[derive(Clone, Copy, Debug)]
pub enum Algorithm {
    EcdsaP256,
    Rsa2048,
}

impl Algorithm {
    fn generate(self) -> KeyPair {
        match self {
            Algorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            Algorithm::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
        }
        .expect("key generation")
    }
}

/// Leaves per second: `n` times a fresh `algorithm` key and a leaf signed by an ECDSA P-256 CA.
pub fn raw_rate(algorithm: Algorithm, n: usize) -> f64 {
    let ca_key = Algorithm::EcdsaP256.generate();
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, "bench-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca, ca_key);
    let started = Instant::now();
    for i in 0..n {
        let key = algorithm.generate();
        let params = CertificateParams::new(vec![
            format!("api-{i}.traffic.svc"),
            "api.traffic.example.com".to_string(),
        ])
        .expect("leaf params");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        std::hint::black_box((cert.pem(), key.serialize_pem()));
    }
    n as f64 / started.elapsed().as_secs_f64()
}
