//! Real TLS handshakes on 127.0.0.1 (tonic and hyper) with certificates made by
//! [`init_certs`], and the certificate files `init_certs` writes.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::*;

/// Bound of every network step of these tests (they finish in milliseconds).
const STEP: Duration = Duration::from_secs(20);

fn make_certs(nodes: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CertsInit::new(dir.path());
    opts.nodes = nodes;
    init_certs(&opts).unwrap();
    dir
}

fn peer(dir: &Path, id: u64) -> PeerTls {
    PeerTls::load(
        ca_cert_path(dir),
        node_cert_path(dir, id),
        node_key_path(dir, id),
    )
    .unwrap()
}

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// A gRPC health service over `tls`, recording for each request that got
/// through the node id [`peer_node_id`] saw.
struct GrpcServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<u64>>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_grpc(tls: ServerTlsConfig) -> GrpcServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let svc = InterceptedService::new(health, move |req: tonic::Request<()>| {
        record.lock().unwrap().push(peer_node_id(&req));
        if peer_node_id(&req).is_some() {
            require_peer(&req)?;
        }
        Ok(req)
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder().tls_config(tls).unwrap().add_service(svc);
    tokio::spawn(async move {
        server
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    GrpcServer {
        addr,
        seen,
        stop: Some(stop),
    }
}

/// One health check through `endpoint`: `Err` with the error chain when the
/// connection or the call fails.
async fn check(endpoint: Endpoint) -> Result<(), String> {
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("connect: {}", chain(&e)))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map_err(|s| format!("call: {:?}: {}", s.code(), chain(&s)))?;
        Ok(())
    };
    tokio::time::timeout(STEP, call)
        .await
        .map_err(|_| "timed out".to_string())?
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn https(addr: SocketAddr) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}")).unwrap()
}

#[tokio::test]
async fn a_member_certificate_is_accepted_and_names_the_caller() {
    let certs = make_certs(3);
    let server = serve_grpc(peer(certs.path(), 1).server_config()).await;
    let client = peer(certs.path(), 2);
    check(client.endpoint(1, &server.addr.to_string()).unwrap())
        .await
        .unwrap();
    let client3 = peer(certs.path(), 3);
    check(client3.endpoint(1, &server.addr.to_string()).unwrap())
        .await
        .unwrap();
    assert_eq!(*server.seen.lock().unwrap(), vec![Some(2), Some(3)]);
}

#[tokio::test]
async fn a_client_without_a_certificate_fails_the_handshake() {
    let certs = make_certs(2);
    let server = serve_grpc(peer(certs.path(), 1).server_config()).await;
    // Trusts the right CA and expects the right name, but presents no certificate.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_cert_path(certs.path()))))
        .domain_name(node_server_name(1));
    let err = check(https(server.addr).tls_config(tls).unwrap())
        .await
        .unwrap_err();
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "a request got through: {err}"
    );
    // The same server answers a member (the refusal is about the certificate).
    check(
        peer(certs.path(), 2)
            .endpoint(1, &server.addr.to_string())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(*server.seen.lock().unwrap(), vec![Some(2)]);
}

