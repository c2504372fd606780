//! TLS of the node's listeners, and the certificates they use (rustls with the
//! `ring` provider; no OpenSSL).
//!
//! # Peer listener: mutual TLS
//! Node-to-node traffic (Raft RPCs, leader forwarding, snapshot install) is served
//! only to callers that present a certificate signed by the cluster CA. A node's
//! certificate names it with the DNS name `aof-node-<id>` ([`node_server_name`]),
//! so identity does not depend on addresses: a client dialing peer `<id>` checks
//! the server's certificate against the CA *for the name `aof-node-<id>`*, wherever
//! that peer runs now, and the server reads the caller's node id from the client
//! certificate ([`peer_node_id`], [`require_peer`]).
//!
//! - [`PeerTls::load`] reads `spec.cluster.peer_tls` (`ca_file`, `cert_file`,
//!   `key_file`, PEM) and checks them up front: the key belongs to the certificate,
//!   the certificate is signed by the CA, valid now, usable as TLS server *and*
//!   client certificate, and names exactly one node.
//! - [`PeerTls::server_config`] is the tonic server side (client certificate
//!   required), [`PeerTls::client_config`] / [`PeerTls::endpoint`] the client side
//!   for one peer. The endpoint must be an `https://` URI: tonic silently skips TLS
//!   for `http://` even with a TLS config, so prefer [`PeerTls::endpoint`].
//!
//! # Worker gRPC and HTTP listeners: optional server certificate
//! [`ServerIdentity::load`] reads a certificate chain and key; it gives a tonic
//! [`ServerTlsConfig`] without client authentication
//! ([`ServerIdentity::grpc_server_config`]) and a [`tokio_rustls::TlsAcceptor`]
//! for hand-written accept loops ([`ServerIdentity::acceptor`], ALPN `h2` and
//! `http/1.1`).
//!
//! # Certificates
//! [`init_certs`] creates a cluster CA and node certificates with rcgen (used by
//! `aofctl certs init`, and by tests): `ca.crt`/`ca.key` and `node<id>.crt` /
//! `node<id>.key` for ids `1..=nodes` ([`ca_cert_path`], [`node_cert_path`], ...).
//! With an existing CA it only issues the node certificates that are missing.
//!
//! The process-wide rustls crypto provider is set to `ring` on first use (unless
//! the program installed one before), so tonic's TLS never has to guess.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The DNS name a node's certificate carries, and that clients expect: `aof-node-<id>`.
pub const NODE_NAME_PREFIX: &str = "aof-node-";

/// How long a TLS handshake may take on a listener or when dialing a peer.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to run to get certificates; part of the error messages.
const CERTS_HINT: &str =
    "create the cluster's certificates with `aofctl certs init --dir ./data/certs` \
     (or fix the path in spec.cluster.peer_tls)";

/// `aof-node-<id>`: the name in node `id`'s certificate, checked by whoever dials it.
pub fn node_server_name(id: u64) -> String {
    format!("{NODE_NAME_PREFIX}{id}")
}

/// The node id named by a DNS name `aof-node-<id>` (canonical decimal only:
/// `aof-node-01` and `aof-node-+1` name no node).
fn node_id_of_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NODE_NAME_PREFIX)?;
    let id: u64 = digits.parse().ok()?;
    (id.to_string() == digits).then_some(id)
}

/// The node id a certificate names: the one `aof-node-<id>` DNS name among its
/// subject alternative names. `None` when it names no node, several different
/// nodes, has a malformed `aof-node-` name, or cannot be parsed. Does not check
/// the signature: use it only on a certificate that was verified (as rustls does
/// during the handshake).
pub fn node_id_of_cert(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x509.subject_alternative_name().ok()??;
    let mut found = None;
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
            // DNS names compare case-insensitively (so does the server-name check).
            let dns = dns.to_ascii_lowercase();
            if !dns.starts_with(NODE_NAME_PREFIX) {
                continue;
            }
            // A malformed node name: refuse rather than guess.
            let id = node_id_of_name(&dns)?;
            match found {
                None => found = Some(id),
                Some(prev) if prev == id => {}
                Some(_) => return None,
            }
        }
    }
    found
}

