//! TLS on the gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with rustls.
//!
//! With TLS configured the gRPC port speaks TLS only: a plaintext client fails the handshake.
//! With a client CA, a caller must present a certificate issued by it (mutual TLS), or the
//! handshake fails. The files are read again every [`RELOAD_CHECK`] and a change takes effect
//! for new connections, with no restart (cert-manager rotation; Kubernetes updates a mounted
//! Secret by swapping a symlink). Changed files that do not make a valid configuration (a
//! half-written rotation, a key that does not match) are refused with a warning and the
//! previous configuration stays in force.
//!
//! Connections are accepted by one task; each TLS handshake runs in a task of its own with a
//! [`HANDSHAKE_TIMEOUT`], so that a slow or silent client never holds up the others.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::telemetry::metrics::TlsMetrics;

/// How often the certificate files are read again to see whether they changed.
pub const RELOAD_CHECK: Duration = Duration::from_secs(2);
/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once; further connections wait in the listen backlog.
const MAX_HANDSHAKES: usize = 256;
/// Connections accepted (and through their handshake) that the server has not taken yet.
const ACCEPTED_QUEUE: usize = 64;

/// The PEM files of the gRPC port's TLS configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates a client's certificate must chain to (mutual TLS), if any.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files do not make a configuration. No variant carries file contents: a PEM
/// error could otherwise quote a line of the private key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file is not the PEM it should be.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
    /// rustls refused the certificate, key or client CA (e.g. a key that does not match the
    /// certificate).
    #[error("{files}: {reason}")]
    Refused {
        /// The file or files the refusal is about.
        files: String,
        /// rustls's reason.
        reason: String,
    },
}

impl TlsFiles {
    /// Whether the files make a configuration now (for a clear error at start-up).
    pub fn check(&self) -> Result<(), TlsError> {
        self.build(&self.read_all()?).map(drop)
    }

    /// How the gRPC port is secured, for the start-up log line.
    pub fn mode(&self) -> &'static str {
        if self.client_ca.is_some() {
            "mutual"
        } else {
            "server"
        }
    }

    /// Every file's contents, in the order cert, key, client CA.
    fn read_all(&self) -> Result<Vec<Vec<u8>>, TlsError> {
        self.paths()
            .map(|path| {
                std::fs::read(path).map_err(|source| TlsError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .collect()
    }

    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn build(&self, contents: &[Vec<u8>]) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain = certificates(&self.cert, &contents[0])?;
        let key = PrivateKeyDer::from_pem_slice(&contents[1]).map_err(|error| TlsError::Pem {
            path: self.key.clone(),
            what: match error {
                pem::Error::NoItemsFound => "no PEM private key in it",
                _ => "not a valid PEM private key",
            },
        })?;
        let refused = |paths: &[&Path]| {
            let files = paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ");
            move |reason: &dyn std::fmt::Display| TlsError::Refused {
                files,
                reason: reason.to_string(),
            }
        };
        // Loaded here only to tell a key rustls cannot use from one that does not match.
        provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| refused(&[&self.key])(&e))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| refused(&[&self.cert])(&e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in certificates(path, &contents[2])? {
                    roots.add(certificate).map_err(|e| refused(&[path])(&e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| refused(&[path])(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            let both = refused(&[&self.cert, &self.key]);
            match e {
                rustls::Error::InconsistentKeys(_) => {
                    both(&"the private key does not belong to the certificate")
                }
                other => both(&other),
            }
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let invalid = |what| TlsError::Pem {
        path: path.to_owned(),
        what,
    };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("not valid PEM"))?;
    if chain.is_empty() {
        return Err(invalid("no PEM certificate in it"));
    }
    Ok(chain)
}

/// The TLS configuration in force, replaced when the files change.
pub struct TlsReloader {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// A digest of the file contents last looked at, loaded or refused.
    seen: std::sync::Mutex<u64>,
    metrics: TlsMetrics,
}

impl TlsReloader {
    /// Loads `files` (an error if they do not make a configuration).
    pub fn new(files: TlsFiles, metrics: TlsMetrics) -> Result<Self, TlsError> {
        let contents = files.read_all()?;
        let config = files.build(&contents)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
            seen: std::sync::Mutex::new(digest(&contents)),
            metrics,
        })
    }

    fn acceptor(&self) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        TlsAcceptor::from(current.clone())
    }

    /// Reads the files every [`RELOAD_CHECK`] and puts a changed configuration in force.
    pub async fn watch(self: Arc<Self>) {
        let mut every = tokio::time::interval(RELOAD_CHECK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            self.check().await;
        }
    }

    /// Reads the files once; loads them if they changed since the last look.
    async fn check(&self) {
        let mut contents = Vec::new();
        for path in self.files.paths() {
            match tokio::fs::read(path).await {
                Ok(bytes) => contents.push(bytes),
                // Mid-rotation a file can be missing for a moment: look again next time.
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "TLS file unreadable");
                    return;
                }
            }
        }
        let digest = digest(&contents);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == digest {
                return;
            }
            *seen = digest;
        }
        match self.files.build(&contents) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
                self.metrics.loaded.increment(1);
                tracing::info!("TLS files changed: new connections use the new certificate");
            }
            Err(error) => {
                self.metrics.rejected.increment(1);
                tracing::warn!(%error, "TLS files changed but are not usable: keeping the previous ones");
            }
        }
    }
}

