//! `bulwark provision kafka`: registers the salted SCRAM credentials of a [`UserPlan`] on a
//! Kafka cluster and deletes the ones it removes, over TLS, logged in as the admin.
//!
//! Inputs (environment, as the user Job sets them; see [`crate::facets::kafka::env`]):
//! - `BULWARK_KAFKA_PLAN_FILE` (or `BULWARK_KAFKA_PLAN`, the JSON itself): the plan;
//! - `BULWARK_KAFKA_CREDENTIALS_FILE` (or `BULWARK_KAFKA_CREDENTIALS`): `{user: credential}`;
//! - `BULWARK_KAFKA_ADMIN_USER`, `BULWARK_KAFKA_ADMIN_PASSWORD`: the SCRAM login that applies it;
//! - `BULWARK_KAFKA_CA_FILE`: PEM bundle the broker certificate must chain to.
//!
//! The Job never sees a user's password: AlterUserScramCredentials carries the salt, the
//! iteration count and SaltedPassword, which is what the brokers store. Upserting the same
//! credential again and deleting an absent one both leave the cluster as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::alter_user_scram_credentials_request::{
    ScramCredentialDeletion, ScramCredentialUpsertion,
};
use kafka_protocol::messages::describe_user_scram_credentials_request::UserName;
use kafka_protocol::messages::{
    AlterUserScramCredentialsRequest, AlterUserScramCredentialsResponse, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, DescribeUserScramCredentialsRequest,
    DescribeUserScramCredentialsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{
    Decodable, Encodable, HeaderVersion, Message, StrBytes, VersionRange,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::facets::kafka::{RemovedCredential, ScramCredential, UserPlan, env};
use crate::facets::tls::Sensitive;
use crate::scram::{ScramClient, ScramError, ScramHash, new_nonce};

/// TCP connect, and separately the TLS handshake, per bootstrap server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One request written and its response read.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response accepted: the answers here are a few KiB, so this only stops a broken or
/// hostile peer from making the Job allocate without bound.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// How long the broker may take to list what was just altered (it applies the metadata record
/// after the controller commits it).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
const CONFIRM_INTERVAL: Duration = Duration::from_millis(200);
const CLIENT_ID: &str = "bulwark-provision";

/// Why provisioning failed. Messages name users, servers and Kafka error codes, never a
/// password, salt, salted password or proof.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("input: {0}")]
    Input(String),
    /// No bootstrap server answered, or the connection was lost mid-exchange.
    #[error("{0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("admin login: {0}")]
    AdminLogin(String),
    #[error("{0}")]
    Rejected(String),
    #[error("Kafka protocol: {0}")]
    Protocol(String),
}

impl ProvisionError {
    /// Short reason for the Job's termination message and the operator's condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Input(_) => "InvalidInput",
            Self::Connect(_) => "ConnectFailed",
            Self::Tls(_) => "TLSFailed",
            Self::AdminLogin(_) => "AdminLoginFailed",
            Self::Rejected(_) => "RegistrationRejected",
            Self::Protocol(_) => "ProtocolError",
        }
    }
}

/// Everything one run needs. Debug redacts the credentials.
#[derive(Clone, Debug)]
pub struct ProvisionInput {
    pub plan: UserPlan,
    /// Credentials of the plan's users (others in the file are not kept).
    pub credentials: BTreeMap<String, ScramCredential>,
    pub admin_user: String,
    pub admin_password: Sensitive<String>,
    pub ca_pem: Option<String>,
}

impl ProvisionInput {
    /// Reads the Job's environment (see the module docs).
    pub fn from_env() -> Result<Self, ProvisionError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// As [`Self::from_env`], with variables from `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ProvisionError> {
        let env_in = super::JobEnv(lookup);
        let plan: UserPlan = env_in
            .json(env::PLAN, env::PLAN_FILE, "plan")
            .map_err(ProvisionError::Input)?;
        let raw: BTreeMap<String, String> = env_in
            .json(env::CREDENTIALS, env::CREDENTIALS_FILE, "credentials")
            .map_err(ProvisionError::Input)?;
        let mut credentials = BTreeMap::new();
        for (user, text) in raw {
            // A stale entry for a user the plan no longer has must not stop the run.
            if !plan.users.contains(&user) {
                continue;
            }
            let credential = ScramCredential::parse(&text)
                .map_err(|e| ProvisionError::Input(format!("credential of user {user:?}: {e}")))?;
            credentials.insert(user, credential);
        }
        let admin_user = env_in
            .required(env::ADMIN_USER)
            .map_err(ProvisionError::Input)?;
        let admin_password = Sensitive::new(
            env_in
                .required(env::ADMIN_PASSWORD)
                .map_err(ProvisionError::Input)?,
        );
        let ca_pem = env_in
            .optional_file(env::CA_FILE)
            .map_err(ProvisionError::Input)?;
        Ok(Self {
            plan,
            credentials,
            admin_user,
            admin_password,
            ca_pem,
        })
    }
}

/// What a run did, for the Job's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProvisionSummary {
    /// Users whose credential was upserted, in plan order.
    pub registered: Vec<String>,
    /// Users a credential was deleted from.
    pub removed: Vec<String>,
    /// Users a removal named whose credential was already gone.
    pub already_absent: Vec<String>,
}

/// Kafka's code for a SCRAM mechanism (AlterUserScramCredentials, DescribeUserScramCredentials).
pub fn mechanism_code(hash: ScramHash) -> Option<i8> {
    match hash {
        ScramHash::Sha256 => Some(1),
        ScramHash::Sha512 => Some(2),
        ScramHash::Sha1 => None,
    }
}

fn kafka_mechanism(name: &str) -> Result<ScramHash, ProvisionError> {
    ScramHash::from_mechanism(name)
        .filter(|h| mechanism_code(*h).is_some())
        .ok_or_else(|| {
            ProvisionError::Input(format!(
                "mechanism {name:?}: Kafka takes SCRAM-SHA-256 or SCRAM-SHA-512"
            ))
        })
}

/// Kafka's own name for an error code, as its clients and logs spell it (`RESOURCE_NOT_FOUND`).
pub fn kafka_error_name(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        None => "NONE".into(),
        Some(ResponseError::Unknown(code)) => format!("error code {code}"),
        Some(e) => {
            let camel = e.to_string();
            let mut out = String::with_capacity(camel.len() + 8);
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
    }
}