/// The node id of the caller of a request served with [`PeerTls::server_config`],
/// from the certificate it presented in the handshake (verified against the
/// cluster CA by then). `None` when the request did not come over TLS with a
/// client certificate, or the certificate names no single node.
pub fn peer_node_id<T>(req: &tonic::Request<T>) -> Option<u64> {
    let certs = req.peer_certs()?;
    node_id_of_cert(certs.first()?)
}

/// The caller's node id, from its node certificate; `Unauthenticated` without one.
/// Whether that node may call (is a member) is the peer gate's question
/// (`grpc::PeerGate`), asked against the applied membership.
pub fn require_peer<T>(req: &tonic::Request<T>) -> Result<u64, tonic::Status> {
    peer_node_id(req).ok_or_else(|| {
        tonic::Status::unauthenticated(
            "peer requests need a node certificate of the cluster CA (DNS name aof-node-<id>)",
        )
    })
}

/// The rustls crypto provider of the node: `ring`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs `ring` as the process-wide rustls provider unless one is installed
/// already (tonic's server side asks for the process default). Called by every
/// loader here; idempotent.
pub fn ensure_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Why TLS files could not be used. Every message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {source}; {hint}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error("{what} {} is not usable: {problem}; {hint}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        problem: String,
        hint: &'static str,
    },
    #[error(
        "the private key {} does not belong to the certificate {} ({reason}); \
         give the key file written together with that certificate",
        key.display(), cert.display()
    )]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error(
        "{} is not a valid node certificate of the CA in {}: {reason}; issue node \
         certificates from this CA with `aofctl certs init --dir DIR` (it reuses \
         DIR/ca.crt and DIR/ca.key), or point ca_file at the CA that signed it",
        cert.display(), ca.display()
    )]
    NotSignedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error(
        "{} names no node: a peer certificate carries exactly one DNS name \
         aof-node-<id>; create node certificates with `aofctl certs init`",
        cert.display()
    )]
    NoNodeId { cert: PathBuf },
    #[error(
        "{} is the certificate of node {found}, but this is node {expected}; use \
         node{expected}.crt / node{expected}.key in spec.cluster.peer_tls",
        cert.display()
    )]
    WrongNode {
        cert: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("TLS configuration from {}: {reason}", cert.display())]
    Config { cert: PathBuf, reason: String },
}

const SERVER_HINT: &str =
    "give a PEM certificate chain (cert_file) and its PEM private key (key_file)";

fn read_file(what: &'static str, path: &Path, hint: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
        hint,
    })
}

fn parse_certs(
    what: &'static str,
    path: &Path,
    pem: &[u8],
    hint: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |problem: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        problem,
        hint,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("it holds no PEM CERTIFICATE block".into()));
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| {
            bad(format!(
                "a CERTIFICATE block is not an X.509 certificate: {e}"
            ))
        })?;
    }
    Ok(certs)
}

fn parse_key(
    path: &Path,
    pem: &[u8],
    hint: &'static str,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        problem: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"),
        hint,
    })
}

fn certified_key(
    cert_path: &Path,
    key_path: &Path,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<CertifiedKey, TlsError> {
    CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &crypto_provider()).map_err(|e| {
        TlsError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: e.to_string(),
        }
    })
}

fn root_store(ca_certs: &[CertificateDer<'static>]) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    for ca in ca_certs {
        roots.add(ca.clone()).map_err(|e| {
            rustls::Error::General(format!("the CA certificate is not usable: {e}"))
        })?;
    }
    Ok(roots)
}

