//! TLS and mutual TLS on the gRPC port (contract, section 6): plaintext is refused, a caller
//! without a certificate from `--tls-client-ca` is refused at the handshake, and changed
//! certificate files take effect for new connections without a restart. Every operation of
//! the table is served over TLS against the emulator. Certificates are made per test (rcgen).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use msstore_facade::tls::{TlsFiles, RELOAD_CHECK};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A certificate authority made for one test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params)
    }

    /// A client certificate.
    fn client(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params)
    }

    fn leaf(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("msstore-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `contents` to `name` as a rotation would: a new file renamed over the old.
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        let staged = self.0.join(format!(".{name}.new"));
        std::fs::write(&staged, contents).unwrap();
        std::fs::rename(&staged, &path).unwrap();
        path
    }

    /// Writes `leaf` as `tls.crt` / `tls.key` (and `ca` as `ca.crt`): the TLS files.
    fn tls_files(&self, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsFiles {
        TlsFiles {
            cert: self.write("tls.crt", &leaf.cert),
            key: self.write("tls.key", &leaf.key),
            client_ca: client_ca.map(|ca| self.write("ca.crt", &ca.pem())),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The facade with `files` in front of a fresh emulator.
async fn facade_with_tls(files: TlsFiles) -> (Facade, msstore_facade::emulator::RunningEmulator) {
    let emulator = start_emulator().await;
    let mut settings = sandbox_settings(&emulator);
    settings.tls = Some(files);
    (Facade::start(settings).await, emulator)
}

/// A TLS channel to `facade` trusting `ca`, presenting `identity` if given.
async fn tls_channel(
    facade: &Facade,
    ca: &Ca,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(leaf) = identity {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://localhost:{}", facade.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

/// Whether a health check over a new connection (trusting `ca`, with `identity`) succeeds.
async fn serves(facade: &Facade, ca: &Ca, identity: Option<&Leaf>) -> bool {
    let Ok(channel) = tls_channel(facade, ca, identity).await else {
        return false;
    };
    health(channel).await.is_ok()
}

async fn health(channel: Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn tls_serves_every_operation_and_refuses_plaintext() {
    let ca = Ca::new("server CA");
    let dir = Dir::new();
    let (facade, _emulator) = facade_with_tls(dir.tls_files(&ca.server(), None)).await;
    let channel = tls_channel(&facade, &ca, None)
        .await
        .expect("a TLS client trusting the CA connects");
    health(channel.clone()).await.expect("health over TLS");
    for op in OPERATIONS {
        (op.sandbox_call)(channel.clone(), None, None)
            .await
            .unwrap_or_else(|status| panic!("{op:?} over TLS: {status:?}"));
    }
    // The harness's plaintext channel: refused at the handshake, never served.
    let status = health(facade.channel.clone())
        .await
        .expect_err("plaintext is refused");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::Unknown),
        "{status:?}"
    );
    // A client that does not trust the server's CA refuses it too.
    assert!(!serves(&facade, &Ca::new("another CA"), None).await);
    let metrics = facade.metrics().await;
    assert!(metrics.get("msstore_tls_handshakes_failed_total") >= 1.0);
}

#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let (server_ca, client_ca, stranger_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("stranger CA"),
    );
    let dir = Dir::new();
    let files = dir.tls_files(&server_ca.server(), Some(&client_ca));
    let (facade, _emulator) = facade_with_tls(files).await;
    assert!(
        serves(&facade, &server_ca, Some(&client_ca.client("billing"))).await,
        "a caller with a certificate from the client CA is served"
    );
    assert!(
        !serves(&facade, &server_ca, None).await,
        "a caller without a certificate is refused"
    );
    assert!(
        !serves(&facade, &server_ca, Some(&stranger_ca.client("billing"))).await,
        "a caller with a certificate from another CA is refused"
    );
    // A server certificate is not a client certificate, even from the right CA.
    assert!(!serves(&facade, &server_ca, Some(&server_ca.server())).await);
}

/// Polls `check` until it holds, for several reload periods at most.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..(RELOAD_CHECK.as_millis() * 5 / 100) {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within five reload periods");
}

#[tokio::test]
async fn rotated_certificates_are_served_without_a_restart() {
    let (old_ca, new_ca, client_ca, rotated_client_ca) = (
        Ca::new("old CA"),
        Ca::new("new CA"),
        Ca::new("client CA"),
        Ca::new("rotated client CA"),
    );
    let dir = Dir::new();
    let files = dir.tls_files(&old_ca.server(), Some(&client_ca));
    let (facade, _emulator) = facade_with_tls(files).await;
    let client = client_ca.client("billing");
    let before = tls_channel(&facade, &old_ca, Some(&client)).await.unwrap();
    health(before.clone()).await.unwrap();
    assert!(!serves(&facade, &new_ca, Some(&client)).await);

    // cert-manager renews the certificate (new key, new issuer) and the client CA.
    let rotated_client = rotated_client_ca.client("billing");
    dir.tls_files(&new_ca.server(), Some(&rotated_client_ca));
    eventually("the new certificate is served", async || {
        serves(&facade, &new_ca, Some(&rotated_client)).await
    })
    .await;
    assert!(
        !serves(&facade, &old_ca, Some(&client)).await,
        "old server certificate"
    );
    assert!(
        !serves(&facade, &new_ca, Some(&client)).await,
        "old client CA"
    );
    // A connection made before the rotation lives on.
    health(before)
        .await
        .expect("the old connection still serves");
    let metrics = facade.metrics().await;
    assert_eq!(
        metrics.sum("msstore_tls_reloads_total", &[("outcome", "loaded")]),
        1.0
    );

    // A half-written rotation (a key that does not match the certificate) is refused and the
    // last good files stay in force.
    dir.write("tls.crt", &old_ca.server().cert);
    eventually("the mismatched pair is refused", async || {
        let metrics = facade.metrics().await;
        metrics.sum("msstore_tls_reloads_total", &[("outcome", "rejected")]) == 1.0
    })
    .await;
    assert!(serves(&facade, &new_ca, Some(&rotated_client)).await);
}

/// Runs the binary with `args` until it exits; its exit code and everything it wrote.
fn run_binary(args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msstore-facade"))
        .args(args)
        .env_clear()
        .env("MSSTORE_GRPC_ADDR", "127.0.0.1:0")
        .env("MSSTORE_ADMIN_ADDR", "127.0.0.1:0")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn unusable_tls_files_stop_the_binary_with_a_clear_error_and_no_key_material() {
    let ca = Ca::new("server CA");
    let dir = Dir::new();
    let files = dir.tls_files(&ca.server(), None);
    let other_key = KeyPair::generate().unwrap().serialize_pem();
    let secret_line = "U0VDUkVULUtFWS1NQVRFUklBTC1OT1QtVE8tTE9H";
    let broken_key =
        format!("-----BEGIN PRIVATE KEY-----\n{secret_line}\n-----END PRIVATE KEY-----\n");
    let missing = dir.0.join("missing.crt");
    let other_key = dir.write("other.key", &other_key);
    let broken_key = dir.write("broken.key", &broken_key);
    let empty = dir.write("empty.pem", "");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--tls-cert", path(&missing), "--tls-key", path(&files.key)],
            "missing.crt",
        ),
        (
            vec![
                "--tls-cert",
                path(&files.cert),
                "--tls-key",
                path(&other_key),
            ],
            "tls.crt",
        ),
        (
            vec![
                "--tls-cert",
                path(&files.cert),
                "--tls-key",
                path(&broken_key),
            ],
            "broken.key",
        ),
        (
            vec![
                "--tls-cert",
                path(&files.cert),
                "--tls-key",
                path(&files.key),
                "--tls-client-ca",
                path(&empty),
            ],
            "empty.pem",
        ),
    ];
    for (args, names) in cases {
        let (code, text) = run_binary(&args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(
            text.contains("--tls-cert/--tls-key/--tls-client-ca"),
            "{text}"
        );
        assert!(text.contains(names), "{args:?} must name {names}: {text}");
        assert!(!text.contains(secret_line), "key material in {text}");
        assert!(!text.contains("serving"), "{text}");
    }
    // A key without a certificate, or a client CA without both, is a usage error.
    for args in [
        vec!["--tls-key", path(&files.key)],
        vec!["--tls-cert", path(&files.cert)],
        vec!["--tls-client-ca", path(&files.cert)],
    ] {
        let (code, text) = run_binary(&args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        assert!(text.contains("--tls-"), "{text}");
    }
}