/// `NAME (code): message` for a per-request or per-user error; the broker's message names the
/// rule that failed, never the submitted material.
fn describe_error(code: i16, message: Option<&StrBytes>) -> String {
    let name = kafka_error_name(code);
    match message.map(|m| m.as_str().trim()).filter(|m| !m.is_empty()) {
        Some(m) => format!("{name} ({code}): {}", truncate(m, 300)),
        None => format!("{name} ({code})"),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// `host:port[,host:port...]` (IPv6 literals in brackets) into (host, port) pairs.
pub fn parse_bootstrap(servers: &str) -> Result<Vec<(String, u16)>, ProvisionError> {
    let mut out = Vec::new();
    for entry in servers.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || {
            ProvisionError::Input(format!(
                "bootstrap server {entry:?} is not host:port ([ipv6]:port for IPv6)"
            ))
        };
        let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']').ok_or_else(bad)?,
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
        if host.is_empty() {
            return Err(bad());
        }
        out.push((host.to_string(), port));
    }
    if out.is_empty() {
        return Err(ProvisionError::Input("bootstrapServers is empty".into()));
    }
    Ok(out)
}

fn display_server(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// rustls on the ring provider (kube already brings it; a second provider would break rustls'
/// default-provider detection elsewhere in the process), trusting only `ca_pem`: the image has
/// no system roots, so without a bundle nothing could be verified.
pub fn tls_config(ca_pem: Option<&str>) -> Result<Arc<ClientConfig>, ProvisionError> {
    let pem = ca_pem.ok_or_else(|| {
        ProvisionError::Tls(format!(
            "no CA bundle to verify the brokers against ({} is not set)",
            env::CA_FILE
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| ProvisionError::Tls(format!("CA bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ProvisionError::Tls(format!("CA bundle: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ProvisionError::Tls("CA bundle holds no certificate".into()));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| ProvisionError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A request this client sends, tied to its API key and response type.
pub trait KafkaRequest: Encodable + HeaderVersion + Message {
    const KEY: ApiKey;
    /// Versions this client speaks; the crate's range unless a version changes the exchange.
    const SUPPORTED: VersionRange = <Self as Message>::VERSIONS;
    type Response: Decodable + HeaderVersion;
}

impl KafkaRequest for ApiVersionsRequest {
    const KEY: ApiKey = ApiKey::ApiVersions;
    type Response = ApiVersionsResponse;
}

impl KafkaRequest for SaslHandshakeRequest {
    const KEY: ApiKey = ApiKey::SaslHandshake;
    // v0 would mean raw SASL tokens instead of SaslAuthenticate requests.
    const SUPPORTED: VersionRange = VersionRange { min: 1, max: 1 };
    type Response = SaslHandshakeResponse;
}

impl KafkaRequest for SaslAuthenticateRequest {
    const KEY: ApiKey = ApiKey::SaslAuthenticate;
    type Response = SaslAuthenticateResponse;
}

impl KafkaRequest for AlterUserScramCredentialsRequest {
    const KEY: ApiKey = ApiKey::AlterUserScramCredentials;
    type Response = AlterUserScramCredentialsResponse;
}

impl KafkaRequest for DescribeUserScramCredentialsRequest {
    const KEY: ApiKey = ApiKey::DescribeUserScramCredentials;
    type Response = DescribeUserScramCredentialsResponse;
}

/// One request as it goes on the wire: size prefix, header, body.
fn encode_request<R: KafkaRequest>(
    request: &R,
    version: i16,
    correlation_id: i32,
) -> Result<Bytes, ProvisionError> {
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(128);
    buf.put_i32(0);
    header
        .encode(&mut buf, R::header_version(version))
        .and_then(|()| request.encode(&mut buf, version))
        .map_err(|e| ProvisionError::Protocol(format!("encoding {:?} v{version}: {e}", R::KEY)))?;
    let size = i32::try_from(buf.len() - 4)
        .map_err(|_| ProvisionError::Protocol(format!("{:?} request too large", R::KEY)))?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads one size-prefixed frame, refusing sizes above `max` before allocating.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> Result<Bytes, FrameError> {
    let size = stream.read_i32().await.map_err(FrameError::Io)?;
    let size = usize::try_from(size).map_err(|_| FrameError::Size(i64::from(size)))?;
    if size > max {
        return Err(FrameError::Size(size as i64));
    }
    let mut buf = vec![0u8; size];
    stream.read_exact(&mut buf).await.map_err(FrameError::Io)?;
    Ok(buf.into())
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Io(std::io::Error),
    #[error("response size {0} is outside 0..={MAX_RESPONSE_BYTES}")]
    Size(i64),
}

/// Strips the response header of `frame` after checking its correlation id; returns the body.
fn response_body<R: KafkaRequest>(
    mut frame: Bytes,
    version: i16,
    correlation_id: i32,
) -> Result<Bytes, ProvisionError> {
    let header_version = R::Response::header_version(version);
    let header = ResponseHeader::decode(&mut frame, header_version).map_err(|e| {
        ProvisionError::Protocol(format!("{:?} v{version} response header: {e}", R::KEY))
    })?;
    if header.correlation_id != correlation_id {
        return Err(ProvisionError::Protocol(format!(
            "{:?} response carries correlation id {}, expected {correlation_id}",
            R::KEY,
            header.correlation_id
        )));
    }
    Ok(frame)
}

fn decode_body<R: KafkaRequest>(
    mut body: Bytes,
    version: i16,
) -> Result<R::Response, ProvisionError> {
    R::Response::decode(&mut body, version).map_err(|e| {
        ProvisionError::Protocol(format!("decoding {:?} v{version} response: {e}", R::KEY))
    })
}

/// A TLS connection to one broker, with the broker's API versions known; after
/// [`Self::authenticate`], a logged-in admin session.
pub struct KafkaConnection {
    stream: TlsStream<TcpStream>,
    server: String,
    api_versions: BTreeMap<i16, VersionRange>,
    correlation_id: i32,
}

impl std::fmt::Debug for KafkaConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConnection")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl KafkaConnection {
    /// TLS to the first reachable server of `bootstrap` (tried in order), then ApiVersions.
    /// A server that answers TCP but fails the TLS handshake ends the attempt: its certificate
    /// is what is wrong, and trying the next server would only hide that.
    pub async fn connect(bootstrap: &str, ca_pem: Option<&str>) -> Result<Self, ProvisionError> {
        let servers = parse_bootstrap(bootstrap)?;
        let connector = TlsConnector::from(tls_config(ca_pem)?);
        let mut failures = Vec::new();
        for (host, port) in &servers {
            let server = display_server(host, *port);
            let tcp = match tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect((host.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    failures.push(format!("{server}: {e}"));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{server}: no answer within {CONNECT_TIMEOUT:?}"));
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let name = ServerName::try_from(host.clone()).map_err(|e| {
                ProvisionError::Input(format!("bootstrap host {host:?} is not a valid name: {e}"))
            })?;
            let stream =
                match tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        return Err(ProvisionError::Tls(format!("handshake with {server}: {e}")));
                    }
                    Err(_) => {
                        return Err(ProvisionError::Tls(format!(
                            "handshake with {server}: no answer within {CONNECT_TIMEOUT:?} \
                         (is this a TLS listener?)"
                        )));
                    }
                };
            let mut connection = Self {
                stream,
                server,
                api_versions: BTreeMap::new(),
                correlation_id: 0,
            };
            connection.negotiate_versions().await?;
            return Ok(connection);
        }
        Err(ProvisionError::Connect(format!(
            "no bootstrap server reachable: {}",
            failures.join("; ")
        )))
    }

    /// [`Self::connect`] then [`Self::authenticate`].
    pub async fn login(
        bootstrap: &str,
        ca_pem: Option<&str>,
        hash: ScramHash,
        user: &str,
        password: &Sensitive<String>,
    ) -> Result<Self, ProvisionError> {
        let mut connection = Self::connect(bootstrap, ca_pem).await?;
        connection.authenticate(hash, user, password).await?;
        Ok(connection)
    }

    /// `host:port` of the broker this connection reached.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Versions of `key` the broker announced.
    pub fn broker_versions(&self, key: ApiKey) -> Option<VersionRange> {
        self.api_versions.get(&(key as i16)).copied()
    }

    /// Highest version of `R` both sides speak.
    pub fn version<R: KafkaRequest>(&self) -> Result<i16, ProvisionError> {
        let broker = self.broker_versions(R::KEY).ok_or_else(|| {
            ProvisionError::Protocol(format!("{} does not offer {:?}", self.server, R::KEY))
        })?;
        let common = broker.intersect(&R::SUPPORTED);
        if common.is_empty() {
            return Err(ProvisionError::Protocol(format!(
                "{} speaks {:?} v{broker}, this client v{}",
                self.server,
                R::KEY,
                R::SUPPORTED
            )));
        }
        Ok(common.max)
    }

    /// Sends `request` at the highest common version and returns the broker's answer.
    pub async fn send<R: KafkaRequest>(
        &mut self,
        request: &R,
    ) -> Result<R::Response, ProvisionError> {
        let version = self.version::<R>()?;
        let body = self.exchange(request, version).await?;
        decode_body::<R>(body, version)
    }

    /// Writes one request and reads its response body, within [`REQUEST_TIMEOUT`].
    async fn exchange<R: KafkaRequest>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<Bytes, ProvisionError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let frame = encode_request(request, version, correlation_id)?;
        let server = self.server.clone();
        let stream = &mut self.stream;
        let io = async {
            stream.write_all(&frame).await.map_err(FrameError::Io)?;
            stream.flush().await.map_err(FrameError::Io)?;
            read_frame(stream, MAX_RESPONSE_BYTES).await
        };
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, io).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(FrameError::Io(e))) => {
                return Err(ProvisionError::Connect(format!(
                    "{server}: connection lost during {:?}: {e}",
                    R::KEY
                )));
            }
            Ok(Err(e @ FrameError::Size(_))) => {
                return Err(ProvisionError::Protocol(format!("{server}: {e}")));
            }
            Err(_) => {
                return Err(ProvisionError::Connect(format!(
                    "{server}: no {:?} response within {REQUEST_TIMEOUT:?}",
                    R::KEY
                )));
            }
        };
        response_body::<R>(response, version, correlation_id)
    }

    /// ApiVersions at our highest version; a broker that does not know it answers in v0 with
    /// UNSUPPORTED_VERSION and its own range, and the request is repeated within that range.
    async fn negotiate_versions(&mut self) -> Result<(), ProvisionError> {
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("bulwark"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut version = <ApiVersionsRequest as KafkaRequest>::SUPPORTED.max;
        loop {
            let body = self.exchange(&request, version).await?;
            let error_code = body
                .get(..2)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| {
                    ProvisionError::Protocol(format!("{}: empty ApiVersions response", self.server))
                })?;
            if error_code == ResponseError::UnsupportedVersion.code() && version > 0 {
                let fallback = decode_body::<ApiVersionsRequest>(body, 0)?;
                let broker_max = fallback
                    .api_keys
                    .iter()
                    .find(|k| k.api_key == ApiKey::ApiVersions as i16)
                    .map_or(0, |k| k.max_version);
                if broker_max >= version || broker_max < 0 {
                    return Err(ProvisionError::Protocol(format!(
                        "{} refused ApiVersions v{version} but announces v{broker_max}",
                        self.server
                    )));
                }
                version = broker_max;
                continue;
            }
            let response = decode_body::<ApiVersionsRequest>(body, version)?;
            if response.error_code != 0 {
                return Err(ProvisionError::Protocol(format!(
                    "{}: ApiVersions: {}",
                    self.server,
                    describe_error(response.error_code, None)
                )));
            }
            self.api_versions = response
                .api_keys
                .iter()
                .map(|k| {
                    (
                        k.api_key,
                        VersionRange {
                            min: k.min_version,
                            max: k.max_version,
                        },
                    )
                })
                .collect();
            tracing::debug!(server = %self.server, version, "ApiVersions negotiated");
            return Ok(());
        }
    }

    /// SaslHandshake then the SCRAM exchange in SaslAuthenticate requests. The server's final
    /// signature is checked: it proves the broker holds the admin's credential.
    pub async fn authenticate(
        &mut self,
        hash: ScramHash,
        user: &str,
        password: &Sensitive<String>,
    ) -> Result<(), ProvisionError> {
        let mechanism = hash.mechanism();
        let handshake = self
            .send(
                &SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(mechanism)),
            )
            .await?;
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(ProvisionError::AdminLogin(format!(
                "{} does not accept {mechanism} (it offers {}): {}",
                self.server,
                offered.join(", "),
                kafka_error_name(handshake.error_code)
            )));
        }
        let nonce = new_nonce()
            .ok_or_else(|| ProvisionError::Protocol("no randomness for the SCRAM nonce".into()))?;
        let mut scram = ScramClient::new(hash, user, password.clone(), nonce);
        let server_first = self
            .sasl_step(scram.client_first().into_bytes(), user)
            .await?;
        let client_final = scram
            .client_final(&server_first)
            .map_err(|e| scram_failure(&self.server, user, e))?;
        let server_final = self.sasl_step(client_final.into_bytes(), user).await?;
        scram
            .verify_server_final(&server_final)
            .map_err(|e| scram_failure(&self.server, user, e))?;
        tracing::debug!(server = %self.server, user, mechanism, "logged in");
        Ok(())
    }

    async fn sasl_step(
        &mut self,
        auth_bytes: Vec<u8>,
        user: &str,
    ) -> Result<String, ProvisionError> {
        let response = self
            .send(&SaslAuthenticateRequest::default().with_auth_bytes(auth_bytes.into()))
            .await?;
        if response.error_code != 0 {
            return Err(ProvisionError::AdminLogin(format!(
                "{} refused {user}: {}",
                self.server,
                describe_error(response.error_code, response.error_message.as_ref())
            )));
        }
        String::from_utf8(response.auth_bytes.to_vec()).map_err(|_| {
            ProvisionError::Protocol(format!("{}: SCRAM message is not UTF-8", self.server))
        })
    }
}

/// A refused SCRAM exchange: the broker's verdict or an unproven server is a failed login; a
/// message that breaks the exchange's rules is a protocol error.
fn scram_failure(server: &str, user: &str, e: ScramError) -> ProvisionError {
    let message = format!("{server} ({user}): {e}");
    match e {
        ScramError::Iterations(_) | ScramError::ServerError(_) | ScramError::BadServerSignature => {
            ProvisionError::AdminLogin(message)
        }
        ScramError::Malformed(_) | ScramError::NonceMismatch | ScramError::OutOfOrder => {
            ProvisionError::Protocol(message)
        }
    }
}

/// One change to one user's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CredentialChange<'a> {
    Upsert {
        user: &'a str,
        credential: &'a ScramCredential,
    },
    Delete {
        user: &'a str,
        hash: ScramHash,
    },
}