/// Checks that `chain` is a node certificate of the CA `ca_certs` valid now,
/// usable as client certificate and as server certificate for `aof-node-<id>`.
fn verify_node_chain(
    ca_certs: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    node_id: u64,
) -> Result<(), rustls::Error> {
    let roots = Arc::new(root_store(ca_certs)?);
    let now = UnixTime::now();
    let (leaf, intermediates) = chain.split_first().expect("a chain holds a certificate");
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), crypto_provider())
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    client.verify_client_cert(leaf, intermediates, now)?;
    let server =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crypto_provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let name = ServerName::try_from(node_server_name(node_id))
        .map_err(|e| rustls::Error::General(e.to_string()))?;
    server.verify_server_cert(leaf, intermediates, &name, &[], now)?;
    Ok(())
}

/// The peer listener's mutual TLS: the cluster CA and this node's certificate and key.
#[derive(Clone)]
pub struct PeerTls {
    node_id: u64,
    ca_pem: Vec<u8>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    cert_file: PathBuf,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerTls")
            .field("node_id", &self.node_id)
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads and checks the CA certificate(s) (`ca_file` may hold several, e.g.
    /// old and new CA while rotating), this node's certificate chain and its key.
    pub fn load(
        ca_file: impl AsRef<Path>,
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<PeerTls, TlsError> {
        ensure_crypto_provider();
        let (ca_file, cert_file, key_file) =
            (ca_file.as_ref(), cert_file.as_ref(), key_file.as_ref());
        let ca_pem = read_file("CA certificate", ca_file, CERTS_HINT)?;
        let cert_pem = read_file("node certificate", cert_file, CERTS_HINT)?;
        let key_pem = read_file("node key", key_file, CERTS_HINT)?;
        let ca_certs = parse_certs("CA certificate", ca_file, &ca_pem, CERTS_HINT)?;
        let chain = parse_certs("node certificate", cert_file, &cert_pem, CERTS_HINT)?;
        let key = parse_key(key_file, &key_pem, CERTS_HINT)?;
        certified_key(cert_file, key_file, &chain, &key)?;
        let node_id = node_id_of_cert(&chain[0]).ok_or_else(|| TlsError::NoNodeId {
            cert: cert_file.to_owned(),
        })?;
        verify_node_chain(&ca_certs, &chain, node_id).map_err(|e| TlsError::NotSignedByCa {
            cert: cert_file.to_owned(),
            ca: ca_file.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(PeerTls {
            node_id,
            ca_pem,
            cert_pem,
            key_pem,
            cert_file: cert_file.to_owned(),
        })
    }

    /// The node id this node's certificate names.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Fails unless the certificate is node `expected`'s (call it with the
    /// configured `node_id` at start).
    pub fn ensure_node_id(&self, expected: u64) -> Result<(), TlsError> {
        if self.node_id == expected {
            Ok(())
        } else {
            Err(TlsError::WrongNode {
                cert: self.cert_file.clone(),
                found: self.node_id,
                expected,
            })
        }
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The peer listener's TLS: this node's certificate, and a client certificate
    /// signed by the cluster CA required from every caller.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(false)
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// TLS for dialing node `peer_id`: trusts the cluster CA only, expects the
    /// server certificate to name `aof-node-<peer_id>`, and presents this node's
    /// certificate. Use it with an `https://` endpoint (see [`PeerTls::endpoint`]).
    pub fn client_config(&self, peer_id: u64) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
            .domain_name(node_server_name(peer_id))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// An endpoint for node `peer_id` at `addr` (`host:port`): `https://addr`
    /// with [`PeerTls::client_config`]. Add timeouts etc. as for any endpoint.
    pub fn endpoint(&self, peer_id: u64, addr: &str) -> Result<Endpoint, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://{addr}"))?.tls_config(self.client_config(peer_id))
    }
}

/// Verifies a server certificate against the cluster CA for whichever node it names
/// (discovery: the address is known, the id not yet), and records that id.
#[derive(Debug)]
struct AnyNodeVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    seen: Arc<std::sync::Mutex<Option<u64>>>,
}

impl rustls::client::danger::ServerCertVerifier for AnyNodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let id = node_id_of_cert(end_entity)
            .ok_or_else(|| rustls::Error::General("the certificate names no single aof-node-<id>".into()))?;
        let name = ServerName::try_from(node_server_name(id)).map_err(|e| rustls::Error::General(e.to_string()))?;
        let verified = self.inner.verify_server_cert(end_entity, intermediates, &name, ocsp, now)?;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

impl PeerTls {
    /// A channel to whichever node answers at `addr`, for discovery, when only the
    /// address is known: the server must present a certificate of the cluster CA
    /// naming one node (`aof-node-<id>`), and that id is stored in the returned
    /// slot once the handshake succeeded. This node presents its own certificate.
    pub fn any_node_channel(
        &self,
        addr: &str,
        connect_timeout: Duration,
    ) -> Result<(tonic::transport::Channel, Arc<std::sync::Mutex<Option<u64>>>), TlsError> {
        let hint = CERTS_HINT;
        let ca = parse_certs("CA certificate", &self.cert_file, &self.ca_pem, hint)?;
        let chain = parse_certs("node certificate", &self.cert_file, &self.cert_pem, hint)?;
        let key = parse_key(&self.cert_file, &self.key_pem, hint)?;
        let roots = Arc::new(root_store(&ca).map_err(|e| TlsError::Config { cert: self.cert_file.clone(), reason: e.to_string() })?);
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crypto_provider())
            .build()
            .map_err(|e| TlsError::Config { cert: self.cert_file.clone(), reason: e.to_string() })?;
        let seen: Arc<std::sync::Mutex<Option<u64>>> = Arc::default();
        let verifier = Arc::new(AnyNodeVerifier { inner, seen: seen.clone() });
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config { cert: self.cert_file.clone(), reason: e.to_string() })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config { cert: self.cert_file.clone(), reason: e.to_string() })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let target = addr.to_string();
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| TlsError::Config { cert: self.cert_file.clone(), reason: format!("bad address {addr:?}: {e}") })?
            .connect_timeout(connect_timeout)
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let (connector, target) = (connector.clone(), target.clone());
                async move {
                    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&target))
                        .await
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
                    tcp.set_nodelay(true)?;
                    let sni = ServerName::try_from("aof-node-discovery").expect("a valid DNS name");
                    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(sni, tcp))
                        .await
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }));
        Ok((channel, seen))
    }
}