#[tokio::test]
async fn a_certificate_of_another_ca_fails_the_handshake() {
    let certs = make_certs(2);
    let other = make_certs(2);
    let server = serve_grpc(peer(certs.path(), 1).server_config()).await;
    // Trusts the cluster CA, but its own certificate (aof-node-2) is another CA's.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_cert_path(certs.path()))))
        .identity(Identity::from_pem(
            read(node_cert_path(other.path(), 2)),
            read(node_key_path(other.path(), 2)),
        ))
        .domain_name(node_server_name(1));
    let err = check(https(server.addr).tls_config(tls).unwrap())
        .await
        .unwrap_err();
    assert!(
        server.seen.lock().unwrap().is_empty(),
        "a request got through: {err}"
    );
    // And a client of the other CA does not accept the cluster's server either.
    let err = check(
        peer(other.path(), 2)
            .endpoint(1, &server.addr.to_string())
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
    assert!(server.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn dialing_the_wrong_node_id_fails() {
    let certs = make_certs(3);
    let server = serve_grpc(peer(certs.path(), 1).server_config()).await;
    let client = peer(certs.path(), 2);
    // Node 1 is at this address, but the client means to reach node 3.
    let err = check(client.endpoint(3, &server.addr.to_string()).unwrap())
        .await
        .unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    assert!(server.seen.lock().unwrap().is_empty());
    check(client.endpoint(1, &server.addr.to_string()).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn the_worker_listener_takes_a_server_certificate_without_client_auth() {
    let certs = make_certs(1);
    let identity = ServerIdentity::load(
        node_cert_path(certs.path(), 1),
        node_key_path(certs.path(), 1),
    )
    .unwrap();
    let server = serve_grpc(identity.grpc_server_config()).await;
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_cert_path(certs.path()))))
        .domain_name("localhost");
    check(https(server.addr).tls_config(tls).unwrap())
        .await
        .unwrap();
    // Served over TLS, and the caller is anonymous.
    assert_eq!(*server.seen.lock().unwrap(), vec![None]);
    let plaintext = Endpoint::from_shared(format!("http://{}", server.addr)).unwrap();
    assert!(check(plaintext).await.is_err());
    assert_eq!(server.seen.lock().unwrap().len(), 1);
}

/// Serves `GET /health` → `ok` over TLS with `acceptor`, with a hand-written
/// accept loop (as the HTTP listeners do). Stops when the returned sender drops.
async fn serve_https(acceptor: tokio_rustls::TlsAcceptor) -> (SocketAddr, oneshot::Sender<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => tcp,
                    Err(_) => continue,
                },
                _ = &mut stopped => return,
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

/// `GET /health` over HTTPS/1.1 trusting only `ca_pem`, for server name `name`.
async fn https_get(addr: SocketAddr, ca_pem: &[u8], name: &str) -> Result<(u16, String), String> {
    use hyper_util::rt::TokioIo;
    let call = async {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(ca.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(name.to_owned()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("handshake: {}", chain(&e)))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/health")
            .header("host", name)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(axum::body::Body::new(resp.into_body()), 1 << 16)
            .await
            .map_err(|e| e.to_string())?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(STEP, call)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test]
async fn https_through_the_acceptor() {
    let certs = make_certs(1);
    let identity = ServerIdentity::load(
        node_cert_path(certs.path(), 1),
        node_key_path(certs.path(), 1),
    )
    .unwrap();
    let (addr, _stop) = serve_https(identity.acceptor()).await;
    let ca = read(ca_cert_path(certs.path()));
    for name in ["localhost", "127.0.0.1", "aof-node-1"] {
        assert_eq!(
            https_get(addr, &ca, name).await,
            Ok((200, "ok".to_string())),
            "{name}"
        );
    }
    let err = https_get(addr, &ca, "elsewhere.example").await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    let other = make_certs(1);
    let err = https_get(addr, &read(ca_cert_path(other.path())), "localhost")
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer") || err.contains("BadSignature"),
        "{err}"
    );
}

#[test]
fn load_names_the_file_and_the_remedy() {
    let certs = make_certs(2);
    let dir = certs.path();
    let missing = dir.join("nope.crt");
    let err = PeerTls::load(ca_cert_path(dir), &missing, node_key_path(dir, 1)).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TlsError::Read { .. }), "{msg}");
    assert!(
        msg.contains("nope.crt") && msg.contains("aofctl certs init --dir ./data/certs"),
        "{msg}"
    );

    // A key file holding a certificate.
    let err = PeerTls::load(
        ca_cert_path(dir),
        node_cert_path(dir, 1),
        node_cert_path(dir, 1),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    // A certificate file holding a key.
    let err = PeerTls::load(
        ca_cert_path(dir),
        node_key_path(dir, 1),
        node_key_path(dir, 1),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err}");

    let err = PeerTls::load(
        ca_cert_path(dir),
        node_cert_path(dir, 1),
        node_key_path(dir, 2),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("node2.key"), "{err}");

    let other = make_certs(1);
    let err = PeerTls::load(
        ca_cert_path(dir),
        node_cert_path(other.path(), 1),
        node_key_path(other.path(), 1),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");

    let tls = peer(dir, 2);
    assert_eq!(tls.node_id(), 2);
    tls.ensure_node_id(2).unwrap();
    let err = tls.ensure_node_id(1).unwrap_err();
    assert!(
        err.to_string().contains("node 2") && err.to_string().contains("node1.crt"),
        "{err}"
    );

    // ServerIdentity checks that key and certificate belong together.
    let err = ServerIdentity::load(node_cert_path(dir, 1), node_key_path(dir, 2)).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
}

/// A certificate signed by the CA in `dir` with exactly the DNS names `names`.
fn ca_signed_cert(dir: &Path, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
    let ca = load_ca(&ca_cert_path(dir), &ca_key_path(dir)).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca.cert_der, &ca.key).unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert, key)
}

#[test]
fn the_node_id_comes_from_one_canonical_aof_node_name() {
    let certs = make_certs(1);
    let dir = certs.path();
    let id = |names: &[&str]| node_id_of_cert(ca_signed_cert(dir, names).0.der());
    assert_eq!(id(&["aof-node-7", "localhost"]), Some(7));
    assert_eq!(
        id(&["localhost", "aof-node-18446744073709551615"]),
        Some(u64::MAX)
    );
    assert_eq!(id(&["aof-node-7", "aof-node-7"]), Some(7));
    assert_eq!(id(&["localhost"]), None);
    assert_eq!(id(&["aof-node-1", "aof-node-2"]), None);
    assert_eq!(id(&["aof-node-01"]), None);
    assert_eq!(id(&["aof-node-1", "aof-node-x"]), None);
    assert_eq!(id(&["aof-node-"]), None);
    assert_eq!(id(&["AOF-Node-4"]), Some(4));
    assert_eq!(id(&["aof-node-4", "AOF-NODE-5"]), None);
    assert_eq!(node_id_of_cert(&CertificateDer::from(vec![1, 2, 3])), None);
    let on_disk = CertificateDer::from_pem_slice(&read(node_cert_path(dir, 1))).unwrap();
    assert_eq!(node_id_of_cert(&on_disk), Some(1));

    // A CA-signed certificate that names no node is refused as a peer certificate.
    let (cert, key) = ca_signed_cert(dir, &["localhost"]);
    let (crt_path, key_path) = (dir.join("anon.crt"), dir.join("anon.key"));
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let err = PeerTls::load(ca_cert_path(dir), &crt_path, &key_path).unwrap_err();
    assert!(matches!(err, TlsError::NoNodeId { .. }), "{err}");
}

#[cfg(unix)]
fn mode(path: PathBuf) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_a_ca_and_node_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let mut opts = CertsInit::new(&dir);
    opts.extra_sans = vec!["node.example".into(), "10.1.2.3".into(), "localhost".into()];
    let report = init_certs(&opts).unwrap();
    assert!(report.ca_created);
    assert_eq!(report.issued, vec![1, 2, 3, 4, 5]);
    assert!(report.kept.is_empty());
    assert_eq!(report.written.len(), 2 + 2 * 5);
    for path in &report.written {
        assert!(path.is_file(), "{}", path.display());
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(ca_key_path(&dir)), 0o600);
        assert_eq!(mode(ca_cert_path(&dir)), 0o644);
        for id in 1..=5 {
            assert_eq!(mode(node_key_path(&dir, id)), 0o600);
            assert_eq!(mode(node_cert_path(&dir, id)), 0o644);
        }
    }
    let ca = CertificateDer::pem_slice_iter(&read(ca_cert_path(&dir)))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    for id in 1..=5 {
        assert_eq!(peer(&dir, id).node_id(), id);
        // Server names a client may use besides aof-node-<id>.
        let leaf = CertificateDer::from_pem_slice(&read(node_cert_path(&dir, id))).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(&ca).unwrap()),
            crypto_provider(),
        )
        .build()
        .unwrap();
        for name in ["localhost", "127.0.0.1", "node.example", "10.1.2.3"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                .unwrap_or_else(|e| panic!("node {id}, {name:?}: {e}"));
        }
        let wrong = ServerName::try_from(node_server_name(id + 1)).unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], UnixTime::now())
            .is_err());
    }
}