impl CredentialChange<'_> {
    fn user(&self) -> &str {
        match self {
            Self::Upsert { user, .. } | Self::Delete { user, .. } => user,
        }
    }

    fn hash(&self) -> ScramHash {
        match self {
            Self::Upsert { credential, .. } => credential.hash,
            Self::Delete { hash, .. } => *hash,
        }
    }
}

/// Checks the input against the plan and lists the changes: an upsertion per planned user,
/// then a deletion per removed credential.
fn planned_changes(input: &ProvisionInput) -> Result<Vec<CredentialChange<'_>>, ProvisionError> {
    let plan = &input.plan;
    let hash = kafka_mechanism(&plan.mechanism)?;
    parse_bootstrap(&plan.bootstrap_servers)?;
    let mut changes = Vec::new();
    let mut seen = BTreeSet::new();
    for user in &plan.users {
        if user.is_empty() {
            return Err(ProvisionError::Input(
                "a planned user has an empty name".into(),
            ));
        }
        if !seen.insert(user.as_str()) {
            continue;
        }
        let credential = input
            .credentials
            .get(user)
            .ok_or_else(|| ProvisionError::Input(format!("no credential for user {user:?}")))?;
        if credential.hash != hash {
            return Err(ProvisionError::Input(format!(
                "the credential of user {user:?} is {}, the plan's mechanism is {}",
                credential.hash.mechanism(),
                plan.mechanism
            )));
        }
        changes.push(CredentialChange::Upsert { user, credential });
    }
    let mut removed = BTreeSet::new();
    for RemovedCredential { name, mechanism } in &plan.remove {
        let removed_hash = kafka_mechanism(mechanism)?;
        if name.is_empty() {
            return Err(ProvisionError::Input(
                "a removed user has an empty name".into(),
            ));
        }
        if seen.contains(name.as_str()) && removed_hash == hash {
            return Err(ProvisionError::Input(format!(
                "user {name:?} is both registered and removed for {mechanism}"
            )));
        }
        if removed.insert((name.as_str(), removed_hash)) {
            changes.push(CredentialChange::Delete {
                user: name,
                hash: removed_hash,
            });
        }
    }
    Ok(changes)
}