/// A server certificate and key for a listener without client authentication
/// (the worker gRPC listener, the HTTP listeners).
#[derive(Clone)]
pub struct ServerIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    cert_file: PathBuf,
    rustls: Arc<ServerConfig>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_file", &self.cert_file)
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Reads a PEM certificate chain (leaf first) and its PEM private key, and
    /// checks that they belong together.
    pub fn load(
        cert_file: impl AsRef<Path>,
        key_file: impl AsRef<Path>,
    ) -> Result<ServerIdentity, TlsError> {
        ensure_crypto_provider();
        let (cert_file, key_file) = (cert_file.as_ref(), key_file.as_ref());
        let cert_pem = read_file("certificate", cert_file, SERVER_HINT)?;
        let key_pem = read_file("private key", key_file, SERVER_HINT)?;
        let chain = parse_certs("certificate", cert_file, &cert_pem, SERVER_HINT)?;
        let key = parse_key(key_file, &key_pem, SERVER_HINT)?;
        certified_key(cert_file, key_file, &chain, &key)?;
        let config_error = |e: rustls::Error| TlsError::Config {
            cert: cert_file.to_owned(),
            reason: e.to_string(),
        };
        let mut config = ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(config_error)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(config_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerIdentity {
            cert_pem,
            key_pem,
            cert_file: cert_file.to_owned(),
            rustls: Arc::new(config),
        })
    }

    /// tonic TLS for a gRPC listener (no client certificate asked for).
    pub fn grpc_server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The rustls server configuration (ALPN `h2`, `http/1.1`).
    pub fn rustls_config(&self) -> Arc<ServerConfig> {
        self.rustls.clone()
    }

    /// An acceptor that wraps accepted TCP streams in TLS, for an accept loop
    /// serving HTTP/1.1 and HTTP/2 (e.g. hyper-util's auto builder). Bound the
    /// handshake with [`HANDSHAKE_TIMEOUT`] in the loop.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.rustls.clone())
    }
}

