//! PKCS#12 keystores and truststores that Java reads as they are.

use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};

use super::Sensitive;

const PASSWORD_LEN: usize = 32;
const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A random alphanumeric password: nothing to escape in a JAAS file, a properties file or a shell.
pub fn generate_password() -> Option<Sensitive<String>> {
    let mut out = String::with_capacity(PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < PASSWORD_LEN {
        getrandom::fill(&mut buf).ok()?;
        // Rejection sampling keeps every character equally likely (248 = 4 * 62).
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == PASSWORD_LEN {
                break;
            }
            out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        }
    }
    Some(Sensitive::new(out))
}

/// A keystore holding one PrivateKeyEntry `alias`: the PKCS#8 key and its chain, leaf first.
pub fn keystore_p12(
    alias: &str,
    key_pkcs8_der: &Sensitive<Vec<u8>>,
    chain_der: &[Vec<u8>],
    password: &Sensitive<String>,
) -> Result<Vec<u8>, String> {
    let key = PrivateKey::from_der(key_pkcs8_der.expose()).map_err(|e| e.to_string())?;
    let certs = chain_der
        .iter()
        .map(|der| Certificate::from_der(der).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut store = KeyStore::new();
    store.add_entry(
        alias,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(alias, key, certs)),
    );
    store
        .writer(password.expose())
        .write()
        .map_err(|e| e.to_string())
}

/// A truststore with one trustedCertEntry per CA (`ca-0`, `ca-1`, ...).
pub fn truststore_p12(
    cas_der: &[Vec<u8>],
    password: &Sensitive<String>,
) -> Result<Vec<u8>, String> {
    let mut store = KeyStore::new();
    for (i, der) in cas_der.iter().enumerate() {
        let cert = Certificate::from_der(der).map_err(|e| e.to_string())?;
        store.add_entry(&format!("ca-{i}"), KeyStoreEntry::Certificate(cert));
    }
    store
        .writer(password.expose())
        .write()
        .map_err(|e| e.to_string())
}