/// The AlterUserScramCredentials requests for `changes`: the brokers refuse a user named twice
/// in one request (DUPLICATE_RESOURCE), so a user with several changes gets one per request.
fn alter_requests<'a>(
    changes: &[CredentialChange<'a>],
) -> Vec<(AlterUserScramCredentialsRequest, Vec<CredentialChange<'a>>)> {
    let mut rounds: Vec<Vec<CredentialChange<'a>>> = Vec::new();
    let mut per_user: BTreeMap<&str, usize> = BTreeMap::new();
    for change in changes {
        let round = per_user.entry(change.user()).or_default();
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(change.clone());
        *round += 1;
    }
    rounds
        .into_iter()
        .map(|round| {
            let mut request = AlterUserScramCredentialsRequest::default();
            for change in &round {
                let mechanism = mechanism_code(change.hash()).expect("checked by planned_changes");
                let name = StrBytes::from_string(change.user().to_string());
                match change {
                    CredentialChange::Upsert { credential, .. } => {
                        request.upsertions.push(
                            ScramCredentialUpsertion::default()
                                .with_name(name)
                                .with_mechanism(mechanism)
                                .with_iterations(credential.iterations as i32)
                                .with_salt(Bytes::copy_from_slice(&credential.salt))
                                .with_salted_password(Bytes::copy_from_slice(
                                    credential.salted_password.expose(),
                                )),
                        );
                    }
                    CredentialChange::Delete { .. } => {
                        request.deletions.push(
                            ScramCredentialDeletion::default()
                                .with_name(name)
                                .with_mechanism(mechanism),
                        );
                    }
                }
            }
            (request, round)
        })
        .collect()
}

/// Outcome of one change, from the broker's per-user result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeOutcome {
    Done,
    /// A deletion of a credential that did not exist: the wanted state already.
    AlreadyAbsent,
}