// ---------------------------------------------------------------------------
// Certificate generation (`aofctl certs init`)
// ---------------------------------------------------------------------------

/// The most node certificates one [`init_certs`] call writes.
pub const MAX_NODES: u64 = 1000;

/// `DIR/ca.crt`: the cluster CA certificate (every node's `ca_file`).
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.crt")
}

/// `DIR/ca.key`: the CA's private key; needed only to issue node certificates.
pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// `DIR/node<id>.crt`: node `id`'s certificate.
pub fn node_cert_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}.crt"))
}

/// `DIR/node<id>.key`: node `id`'s private key.
pub fn node_key_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node{id}.key"))
}

/// What [`init_certs`] creates.
#[derive(Clone, Debug)]
pub struct CertsInit {
    /// Where the files go (created if missing).
    pub dir: PathBuf,
    /// Node certificates for ids `1..=nodes`.
    pub nodes: u64,
    /// More subject alternative names for every node certificate (DNS names or IP
    /// addresses), besides `aof-node-<id>`, `localhost` and `127.0.0.1`.
    pub extra_sans: Vec<String>,
    /// Replace existing files: a new CA and new certificates for all `nodes`.
    pub force: bool,
    /// Validity of new certificates, in days from now.
    pub valid_days: u32,
}

impl CertsInit {
    /// Five nodes, no extra names, no overwriting, valid for ten years.
    pub fn new(dir: impl Into<PathBuf>) -> CertsInit {
        CertsInit {
            dir: dir.into(),
            nodes: 5,
            extra_sans: Vec::new(),
            force: false,
            valid_days: 3650,
        }
    }
}

/// What [`init_certs`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertsReport {
    pub dir: PathBuf,
    /// A new CA was created (`false`: the existing `ca.crt`/`ca.key` issued the
    /// new node certificates).
    pub ca_created: bool,
    /// Node ids whose certificate and key were written.
    pub issued: Vec<u64>,
    /// Node ids in `1..=nodes` whose existing files were left as they were.
    pub kept: Vec<u64>,
    /// Every file written, in order.
    pub written: Vec<PathBuf>,
}

