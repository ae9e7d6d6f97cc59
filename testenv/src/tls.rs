//! Throwaway PKI for tests, built with rcgen (ECDSA P-256).

use std::net::IpAddr;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A CA plus one server certificate it signed, all PEM.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA and a server certificate for the given DNS names and IP addresses.
///
/// Panics on an unparsable IP address: this is a test helper.
pub fn test_pki(dns: &[&str], ips: &[&str]) -> TestPki {
    let ca = Ca::new("bulwark test CA").expect("generating a test CA");
    let ips: Vec<IpAddr> = ips
        .iter()
        .map(|ip| ip.parse().unwrap_or_else(|e| panic!("bad IP {ip:?}: {e}")))
        .collect();
    let cn = dns.first().copied().unwrap_or("bulwark-test-server");
    let (cert_pem, key_pem) = ca
        .issue_server(cn, dns, &ips)
        .expect("issuing a test server certificate");
    TestPki {
        ca_pem: ca.pem(),
        cert_pem,
        key_pem,
    }
}

/// A self-signed CA that can issue leaf certificates.
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub(crate) fn new(common_name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::default();
        // A unique subject keeps two test CAs from ever looking like the same issuer.
        params.distinguished_name = dn(
            &format!("{common_name} {}", crate::process::random_hex(4)),
            None,
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)
            .context("self-signing the CA")?;
        Ok(Ca { issuer })
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A serving certificate; returns (cert PEM, PKCS#8 key PEM).
    pub(crate) fn issue_server(
        &self,
        common_name: &str,
        dns: &[&str],
        ips: &[IpAddr],
    ) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, None);
        params.subject_alt_names = dns
            .iter()
            .map(|d| Ok(SanType::DnsName((*d).try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate (Kubernetes reads CN as the user, O as groups).
    pub(crate) fn issue_client(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> anyhow::Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name, organization);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// An ECDSA P-256 key as PKCS#8 PEM plus its public key PEM (service-account signing).
pub(crate) fn signing_key() -> anyhow::Result<(String, String)> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
