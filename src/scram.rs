//! SCRAM (RFC 5802, RFC 7677): the key derivation behind PostgreSQL verifiers and Kafka's salted
//! credentials, and the client side of the exchange the Kafka registration Job logs in with.
//!
//! One code path serves SHA-1 (RFC 5802's test vector), SHA-256 and SHA-512.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::facets::tls::Sensitive;

/// Lowest iteration count accepted from a peer or a stored credential (RFC 7677's minimum).
pub const MIN_ITERATIONS: u32 = 4096;
/// Highest iteration count accepted from a peer or a stored credential: bounds the work one
/// message can ask for.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// Hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramHash {
    Sha1,
    Sha256,
    Sha512,
}

impl ScramHash {
    /// Mechanism name as SASL spells it.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Sha1 => "SCRAM-SHA-1",
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_mechanism(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-1" => Some(Self::Sha1),
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Output length of the hash, which is also the length of every derived key.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// SaltedPassword = Hi(password, salt, i), i.e. PBKDF2 with HMAC-H.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0u8; self.output_len()];
        match self {
            Self::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
            Self::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
            Self::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
        }
        out
    }

    pub fn hmac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .expect("HMAC takes a key of any length");
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha1 => run::<Hmac<Sha1>>(key, message),
            Self::Sha256 => run::<Hmac<Sha256>>(key, message),
            Self::Sha512 => run::<Hmac<Sha512>>(key, message),
        }
    }

    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha1 => Sha1::digest(data).to_vec(),
            Self::Sha256 => Sha256::digest(data).to_vec(),
            Self::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// The keys a server stores for a salted password.
    pub fn keys(self, salted_password: &[u8]) -> ScramKeys {
        let client_key = self.hmac(salted_password, b"Client Key");
        ScramKeys {
            stored_key: self.hash(&client_key),
            server_key: self.hmac(salted_password, b"Server Key"),
        }
    }
}

/// StoredKey and ServerKey of one credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// Why an exchange failed. Messages carry no key, proof or password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed server message: {0}")]
    Malformed(&'static str),
    #[error("the server's nonce does not extend the client's")]
    NonceMismatch,
    #[error("the server asked for {0} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    #[error("the server rejected the proof: {0}")]
    ServerError(String),
    #[error("the server's signature does not match: it does not know the credential")]
    BadServerSignature,
    #[error("the exchange was driven out of order")]
    OutOfOrder,
}

/// `saslname` of RFC 5802: `=` and `,` escaped.
fn sasl_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// A fresh client nonce: 24 random bytes, base64 (printable, no comma).
pub fn new_nonce() -> Option<String> {
    let mut raw = [0u8; 24];
    getrandom::fill(&mut raw).ok()?;
    Some(B64.encode(raw))
}

/// The client side of one SCRAM exchange without channel binding (`n,,`).
pub struct ScramClient {
    hash: ScramHash,
    password: Sensitive<String>,
    client_first_bare: String,
    nonce: String,
    server_signature: Option<Vec<u8>>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("mechanism", &self.hash.mechanism())
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    pub fn new(hash: ScramHash, user: &str, password: Sensitive<String>, nonce: String) -> Self {
        Self {
            hash,
            password,
            client_first_bare: format!("n={},r={nonce}", sasl_name(user)),
            nonce,
            server_signature: None,
        }
    }