/// Matches the broker's per-user results to the changes of one request.
fn check_alter_response(
    changes: &[CredentialChange<'_>],
    response: &AlterUserScramCredentialsResponse,
) -> Result<Vec<ChangeOutcome>, ProvisionError> {
    changes
        .iter()
        .map(|change| {
            let user = change.user();
            let result = response
                .results
                .iter()
                .find(|r| r.user.as_str() == user)
                .ok_or_else(|| {
                    ProvisionError::Protocol(format!(
                        "AlterUserScramCredentials response has no result for user {user:?}"
                    ))
                })?;
            match (result.error_code, change) {
                (0, _) => Ok(ChangeOutcome::Done),
                (code, CredentialChange::Delete { .. })
                    if code == ResponseError::ResourceNotFound.code() =>
                {
                    Ok(ChangeOutcome::AlreadyAbsent)
                }
                (code, change) => Err(ProvisionError::Rejected(format!(
                    "{} of the {} credential of user {user:?} refused: {}",
                    match change {
                        CredentialChange::Upsert { .. } => "registration",
                        CredentialChange::Delete { .. } => "removal",
                    },
                    change.hash().mechanism(),
                    describe_error(code, result.error_message.as_ref())
                ))),
            }
        })
        .collect()
}

/// What DescribeUserScramCredentials shows that the changes have not reached yet; empty when
/// the broker lists every upserted credential and none of the deleted ones.
fn unconfirmed(
    changes: &[CredentialChange<'_>],
    response: &DescribeUserScramCredentialsResponse,
) -> Result<Vec<String>, ProvisionError> {
    if response.error_code != 0 {
        return Err(ProvisionError::Rejected(format!(
            "DescribeUserScramCredentials: {}",
            describe_error(response.error_code, response.error_message.as_ref())
        )));
    }
    let mut listed: BTreeMap<&str, Vec<(i8, i32)>> = BTreeMap::new();
    for result in &response.results {
        match result.error_code {
            0 => {
                listed.insert(
                    result.user.as_str(),
                    result
                        .credential_infos
                        .iter()
                        .map(|c| (c.mechanism, c.iterations))
                        .collect(),
                );
            }
            code if code == ResponseError::ResourceNotFound.code() => {
                listed.insert(result.user.as_str(), Vec::new());
            }
            code => {
                return Err(ProvisionError::Rejected(format!(
                    "describing user {:?}: {}",
                    result.user.as_str(),
                    describe_error(code, result.error_message.as_ref())
                )));
            }
        }
    }
    let mut missing = Vec::new();
    for change in changes {
        let user = change.user();
        let infos = listed.get(user).map(Vec::as_slice).unwrap_or_default();
        let code = mechanism_code(change.hash()).expect("checked by planned_changes");
        let mechanism = change.hash().mechanism();
        match change {
            CredentialChange::Upsert { credential, .. } => {
                if !infos.contains(&(code, credential.iterations as i32)) {
                    missing.push(format!("{user} ({mechanism}) not listed yet"));
                }
            }
            CredentialChange::Delete { .. } => {
                if infos.iter().any(|(m, _)| *m == code) {
                    missing.push(format!("{user} ({mechanism}) still listed"));
                }
            }
        }
    }
    Ok(missing)
}

/// Logs in as the admin, applies the plan and waits until the broker lists the result.
pub async fn provision_kafka(input: &ProvisionInput) -> Result<ProvisionSummary, ProvisionError> {
    let changes = planned_changes(input)?;
    let admin_hash = kafka_mechanism(&input.plan.mechanism)?;
    let mut connection = KafkaConnection::login(
        &input.plan.bootstrap_servers,
        input.ca_pem.as_deref(),
        admin_hash,
        &input.admin_user,
        &input.admin_password,
    )
    .await?;
    let mut summary = ProvisionSummary::default();
    if changes.is_empty() {
        return Ok(summary);
    }
    for (request, round) in alter_requests(&changes) {
        let response = connection.send(&request).await?;
        for (change, outcome) in round.iter().zip(check_alter_response(&round, &response)?) {
            let target = match (change, outcome) {
                (CredentialChange::Upsert { .. }, _) => &mut summary.registered,
                (CredentialChange::Delete { .. }, ChangeOutcome::Done) => &mut summary.removed,
                (CredentialChange::Delete { .. }, ChangeOutcome::AlreadyAbsent) => {
                    &mut summary.already_absent
                }
            };
            if !target.iter().any(|u| u == change.user()) {
                target.push(change.user().to_string());
            }
        }
    }
    confirm(&mut connection, &changes).await?;
    Ok(summary)
}

/// Polls DescribeUserScramCredentials until the broker lists what was altered.
async fn confirm(
    connection: &mut KafkaConnection,
    changes: &[CredentialChange<'_>],
) -> Result<(), ProvisionError> {
    let users: BTreeSet<&str> = changes.iter().map(CredentialChange::user).collect();
    let request = DescribeUserScramCredentialsRequest::default().with_users(Some(
        users
            .iter()
            .map(|u| UserName::default().with_name(StrBytes::from_string(u.to_string())))
            .collect(),
    ));
    let deadline = tokio::time::Instant::now() + CONFIRM_TIMEOUT;
    loop {
        let response = connection.send(&request).await?;
        let missing = unconfirmed(changes, &response)?;
        if missing.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ProvisionError::Rejected(format!(
                "{} accepted the changes but after {CONFIRM_TIMEOUT:?} still shows: {}",
                connection.server(),
                missing.join(", ")
            )));
        }
        tokio::time::sleep(CONFIRM_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
    use kafka_protocol::messages::describe_user_scram_credentials_response::{
        CredentialInfo, DescribeUserScramCredentialsResult,
    };

    fn plan(users: &[&str], remove: &[(&str, &str)]) -> UserPlan {
        UserPlan {
            bootstrap_servers: "kafka-0.kafka:9093,kafka-1.kafka:9093".into(),
            mechanism: "SCRAM-SHA-512".into(),
            users: users.iter().map(|u| u.to_string()).collect(),
            remove: remove
                .iter()
                .map(|(name, mechanism)| RemovedCredential {
                    name: name.to_string(),
                    mechanism: mechanism.to_string(),
                })
                .collect(),
        }
    }

    fn credential(hash: ScramHash, password: &str) -> ScramCredential {
        ScramCredential::derive(hash, password, b"0123456789abcdef".to_vec(), 4096)
    }

    fn input(plan: UserPlan) -> ProvisionInput {
        let credentials = plan
            .users
            .iter()
            .map(|u| (u.clone(), credential(ScramHash::Sha512, &format!("{u}-pw"))))
            .collect();
        ProvisionInput {
            plan,
            credentials,
            admin_user: "admin".into(),
            admin_password: Sensitive::new("admin-secret".into()),
            ca_pem: None,
        }
    }

    #[test]
    fn reasons_are_the_documented_ones() {
        let reasons: Vec<&str> = [
            ProvisionError::Input(String::new()),
            ProvisionError::Connect(String::new()),
            ProvisionError::Tls(String::new()),
            ProvisionError::AdminLogin(String::new()),
            ProvisionError::Rejected(String::new()),
            ProvisionError::Protocol(String::new()),
        ]
        .iter()
        .map(ProvisionError::reason)
        .collect();
        assert_eq!(
            reasons,
            [
                "InvalidInput",
                "ConnectFailed",
                "TLSFailed",
                "AdminLoginFailed",
                "RegistrationRejected",
                "ProtocolError"
            ]
        );
    }

    #[test]
    fn kafka_error_names_are_spelled_as_kafka_does() {
        assert_eq!(kafka_error_name(91), "RESOURCE_NOT_FOUND");
        assert_eq!(kafka_error_name(58), "SASL_AUTHENTICATION_FAILED");
        assert_eq!(kafka_error_name(93), "UNACCEPTABLE_CREDENTIAL");
        assert_eq!(kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
        assert_eq!(kafka_error_name(0), "NONE");
        assert_eq!(kafka_error_name(9999), "error code 9999");
        assert_eq!(
            describe_error(93, Some(&StrBytes::from_static_str(" too few iterations "))),
            "UNACCEPTABLE_CREDENTIAL (93): too few iterations"
        );
    }

    #[test]
    fn bootstrap_lists_are_parsed_and_bad_entries_named() {
        assert_eq!(
            parse_bootstrap(" a:9093, b.example:19093 ,[::1]:9094").unwrap(),
            [
                ("a".to_string(), 9093),
                ("b.example".to_string(), 19093),
                ("::1".to_string(), 9094)
            ]
        );
        for bad in [
            "",
            " , ",
            "a",
            "a:0",
            "a:x",
            ":9093",
            "::1:9093",
            "[::1:9093",
        ] {
            let err = parse_bootstrap(bad).unwrap_err();
            assert_eq!(err.reason(), "InvalidInput", "{bad:?}");
        }
        assert!(
            parse_bootstrap("a:9093,b")
                .unwrap_err()
                .to_string()
                .contains("\"b\"")
        );
        assert_eq!(display_server("::1", 1), "[::1]:1");
    }

    #[test]
    fn without_a_ca_bundle_nothing_can_be_verified() {
        let err = tls_config(None).unwrap_err();
        assert_eq!(err.reason(), "TLSFailed");
        assert!(err.to_string().contains(env::CA_FILE), "{err}");
        assert_eq!(
            tls_config(Some("not a pem")).unwrap_err().reason(),
            "TLSFailed"
        );
    }

    #[test]
    fn input_from_lookup_parses_plan_and_credentials_and_redacts() {
        let p = plan(&["alice", "bob"], &[("carol", "SCRAM-SHA-256")]);
        let alice = credential(ScramHash::Sha512, "alice-pw");
        let creds = format!(
            r#"{{"alice":"{}","bob":"{}","gone":"garbage"}}"#,
            alice.encode().expose(),
            credential(ScramHash::Sha512, "bob-pw").encode().expose()
        );
        let vars: BTreeMap<&str, String> = BTreeMap::from([
            (env::PLAN, serde_json::to_string(&p).unwrap()),
            (env::CREDENTIALS, creds.clone()),
            (env::ADMIN_USER, "admin".to_string()),
            (env::ADMIN_PASSWORD, "hunter2".to_string()),
        ]);
        let input = ProvisionInput::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(input.plan, p);
        assert_eq!(input.credentials["alice"], alice);
        assert!(!input.credentials.contains_key("gone"));
        assert_eq!(input.ca_pem, None);
        let debug = format!("{input:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains(&alice.encode().expose()[20..]), "{debug}");

        let mut missing = vars.clone();
        missing.remove(env::ADMIN_PASSWORD);
        let err = ProvisionInput::from_lookup(|k| missing.get(k).cloned()).unwrap_err();
        assert_eq!(err.reason(), "InvalidInput");
        assert!(err.to_string().contains(env::ADMIN_PASSWORD));

        let mut no_plan = vars.clone();
        no_plan.remove(env::PLAN);
        let err = ProvisionInput::from_lookup(|k| no_plan.get(k).cloned()).unwrap_err();
        assert!(err.to_string().contains(env::PLAN_FILE), "{err}");

        // A planned user's unreadable credential is refused, without echoing it.
        let mut broken = vars.clone();
        broken.insert(
            env::CREDENTIALS,
            r#"{"alice":"SCRAM-SHA-512$4096:c2FsdA==$c2VjcmV0LXNhbHRlZA=="}"#.into(),
        );
        let err = ProvisionInput::from_lookup(|k| broken.get(k).cloned()).unwrap_err();
        assert_eq!(err.reason(), "InvalidInput");
        assert!(err.to_string().contains("\"alice\""), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn input_from_files() {
        let dir = std::env::temp_dir().join(format!("bulwark-kafka-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = plan(&["alice"], &[]);
        let plan_file = dir.join("plan.json");
        let creds_file = dir.join("credentials.json");
        let ca_file = dir.join("ca.crt");
        std::fs::write(&plan_file, serde_json::to_string(&p).unwrap()).unwrap();
        let alice = credential(ScramHash::Sha512, "pw");
        std::fs::write(
            &creds_file,
            format!(r#"{{"alice":"{}"}}"#, alice.encode().expose()),
        )
        .unwrap();
        std::fs::write(&ca_file, "PEM").unwrap();
        let vars: BTreeMap<&str, String> = BTreeMap::from([
            (env::PLAN_FILE, plan_file.display().to_string()),
            (env::CREDENTIALS_FILE, creds_file.display().to_string()),
            (env::ADMIN_USER, "admin".to_string()),
            (env::ADMIN_PASSWORD, "pw".to_string()),
            (env::CA_FILE, ca_file.display().to_string()),
        ]);
        let input = ProvisionInput::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(input.plan, p);
        assert_eq!(input.credentials["alice"], alice);
        assert_eq!(input.ca_pem.as_deref(), Some("PEM"));

        let mut absent = vars.clone();
        absent.insert(env::CA_FILE, dir.join("nope").display().to_string());
        let err = ProvisionInput::from_lookup(|k| absent.get(k).cloned()).unwrap_err();
        assert!(err.to_string().contains(env::CA_FILE), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_are_checked_against_the_plan() {
        let ok = input(plan(
            &["alice", "bob", "alice"],
            &[("carol", "SCRAM-SHA-256")],
        ));
        let changes = planned_changes(&ok).unwrap();
        assert_eq!(
            changes.iter().map(|c| c.user()).collect::<Vec<_>>(),
            ["alice", "bob", "carol"]
        );

        let mut no_credential = input(plan(&["alice"], &[]));
        no_credential.credentials.clear();
        let err = planned_changes(&no_credential).unwrap_err();
        assert_eq!(err.reason(), "InvalidInput");
        assert!(err.to_string().contains("\"alice\""));

        let mut other_mechanism = input(plan(&["alice"], &[]));
        other_mechanism
            .credentials
            .insert("alice".into(), credential(ScramHash::Sha256, "pw"));
        assert!(
            planned_changes(&other_mechanism)
                .unwrap_err()
                .to_string()
                .contains("SCRAM-SHA-256")
        );

        let mut bad_mechanism = input(plan(&[], &[]));
        bad_mechanism.plan.mechanism = "PLAIN".into();
        assert_eq!(
            planned_changes(&bad_mechanism).unwrap_err().reason(),
            "InvalidInput"
        );
        let sha1 = input(plan(&[], &[("x", "SCRAM-SHA-1")]));
        assert_eq!(planned_changes(&sha1).unwrap_err().reason(), "InvalidInput");
        let both = input(plan(&["alice"], &[("alice", "SCRAM-SHA-512")]));
        assert_eq!(planned_changes(&both).unwrap_err().reason(), "InvalidInput");
        let mut bad_bootstrap = input(plan(&[], &[]));
        bad_bootstrap.plan.bootstrap_servers = "kafka".into();
        assert_eq!(
            planned_changes(&bad_bootstrap).unwrap_err().reason(),
            "InvalidInput"
        );
    }

    #[test]
    fn a_user_appears_once_per_request_and_carries_only_salted_material() {
        // alice moves from SCRAM-SHA-256 to SCRAM-SHA-512; bob leaves with both mechanisms.
        let i = input(plan(
            &["alice", "dave"],
            &[
                ("alice", "SCRAM-SHA-256"),
                ("bob", "SCRAM-SHA-512"),
                ("bob", "SCRAM-SHA-256"),
                ("bob", "SCRAM-SHA-256"),
            ],
        ));
        let changes = planned_changes(&i).unwrap();
        let requests = alter_requests(&changes);
        assert_eq!(requests.len(), 2);
        let names = |r: &AlterUserScramCredentialsRequest| {
            let mut n: Vec<String> = r
                .upsertions
                .iter()
                .map(|u| format!("+{}/{}", u.name.as_str(), u.mechanism))
                .chain(
                    r.deletions
                        .iter()
                        .map(|d| format!("-{}/{}", d.name.as_str(), d.mechanism)),
                )
                .collect();
            n.sort();
            n
        };
        assert_eq!(names(&requests[0].0), ["+alice/2", "+dave/2", "-bob/2"]);
        assert_eq!(names(&requests[1].0), ["-alice/1", "-bob/1"]);
        let alice = &requests[0].0.upsertions[0];
        let expected = &i.credentials["alice"];
        assert_eq!(alice.iterations, 4096);
        assert_eq!(&alice.salt[..], &expected.salt[..]);
        assert_eq!(
            &alice.salted_password[..],
            &expected.salted_password.expose()[..]
        );

        // The encoded request holds the salted password, never the plaintext.
        let wire = encode_request(&requests[0].0, 0, 7).unwrap();
        let text = String::from_utf8_lossy(&wire);
        assert!(!text.contains("alice-pw"));
        assert!(
            wire.windows(expected.salted_password.expose().len())
                .any(|w| w == &expected.salted_password.expose()[..])
        );
    }

    fn alter_response(results: &[(&str, i16)]) -> AlterUserScramCredentialsResponse {
        AlterUserScramCredentialsResponse::default().with_results(
            results
                .iter()
                .map(|(user, code)| {
                    AlterUserScramCredentialsResult::default()
                        .with_user(StrBytes::from_string(user.to_string()))
                        .with_error_code(*code)
                        .with_error_message((*code != 0).then(|| StrBytes::from_static_str("why")))
                })
                .collect(),
        )
    }

    #[test]
    fn per_user_results_decide_the_outcome() {
        let i = input(plan(&["alice"], &[("bob", "SCRAM-SHA-512")]));
        let changes = planned_changes(&i).unwrap();
        assert_eq!(
            check_alter_response(&changes, &alter_response(&[("alice", 0), ("bob", 0)])).unwrap(),
            [ChangeOutcome::Done, ChangeOutcome::Done]
        );
        assert_eq!(
            check_alter_response(&changes, &alter_response(&[("bob", 91), ("alice", 0)])).unwrap(),
            [ChangeOutcome::Done, ChangeOutcome::AlreadyAbsent]
        );
        // RESOURCE_NOT_FOUND on an upsertion is not "already done".
        let err = check_alter_response(&changes, &alter_response(&[("alice", 91), ("bob", 0)]))
            .unwrap_err();
        assert_eq!(err.reason(), "RegistrationRejected");
        let err = check_alter_response(&changes, &alter_response(&[("alice", 93), ("bob", 0)]))
            .unwrap_err();
        assert_eq!(err.reason(), "RegistrationRejected");
        let text = err.to_string();
        assert!(text.contains("\"alice\""), "{text}");
        assert!(text.contains("UNACCEPTABLE_CREDENTIAL (93): why"), "{text}");
        let err = check_alter_response(&changes, &alter_response(&[("alice", 0)])).unwrap_err();
        assert_eq!(err.reason(), "ProtocolError");
    }

    /// A user, its error code and its (mechanism, iterations) pairs.
    type Described<'a> = (&'a str, i16, &'a [(i8, i32)]);

    fn describe_response(users: &[Described<'_>]) -> DescribeUserScramCredentialsResponse {
        DescribeUserScramCredentialsResponse::default().with_results(
            users
                .iter()
                .map(|(user, code, infos)| {
                    DescribeUserScramCredentialsResult::default()
                        .with_user(StrBytes::from_string(user.to_string()))
                        .with_error_code(*code)
                        .with_credential_infos(
                            infos
                                .iter()
                                .map(|(m, i)| {
                                    CredentialInfo::default()
                                        .with_mechanism(*m)
                                        .with_iterations(*i)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    #[test]
    fn confirmation_needs_upserts_listed_and_deletions_gone() {
        let i = input(plan(&["alice"], &[("bob", "SCRAM-SHA-512")]));
        let changes = planned_changes(&i).unwrap();
        let done = describe_response(&[("alice", 0, &[(2, 4096)]), ("bob", 91, &[])]);
        assert!(unconfirmed(&changes, &done).unwrap().is_empty());
        let bob_other_mechanism = describe_response(&[
            ("alice", 0, &[(1, 4096), (2, 4096)]),
            ("bob", 0, &[(1, 8192)]),
        ]);
        assert!(
            unconfirmed(&changes, &bob_other_mechanism)
                .unwrap()
                .is_empty()
        );
        let pending = describe_response(&[("alice", 0, &[(2, 8192)]), ("bob", 0, &[(2, 4096)])]);
        assert_eq!(
            unconfirmed(&changes, &pending).unwrap(),
            [
                "alice (SCRAM-SHA-512) not listed yet",
                "bob (SCRAM-SHA-512) still listed"
            ]
        );
        let denied = DescribeUserScramCredentialsResponse::default().with_error_code(31);
        let err = unconfirmed(&changes, &denied).unwrap_err();
        assert!(
            err.to_string().contains("CLUSTER_AUTHORIZATION_FAILED"),
            "{err}"
        );
    }

    #[test]
    fn request_frames_carry_size_header_and_body() {
        let request = SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str("SCRAM-SHA-512"));
        let frame = encode_request(&request, 1, 42).unwrap();
        let size = i32::from_be_bytes(frame[..4].try_into().unwrap());
        assert_eq!(size as usize, frame.len() - 4);
        // Header v1: api key 17, version 1, correlation id 42, client id as an int16 string.
        assert_eq!(&frame[4..6], &17i16.to_be_bytes());
        assert_eq!(&frame[6..8], &1i16.to_be_bytes());
        assert_eq!(&frame[8..12], &42i32.to_be_bytes());
        assert_eq!(&frame[12..14], &(CLIENT_ID.len() as i16).to_be_bytes());
        assert_eq!(&frame[14..14 + CLIENT_ID.len()], CLIENT_ID.as_bytes());
        let body = &frame[14 + CLIENT_ID.len()..];
        assert_eq!(&body[..2], &13i16.to_be_bytes());
        assert_eq!(&body[2..], b"SCRAM-SHA-512");
        // A flexible request (header v2) ends its header with an empty tagged-field section.
        let frame = encode_request(&AlterUserScramCredentialsRequest::default(), 0, 1).unwrap();
        assert_eq!(frame[14 + CLIENT_ID.len()], 0);
    }

    #[test]
    fn response_headers_are_matched_by_correlation_id() {
        // SaslAuthenticate v2 has a flexible response header (v1: id + tagged fields).
        let mut frame = BytesMut::new();
        frame.put_i32(5);
        frame.put_u8(0);
        frame.put_slice(b"body");
        let body = response_body::<SaslAuthenticateRequest>(frame.clone().freeze(), 2, 5).unwrap();
        assert_eq!(&body[..], b"body");
        let err = response_body::<SaslAuthenticateRequest>(frame.freeze(), 2, 6).unwrap_err();
        assert_eq!(err.reason(), "ProtocolError");
        assert!(
            err.to_string().contains("correlation id 5, expected 6"),
            "{err}"
        );
        // v1 has the plain header: the tag byte is then part of the body.
        let mut frame = BytesMut::new();
        frame.put_i32(9);
        frame.put_u8(0);
        let body = response_body::<SaslAuthenticateRequest>(frame.freeze(), 1, 9).unwrap();
        assert_eq!(&body[..], [0]);
        let err = response_body::<SaslAuthenticateRequest>(Bytes::from_static(&[0, 0]), 1, 9)
            .unwrap_err();
        assert_eq!(err.reason(), "ProtocolError");
    }

    #[tokio::test]
    async fn frames_are_bounded_before_allocation() {
        let (mut client, mut server) = tokio::io::duplex(64);
        server
            .write_all(&[0, 0, 0, 3, b'a', b'b', b'c'])
            .await
            .unwrap();
        assert_eq!(&read_frame(&mut client, 16).await.unwrap()[..], b"abc");
        server
            .write_all(&0x7fff_ffffi32.to_be_bytes())
            .await
            .unwrap();
        assert!(matches!(
            read_frame(&mut client, MAX_RESPONSE_BYTES).await,
            Err(FrameError::Size(0x7fff_ffff))
        ));
        server.write_all(&(-1i32).to_be_bytes()).await.unwrap();
        assert!(matches!(
            read_frame(&mut client, MAX_RESPONSE_BYTES).await,
            Err(FrameError::Size(-1))
        ));
        server.write_all(&[0, 0, 0, 9, 1]).await.unwrap();
        drop(server);
        assert!(matches!(
            read_frame(&mut client, MAX_RESPONSE_BYTES).await,
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn scram_failures_map_to_login_or_protocol() {
        let reason = |e| scram_failure("k:9093", "admin", e).reason();
        assert_eq!(reason(ScramError::BadServerSignature), "AdminLoginFailed");
        assert_eq!(
            reason(ScramError::ServerError("x".into())),
            "AdminLoginFailed"
        );
        assert_eq!(reason(ScramError::Iterations(1)), "AdminLoginFailed");
        assert_eq!(reason(ScramError::NonceMismatch), "ProtocolError");
        assert_eq!(reason(ScramError::Malformed("no salt")), "ProtocolError");
        let err = scram_failure("k:9093", "admin", ScramError::BadServerSignature);
        assert!(
            err.to_string().starts_with("admin login: k:9093 (admin): "),
            "{err}"
        );
    }
}