fn digest(contents: &[Vec<u8>]) -> u64 {
    let mut hasher = DefaultHasher::new();
    contents.hash(&mut hasher);
    hasher.finish()
}

/// One accepted gRPC connection: plain TCP, or TLS over it.
pub enum Connection {
    /// Plain TCP (no TLS configured).
    Plain(TcpStream),
    /// TLS, handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Self::Plain(stream) => stream.connect_info(),
            Self::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $stream:ident => $call:expr) => {
        match $self.get_mut() {
            Connection::Plain($stream) => {
                let $stream = Pin::new($stream);
                $call
            }
            Connection::Tls($stream) => {
                let $stream = Pin::new($stream.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_read(cx, buf))
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, stream => stream.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, stream => stream.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(stream) => stream.is_write_vectored(),
            Self::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, stream => stream.poll_shutdown(cx))
    }
}

/// The connections of the gRPC listener, through their TLS handshake when TLS is configured.
/// Dropping it stops accepting.
pub struct Incoming {
    accepted: mpsc::Receiver<Connection>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Incoming {
    /// Accepts on `listener`; with `tls`, each connection goes through a TLS handshake first
    /// (one that fails or takes longer than [`HANDSHAKE_TIMEOUT`] is closed).
    pub fn new(listener: TcpListener, tls: Option<Arc<TlsReloader>>) -> Self {
        let (sender, accepted) = mpsc::channel(ACCEPTED_QUEUE);
        let acceptor = tokio::spawn(accept(listener, tls, sender));
        Self { accepted, acceptor }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl Stream for Incoming {
    type Item = Result<Connection, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accepted.poll_recv(cx).map(|next| next.map(Ok))
    }
}

async fn accept(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    accepted: mpsc::Sender<Connection>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(slot) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::debug!(%error, "gRPC accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tls else {
            if accepted.send(Connection::Plain(stream)).await.is_err() {
                return;
            }
            continue;
        };
        let (acceptor, tls, accepted) = (tls.acceptor(), tls.clone(), accepted.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(slot);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = accepted.send(Connection::Tls(Box::new(stream))).await;
                }
                Ok(Err(error)) => {
                    tls.metrics.handshakes_failed.increment(1);
                    tracing::debug!(%error, "TLS handshake failed");
                }
                Err(_) => {
                    tls.metrics.handshakes_failed.increment(1);
                    tracing::debug!("TLS handshake timed out");
                }
            }
        });
    }
}
