//! TLS on the gRPC port (and the forward-auth port) with rustls: the server certificate and key (and the client CA,
//! for mutual TLS) read from files and read again when they change, as cert-manager
//! rotates them; the accept loop that hands tonic finished TLS connections, each carrying
//! the caller identity from its client certificate.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinSet,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use x509_cert::{
    Certificate,
    der::{Decode, oid::AssociatedOid},
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::{
    config::TlsConfig,
    conn::{Activity, CertificateRefusal, Peer, Rules, Watchdog},
};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS file that cannot be used; `key` is the configuration key it is about.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub(crate) struct TlsError {
    /// The configuration key, such as `server.tls.cert`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn tls_error(key: &str, message: impl Into<String>) -> TlsError {
    TlsError {
        key: format!("server.tls.{key}"),
        message: message.into(),
    }
}

/// Builds the rustls configuration from the files. With a client CA, client certificates
/// are verified against it when presented; whether one is required is decided per call
/// (see [`crate::auth`]), so that a caller without one gets UNAUTHENTICATED with a reason
/// rather than a failed handshake.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("cert", &tls.cert)?;
    let key_pem = read_file("key", &tls.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        tls_error(
            "key",
            format!("{}: no PEM private key ({e})", tls.key.display()),
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("cert", e.to_string()))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("client_ca", path)? {
                roots
                    .add(cert)
                    .map_err(|e| tls_error("client_ca", format!("{}: {e}", path.display())))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls_error("client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("key", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A TLS file, read with a ceiling: a certificate chain or a key is a few KiB, and a path
/// that names a device or a huge file must not eat memory.
fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::bounded::read(path, crate::bounded::DOCUMENT_BYTES)
        .map_err(|e| tls_error(key, format!("{}: {e}", path.display())))
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(
            key,
            format!("{}: no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// The files' contents, to tell whether they changed.
fn digest(tls: &TlsConfig) -> [u8; 32] {
    let mut hash = Sha256::new();
    for path in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        // An unreadable file (mid-rotation) hashes as empty and is retried next round.
        hash.update(crate::bounded::read(path, crate::bounded::DOCUMENT_BYTES).unwrap_or_default());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// The current rustls configuration, replaced when the files change or a reload names
/// other files.
pub(crate) struct Reloading {
    current: ArcSwap<ServerConfig>,
    /// The same, offering HTTP/1.1 instead of HTTP/2 (the forward-auth port): a proxy that
    /// offers only `http/1.1` would otherwise fail the handshake.
    http1: ArcSwap<ServerConfig>,
    files: ArcSwap<TlsConfig>,
}

/// What a port speaks, as its TLS handshake says (ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The forward-auth port: HTTP/1.1.
    Http1,
}

fn for_http1(config: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut http1 = ServerConfig::clone(config);
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(http1)
}

impl Reloading {
    /// Serves `config` (built from `tls` by [`server_config`]) and watches the files until
    /// `stop`.
    pub(crate) fn start(
        tls: TlsConfig,
        config: Arc<ServerConfig>,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            http1: ArcSwap::new(for_http1(&config)),
            current: ArcSwap::new(config),
            files: ArcSwap::from_pointee(tls),
        });
        let reloading = this.clone();
        tasks.spawn(async move {
            let mut seen = digest(&reloading.files.load());
            loop {
                // Read each round: a reload may change the files and the interval.
                let files = reloading.files.load_full();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(files.reload_interval) => {}
                }
                let now = digest(&files);
                if now == seen {
                    continue;
                }
                match server_config(&files) {
                    Ok(config) => {
                        reloading.store(config);
                        seen = now;
                        tracing::info!(cert = %files.cert.display(), "TLS files changed; reloaded");
                    }
                    // Half-written files during a rotation: keep serving the old ones.
                    Err(error) => {
                        tracing::warn!(%error, "TLS files changed but cannot be used yet")
                    }
                }
            }
        });
        this
    }

    /// Serves other files from now on (a reload changed `server.tls`); `config` is built
    /// from them already, so a reload that names unusable files is refused before this.
    pub(crate) fn replace(&self, tls: TlsConfig, config: Arc<ServerConfig>) {
        self.store(config);
        self.files.store(Arc::new(tls));
    }

    fn store(&self, config: Arc<ServerConfig>) {
        self.http1.store(for_http1(&config));
        self.current.store(config);
    }

    fn acceptor(&self, protocol: Protocol) -> TlsAcceptor {
        TlsAcceptor::from(match protocol {
            Protocol::Grpc => self.current.load_full(),
            Protocol::Http1 => self.http1.load_full(),
        })
    }
}

/// The most connections open at once on the gRPC port, in all and per remote address,
/// and when one is closed for holding its slot for nothing; changeable while it runs.
pub(crate) struct ConnectionLimit {
    slots: Arc<Semaphore>,
    /// The limit in force. Locked only by a reload, to resize.
    max: std::sync::Mutex<usize>,
    /// Open connections per remote address. Locked when a connection is accepted and when
    /// it closes, never by a call.
    peers: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    /// The per-address limit and the rules for connections accepted from now on. Locked
    /// at each accept and by a reload.
    settings: std::sync::Mutex<(usize, Rules)>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize, per_peer: usize, rules: Rules) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max)),
            max: std::sync::Mutex::new(max),
            peers: Arc::default(),
            settings: std::sync::Mutex::new((per_peer, rules)),
        })
    }

    /// Changes the per-address limit and the rules, for connections accepted from now on
    /// (an open connection keeps those it was accepted with; none is cut).
    pub(crate) fn set(&self, per_peer: usize, rules: Rules) {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = (per_peer, rules);
    }

    /// A place for a new connection from `ip`, and the rules it is held to; `None` when
    /// the address has its limit of connections open.
    fn admit(&self, ip: IpAddr) -> Option<(PeerSlot, Rules)> {
        let (per_peer, rules) = *self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let ip = ip.to_canonical();
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let open = peers.entry(ip).or_insert(0);
        if *open >= per_peer {
            return None;
        }
        *open += 1;
        drop(peers);
        Some((
            PeerSlot {
                peers: self.peers.clone(),
                ip,
            },
            rules,
        ))
    }

    /// Changes the limit. A larger one takes effect at once; a smaller one as connections
    /// close (no open connection is cut), by a task that holds back the surplus slots until
    /// `stop`.
    pub(crate) fn resize(&self, max: usize, tasks: &TaskTracker, stop: CancellationToken) {
        let mut current = self.max.lock().unwrap_or_else(|e| e.into_inner());
        if max > *current {
            self.slots.add_permits(max - *current);
        } else if max < *current {
            let surplus = u32::try_from(*current - max).unwrap_or(u32::MAX);
            let slots = self.slots.clone();
            tasks.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    permits = slots.acquire_many_owned(surplus) => {
                        if let Ok(permits) = permits {
                            permits.forget();
                        }
                    }
                }
            });
        }
        *current = max;
    }
}