    /// `n,,n=<user>,r=<nonce>`
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers `r=..,s=..,i=..` with `c=biws,r=..,p=<proof>`.
    pub fn client_final(&mut self, server_first: &str) -> Result<String, ScramError> {
        let attrs = attributes(server_first);
        let nonce = attrs
            .iter()
            .find(|(k, _)| *k == 'r')
            .map(|(_, v)| *v)
            .ok_or(ScramError::Malformed("no nonce"))?;
        let salt = attrs
            .iter()
            .find(|(k, _)| *k == 's')
            .and_then(|(_, v)| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("no salt"))?;
        let iterations: u32 = attrs
            .iter()
            .find(|(k, _)| *k == 'i')
            .and_then(|(_, v)| v.parse().ok())
            .ok_or(ScramError::Malformed("no iteration count"))?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let salted =
            self.hash
                .salted_password(self.password.expose().as_bytes(), &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        let stored_key = self.hash.hash(&client_key);
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = self.hash.hmac(&salted, b"Server Key");
        self.server_signature = Some(self.hash.hmac(&server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks `v=<server signature>` (or reports `e=<error>`): proves the server knew the
    /// credential, not only that it accepted ours.
    pub fn verify_server_final(&self, server_final: &str) -> Result<(), ScramError> {
        let expected = self
            .server_signature
            .as_ref()
            .ok_or(ScramError::OutOfOrder)?;
        let attrs = attributes(server_final);
        if let Some((_, e)) = attrs.iter().find(|(k, _)| *k == 'e') {
            return Err(ScramError::ServerError((*e).to_string()));
        }
        let given = attrs
            .iter()
            .find(|(k, _)| *k == 'v')
            .and_then(|(_, v)| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("no server signature"))?;
        if given != *expected {
            return Err(ScramError::BadServerSignature);
        }
        Ok(())
    }
}

/// `k=v,k=v` into pairs; values may contain `=` (base64 padding).
fn attributes(message: &str) -> Vec<(char, &str)> {
    message
        .split(',')
        .filter_map(|part| {
            let mut chars = part.chars();
            let key = chars.next()?;
            let value = part.get(1..)?.strip_prefix('=')?;
            Some((key, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the client side of an RFC example with its fixed nonce and checks both messages.
    fn exchange(
        hash: ScramHash,
        client_nonce: &str,
        server_first: &str,
        client_final: &str,
        server_final: &str,
    ) {
        let mut client = ScramClient::new(
            hash,
            "user",
            Sensitive::new("pencil".to_string()),
            client_nonce.into(),
        );
        assert_eq!(client.client_first(), format!("n,,n=user,r={client_nonce}"));
        assert_eq!(client.client_final(server_first).unwrap(), client_final);
        client.verify_server_final(server_final).unwrap();
        assert_eq!(
            client.verify_server_final("v=AAAA"),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn rfc5802_sha1_exchange() {
        exchange(
            ScramHash::Sha1,
            "fyko+d2lbbFgONRv9qkxdawL",
            "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        );
    }

    #[test]
    fn rfc7677_sha256_exchange() {
        exchange(
            ScramHash::Sha256,
            "rOprNGfwEbeRWgbNEkqO",
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        );
    }

    #[test]
    fn rfc7677_stored_and_server_keys() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = ScramHash::Sha256.salted_password(b"pencil", &salt, 4096);
        let keys = ScramHash::Sha256.keys(&salted);
        assert_eq!(
            B64.encode(&keys.stored_key),
            "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY="
        );
        assert_eq!(
            B64.encode(&keys.server_key),
            "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
        );
    }

    #[test]
    fn sha512_uses_the_same_path_with_its_own_lengths() {
        // Reference values computed independently: PBKDF2 by `openssl kdf ... PBKDF2` with
        // digest SHA512, the keys by Python's hashlib/hmac.
        let salted = ScramHash::Sha512.salted_password(b"pencil", b"salt", 4096);
        assert_eq!(
            B64.encode(&salted),
            "LP46HBUWYrHqSdE/WVZ0ocZmrdcN8V09AiVOmQWZOHgmHadAf9EcL+5LCjDfUVSxp1L4ahM4Dd1L3Zp8lY7HaQ=="
        );
        let keys = ScramHash::Sha512.keys(&salted);
        assert_eq!(
            B64.encode(&keys.stored_key),
            "/0HobAjy5SWocoXto9Y01mm66KtsLls+Ca0AFKaR+rnrJlVwYv+XjuAR2bI+a4dDffNmz3zUyHR9+Sd9Bn/TMA=="
        );
        assert_eq!(
            B64.encode(&keys.server_key),
            "oghwiUlz2cdgskC3qVBg8eY1ErXyG4HxXs/plsFjtkjRr0Ey6qLmOz6JtGuxWSvu5fU2wuEAWVRSHPNyeBmWKQ=="
        );
    }

    #[test]
    fn server_messages_that_must_be_refused() {
        let mut client = ScramClient::new(
            ScramHash::Sha512,
            "admin",
            Sensitive::new("pw".to_string()),
            "abc".into(),
        );
        assert_eq!(
            client.verify_server_final("v=AAAA"),
            Err(ScramError::OutOfOrder)
        );
        assert_eq!(
            client.client_final("r=xyz123,s=AAAA,i=4096"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            client.client_final("r=abc,s=AAAA,i=4096"),
            Err(ScramError::NonceMismatch)
        );
        assert_eq!(
            client.client_final("r=abcd,s=AAAA,i=1"),
            Err(ScramError::Iterations(1))
        );
        assert_eq!(
            client.client_final("r=abcd,s=AAAA,i=4000000000"),
            Err(ScramError::Iterations(4_000_000_000))
        );
        assert_eq!(
            client.client_final("r=abcd,i=4096"),
            Err(ScramError::Malformed("no salt"))
        );
        assert!(client.client_final("r=abcd,s=AAAA,i=4096").is_ok());
        assert_eq!(
            client.verify_server_final("e=invalid-proof"),
            Err(ScramError::ServerError("invalid-proof".into()))
        );
    }

    #[test]
    fn user_names_are_escaped() {
        let client = ScramClient::new(
            ScramHash::Sha256,
            "a=b,c",
            Sensitive::new(String::new()),
            "n".into(),
        );
        assert_eq!(client.client_first(), "n,,n=a=3Db=2Cc,r=n");
    }
}