#[test]
fn init_refuses_to_overwrite_and_adds_missing_nodes_from_the_existing_ca() {
    let certs = make_certs(5);
    let dir = certs.path();
    let before: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let err = init_certs(&CertsInit::new(dir)).unwrap_err();
    assert!(
        matches!(err, CertsError::NothingMissing { nodes: 5, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("--force"), "{err}");
    let after: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(before, after);

    let ca_before = read(ca_cert_path(dir));
    let node1_before = read(node_cert_path(dir, 1));
    let mut six = CertsInit::new(dir);
    six.nodes = 6;
    let report = init_certs(&six).unwrap();
    assert!(!report.ca_created);
    assert_eq!(report.issued, vec![6]);
    assert_eq!(report.kept, vec![1, 2, 3, 4, 5]);
    assert_eq!(
        report.written,
        vec![node_key_path(dir, 6), node_cert_path(dir, 6)]
    );
    assert_eq!(read(ca_cert_path(dir)), ca_before);
    assert_eq!(read(node_cert_path(dir, 1)), node1_before);
    assert_eq!(peer(dir, 6).node_id(), 6);
    #[cfg(unix)]
    assert_eq!(mode(node_key_path(dir, 6)), 0o600);

    // One file of a pair alone is not replaced.
    std::fs::remove_file(node_key_path(dir, 3)).unwrap();
    let err = init_certs(&six).unwrap_err();
    match &err {
        CertsError::Exists { files } => assert_eq!(files, &vec![node_cert_path(dir, 3)]),
        other => panic!("{other}"),
    }
    std::fs::remove_file(node_cert_path(dir, 3)).unwrap();
    assert_eq!(init_certs(&six).unwrap().issued, vec![3]);
    assert_eq!(peer(dir, 3).node_id(), 3);

    // --force: a new CA, and every node certificate from it.
    let mut force = CertsInit::new(dir);
    force.nodes = 2;
    force.force = true;
    let report = init_certs(&force).unwrap();
    assert!(report.ca_created);
    assert_eq!(report.issued, vec![1, 2]);
    assert_ne!(read(ca_cert_path(dir)), ca_before);
    assert_eq!(peer(dir, 1).node_id(), 1);
    let err = PeerTls::load(
        ca_cert_path(dir),
        node_cert_path(dir, 6),
        node_key_path(dir, 6),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::NotSignedByCa { .. }), "{err}");
}

#[test]
fn init_refuses_a_broken_ca_and_bad_options() {
    let certs = make_certs(1);
    let dir = certs.path();
    let mut two = CertsInit::new(dir);
    two.nodes = 2;

    // A CA key that is not the CA certificate's: nothing is issued.
    let other = make_certs(1);
    let ca_key = read(ca_key_path(dir));
    std::fs::copy(ca_key_path(other.path()), ca_key_path(dir)).unwrap();
    let err = init_certs(&two).unwrap_err();
    assert!(matches!(err, CertsError::BadCa { .. }), "{err}");
    assert!(!node_cert_path(dir, 2).exists() && !node_key_path(dir, 2).exists());
    std::fs::write(ca_key_path(dir), &ca_key).unwrap();

    std::fs::remove_file(ca_key_path(dir)).unwrap();
    let err = init_certs(&two).unwrap_err();
    assert!(matches!(err, CertsError::PartialCa { .. }), "{err}");
    assert!(!node_cert_path(dir, 2).exists());

    // No CA, but node files: they would belong to another CA.
    std::fs::remove_file(ca_cert_path(dir)).unwrap();
    let err = init_certs(&two).unwrap_err();
    match &err {
        CertsError::Exists { files } => {
            assert_eq!(files, &vec![node_cert_path(dir, 1), node_key_path(dir, 1)])
        }
        other => panic!("{other}"),
    }

    let empty = tempfile::tempdir().unwrap();
    for san in ["aof-node-3", "AOF-NODE-1", "bad name!", ""] {
        let mut opts = CertsInit::new(empty.path());
        opts.extra_sans = vec![san.into()];
        let err = init_certs(&opts).unwrap_err();
        assert!(matches!(err, CertsError::BadSan { .. }), "{san}: {err}");
    }
    for nodes in [0, MAX_NODES + 1] {
        let mut opts = CertsInit::new(empty.path());
        opts.nodes = nodes;
        assert!(matches!(init_certs(&opts), Err(CertsError::NodeCount(_))));
    }
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}