/// Why [`init_certs`] wrote nothing (or stopped part-way, for IO errors).
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("the number of nodes must be between 1 and {MAX_NODES}, not {0}")]
    NodeCount(u64),
    #[error("invalid extra name {san:?}: {reason}")]
    BadSan { san: String, reason: String },
    #[error(
        "refusing to overwrite {}; pass --force to replace all certificates (a new CA: every \
         node then needs its new files), or raise --nodes to add nodes signed by the existing CA",
        list_paths(files)
    )]
    Exists { files: Vec<PathBuf> },
    #[error(
        "{} already holds the CA and the certificates of nodes 1..={nodes}; refusing to \
         overwrite them: pass --force to replace them all (a new CA: every node then needs its \
         new files), or raise --nodes to add nodes signed by this CA",
        dir.display()
    )]
    NothingMissing { dir: PathBuf, nodes: u64 },
    #[error(
        "{} exists but {} does not: both are needed to issue node certificates; restore the \
         missing file, or pass --force to create a new CA",
        present.display(), missing.display()
    )]
    PartialCa { present: PathBuf, missing: PathBuf },
    #[error(
        "the existing CA ({}) cannot issue certificates: {reason}; restore ca.crt and ca.key, \
         or pass --force to create a new CA",
        path.display()
    )]
    BadCa { path: PathBuf, reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

fn list_paths(files: &[PathBuf]) -> String {
    files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates the cluster CA (`ca.crt`, `ca.key`) and node certificates
/// (`node<id>.crt`, `node<id>.key`, keys mode 0600) in `opts.dir`.
///
/// Node certificates carry the DNS names `aof-node-<id>` and `localhost`, the IP
/// 127.0.0.1 and `opts.extra_sans`, and serve as TLS server and client
/// certificates. Without `force`:
/// - with no CA there: creates the CA and every node's files, and refuses if any
///   node file of `1..=nodes` exists already;
/// - with `ca.crt` and `ca.key` there: issues, from that CA, the nodes whose
///   `.crt` and `.key` are both missing (so raising `nodes` adds nodes), and refuses
///   if one of a node's two files exists alone or nothing is missing.
///
/// With `force`: a new CA and all nodes' files, replacing what is there.
pub fn init_certs(opts: &CertsInit) -> Result<CertsReport, CertsError> {
    if opts.nodes == 0 || opts.nodes > MAX_NODES {
        return Err(CertsError::NodeCount(opts.nodes));
    }
    let extra = parse_extra_sans(&opts.extra_sans)?;
    let dir = &opts.dir;
    let (ca_crt, ca_key) = (ca_cert_path(dir), ca_key_path(dir));
    let ids = 1..=opts.nodes;

    // Decide everything before writing anything.
    let mut kept = Vec::new();
    let mut to_issue = Vec::new();
    let existing_ca = if opts.force {
        to_issue.extend(ids);
        None
    } else {
        match (ca_crt.exists(), ca_key.exists()) {
            (true, false) => {
                return Err(CertsError::PartialCa {
                    present: ca_crt,
                    missing: ca_key,
                })
            }
            (false, true) => {
                return Err(CertsError::PartialCa {
                    present: ca_key,
                    missing: ca_crt,
                })
            }
            (false, false) => {
                let existing: Vec<PathBuf> = ids
                    .flat_map(|id| [node_cert_path(dir, id), node_key_path(dir, id)])
                    .filter(|p| p.exists())
                    .collect();
                if !existing.is_empty() {
                    return Err(CertsError::Exists { files: existing });
                }
                to_issue.extend(1..=opts.nodes);
                None
            }
            (true, true) => {
                let mut lone = Vec::new();
                for id in ids {
                    let (crt, key) = (node_cert_path(dir, id), node_key_path(dir, id));
                    match (crt.exists(), key.exists()) {
                        (true, true) => kept.push(id),
                        (false, false) => to_issue.push(id),
                        (true, false) => lone.push(crt),
                        (false, true) => lone.push(key),
                    }
                }
                if !lone.is_empty() {
                    return Err(CertsError::Exists { files: lone });
                }
                if to_issue.is_empty() {
                    return Err(CertsError::NothingMissing {
                        dir: dir.clone(),
                        nodes: opts.nodes,
                    });
                }
                Some(load_ca(&ca_crt, &ca_key)?)
            }
        }
    };

    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::days(1);
    let not_after = now + time::Duration::days(i64::from(opts.valid_days.max(1)));

    let mut written = Vec::new();
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.clone(),
        source,
    })?;
    let ca_created = existing_ca.is_none();
    let ca = match existing_ca {
        Some(ca) => ca,
        None => {
            let ca = new_ca(not_before, not_after)?;
            write_file(&ca_key, ca.key.serialize_pem().as_bytes(), 0o600)?;
            written.push(ca_key.clone());
            write_file(&ca_crt, ca.cert_pem.as_bytes(), 0o644)?;
            written.push(ca_crt.clone());
            ca
        }
    };
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.cert_der, &ca.key)?;
    for &id in &to_issue {
        let key = rcgen::KeyPair::generate()?;
        let params = node_params(id, &extra, not_before, not_after)?;
        let cert = params.signed_by(&key, &issuer)?;
        // A CA whose key does not match its certificate issues certificates that
        // nobody accepts: check every new one against the CA before writing it.
        verify_node_chain(
            std::slice::from_ref(&ca.cert_der),
            std::slice::from_ref(cert.der()),
            id,
        )
        .map_err(|e| CertsError::BadCa {
            path: ca_crt.clone(),
            reason: format!("a certificate it issued does not verify: {e}"),
        })?;
        let (crt_path, key_path) = (node_cert_path(dir, id), node_key_path(dir, id));
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        written.push(key_path);
        write_file(&crt_path, cert.pem().as_bytes(), 0o644)?;
        written.push(crt_path);
    }
    Ok(CertsReport {
        dir: dir.clone(),
        ca_created,
        issued: to_issue,
        kept,
        written,
    })
}