/// A connection's place in its remote address's count; given back when dropped.
struct PeerSlot {
    peers: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = peers.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// One accepted connection, plain or TLS, holding its place in the connection limits
/// until it closes, which its watchdog decides when no call uses it.
pub(crate) struct Conn {
    io: Io,
    peer: Peer,
    watchdog: Watchdog,
    _slot: OwnedSemaphorePermit,
    _peer_slot: PeerSlot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // hyper keeps a read pending on every connection it serves, so this is where the
        // watchdog's timer is polled; its error ends the connection.
        if let Poll::Ready(error) = this.watchdog.poll_expired(cx) {
            tracing::debug!(remote = ?this.peer.remote, %error, "closing the connection");
            return Poll::Ready(Err(error));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Finds peers that vanished without closing, so that they stop holding a connection
/// slot: after 30 s of silence the kernel probes every 10 s, and three unanswered probes
/// end the connection. HTTP/2 PING keepalive did the same from user space, at a cost of
/// 0.7k instructions on every call (hyper notes the arrival time of each frame).
const KEEPALIVE: socket2::TcpKeepalive = socket2::TcpKeepalive::new()
    .with_time(Duration::from_secs(30))
    .with_interval(Duration::from_secs(10))
    .with_retries(3);

/// Accepts connections until `stop`, at most `max_connections` open at once (more wait in
/// the kernel's backlog) and `max_connections_per_peer` from one address (more are closed
/// at once: waiting would let one address hold up every other), doing each TLS handshake
/// in its own task so that a slow client holds up nobody. The stream ends when `stop` is
/// cancelled.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Reloading>>,
    protocol: Protocol,
    limit: Arc<ConnectionLimit>,
    stop: CancellationToken,
    tasks: &TaskTracker,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(32);
    let slots = limit.slots.clone();
    tasks.spawn(async move {
        // Dropped when the loop ends, which aborts handshakes still running.
        let mut handshakes = JoinSet::new();
        loop {
            while handshakes.try_join_next().is_some() {}
            let slot = tokio::select! {
                () = stop.cancelled() => return,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let (tcp, remote) = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::debug!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some((peer_slot, rules)) = limit.admit(remote.ip()) else {
                tracing::debug!(%remote, "closing a connection: its address has its limit open");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            if let Err(error) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&KEEPALIVE) {
                tracing::debug!(%remote, %error, "cannot set TCP keepalive");
            }
            let Some(tls) = &tls else {
                let activity = Activity::new(false);
                let conn = Conn {
                    io: Io::Plain(tcp),
                    watchdog: Watchdog::new(activity.clone(), rules),
                    peer: Peer {
                        remote: Some(remote),
                        identity: None,
                        refused: None,
                        activity,
                    },
                    _slot: slot,
                    _peer_slot: peer_slot,
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = tls.acceptor(protocol);
            let tx = tx.clone();
            handshakes.spawn(async move {
                let stream =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%remote, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| certificate_identity(cert));
                let (identity, refused) = match identity {
                    None => (None, None),
                    Some(Ok(identity)) => (Some(identity), None),
                    Some(Err(refused)) => {
                        tracing::debug!(%remote, %refused, "client certificate gives no identity");
                        (None, Some(refused))
                    }
                };
                // A verified client certificate has authenticated the connection.
                let activity = Activity::new(identity.is_some());
                let conn = Conn {
                    io: Io::Tls(Box::new(stream)),
                    watchdog: Watchdog::new(activity.clone(), rules),
                    peer: Peer {
                        remote: Some(remote),
                        identity,
                        refused,
                        activity,
                    },
                    _slot: slot,
                    _peer_slot: peer_slot,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The identity in a verified client certificate: its URI SAN (a SPIFFE ID) if it has
/// one, else its first DNS SAN. The subject's CN is not used: it is not a SAN. A name of
/// another form is refused, not skipped: a certificate whose URI SAN is refused does not
/// fall back to its DNS SAN.
pub(crate) fn certificate_identity(der: &[u8]) -> Result<Arc<str>, CertificateRefusal> {
    let names = subject_alt_names(der).ok_or(CertificateRefusal::NoName)?;
    let mut dns = None;
    for name in names.0 {
        match name {
            GeneralName::UniformResourceIdentifier(uri) => return uri_identity(uri.as_str()),
            GeneralName::DnsName(name) if dns.is_none() => dns = Some(name),
            _ => {}
        }
    }
    dns_identity(dns.ok_or(CertificateRefusal::NoName)?.as_str())
}

fn subject_alt_names(der: &[u8]) -> Option<SubjectAltName> {
    let cert = Certificate::from_der(der).ok()?;
    let extensions = cert.tbs_certificate.extensions.as_ref()?;
    let san = extensions
        .iter()
        .find(|e| e.extn_id == SubjectAltName::OID)?;
    SubjectAltName::from_der(san.extn_value.as_bytes()).ok()
}

/// The prefix of every Kubernetes identity (`system:serviceaccount:`, `system:node:`).
fn is_kubernetes_name(name: &str) -> bool {
    name.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("system:"))
}

/// `scheme://rest`, printable ASCII without spaces: a SPIFFE ID or another URI with an
/// authority. Such a name holds `//`, which no ServiceAccount name or host name does.
fn uri_identity(uri: &str) -> Result<Arc<str>, CertificateRefusal> {
    if is_kubernetes_name(uri) {
        return Err(CertificateRefusal::ServiceAccountName);
    }
    let well_formed = uri.split_once("://").is_some_and(|(scheme, rest)| {
        let mut chars = scheme.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            && !rest.is_empty()
            && rest.chars().all(|c| c.is_ascii_graphic())
    });
    if !well_formed {
        return Err(CertificateRefusal::NotUri);
    }
    Ok(uri.into())
}

/// Letters, digits, `-`, `_` and `.`: no `:` or `/`, so no other kind of identity.
fn dns_identity(name: &str) -> Result<Arc<str>, CertificateRefusal> {
    if is_kubernetes_name(name) {
        return Err(CertificateRefusal::ServiceAccountName);
    }
    let host = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !host {
        return Err(CertificateRefusal::NotHostName);
    }
    Ok(name.into())
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt as _;

    use super::*;

    const RULES: Rules = Rules {
        idle_timeout: Duration::from_secs(60),
        unauthenticated_timeout: None,
    };

    #[tokio::test]
    async fn accepted_connections_probe_a_silent_peer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let mut conns = incoming(
            listener,
            None,
            Protocol::Grpc,
            ConnectionLimit::new(4, 4, RULES),
            stop.clone(),
            &tasks,
        );
        let _client = TcpStream::connect(address).await.unwrap();
        let conn = conns.next().await.unwrap().unwrap();
        let Io::Plain(tcp) = &conn.io else {
            panic!("a plain connection")
        };
        let socket = socket2::SockRef::from(tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 3);
        assert!(tcp.nodelay().unwrap());
        stop.cancel();
    }
}