/// A CA able to issue: its certificate and key.
struct Ca {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: rcgen::KeyPair,
}

fn new_ca(
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<Ca, CertsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "aof-cluster");
    dn.push(rcgen::DnType::CommonName, "aof-cluster CA");
    params.distinguished_name = dn;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key,
    })
}

fn load_ca(crt: &Path, key_path: &Path) -> Result<Ca, CertsError> {
    let bad = |path: &Path, reason: String| CertsError::BadCa {
        path: path.to_owned(),
        reason,
    };
    let cert_pem = std::fs::read_to_string(crt).map_err(|e| bad(crt, e.to_string()))?;
    let key_pem = std::fs::read_to_string(key_path).map_err(|e| bad(key_path, e.to_string()))?;
    let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| bad(crt, format!("no PEM certificate: {e}")))?;
    let key = rcgen::KeyPair::from_pem(&key_pem)
        .map_err(|e| bad(key_path, format!("no usable PEM private key: {e}")))?;
    let (_, x509) = x509_parser::parse_x509_certificate(cert_der.as_ref())
        .map_err(|e| bad(crt, format!("not an X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(bad(crt, "it is not a CA certificate".into()));
    }
    use rcgen::PublicKeyData as _;
    if x509.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(bad(
            key_path,
            format!("it is not the key of {}", crt.display()),
        ));
    }
    Ok(Ca {
        cert_der: cert_der.clone(),
        cert_pem,
        key,
    })
}

fn random_serial() -> Result<rcgen::SerialNumber, CertsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| CertsError::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and 16 bytes long
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

fn parse_extra_sans(sans: &[String]) -> Result<Vec<rcgen::SanType>, CertsError> {
    let mut out: Vec<rcgen::SanType> = Vec::new();
    for raw in sans {
        let san = raw.trim();
        let bad = |reason: &str| CertsError::BadSan {
            san: raw.clone(),
            reason: reason.to_owned(),
        };
        let parsed = if let Ok(ip) = san.parse::<IpAddr>() {
            rcgen::SanType::IpAddress(ip)
        } else {
            if san.to_ascii_lowercase().starts_with(NODE_NAME_PREFIX) {
                return Err(bad(
                    "aof-node-<id> names identify nodes and are set per node",
                ));
            }
            ServerName::try_from(san)
                .ok()
                .filter(|n| matches!(n, ServerName::DnsName(_)))
                .ok_or_else(|| bad("not an IP address or a DNS name"))?;
            rcgen::SanType::DnsName(san.try_into().map_err(|_| bad("not an ASCII DNS name"))?)
        };
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

fn node_params(
    id: u64,
    extra: &[rcgen::SanType],
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> Result<rcgen::CertificateParams, CertsError> {
    let name = node_server_name(id);
    let mut params = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "aof-cluster");
    dn.push(rcgen::DnType::CommonName, name.as_str());
    params.distinguished_name = dn;
    let mut sans = vec![
        rcgen::SanType::DnsName(name.try_into()?),
        rcgen::SanType::DnsName("localhost".try_into()?),
        rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    for san in extra {
        if !sans.contains(san) {
            sans.push(san.clone());
        }
    }
    params.subject_alt_names = sans;
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Writes `contents` to `path` through a temporary file and a rename, with
/// permissions `mode` (unix), replacing an existing file.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertsError> {
    let io = |source| CertsError::Io {
        path: path.to_owned(),
        source,
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(mode);
        let file = options.open(&tmp).map_err(io)?;
        // Exactly `mode`, whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
        write_and_rename(file, contents, &tmp, path).map_err(io)
    }
    #[cfg(not(unix))]
    {
        let _ = mode;
        let file = options.open(&tmp).map_err(io)?;
        write_and_rename(file, contents, &tmp, path).map_err(io)
    }
}

fn write_and_rename(
    mut file: std::fs::File,
    contents: &[u8],
    tmp: &Path,
    path: &Path,
) -> std::io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests;
