//! Accepting connections and serving HTTP/1.1 on them, plain or TLS, with
//! the limits that keep one client from holding the daemon:
//!
//! - **header** — a request's headers must arrive within `header` of the
//!   connection becoming ready for one (hyper's header-read timer, which
//!   also closes keep-alive connections idle that long);
//! - **send** — a response write that makes no progress for `send` (the
//!   client stopped reading) ends the connection (the request body's own
//!   pause limit is in [`crate::api`]);
//! - **connections** — at most `max_connections` at once; past that, new
//!   ones are accepted and closed at once (shed) instead of waiting unseen
//!   in the backlog, and when the process is out of file descriptors the
//!   accept loop frees a reserved one to take and close the waiting
//!   connection, then backs off — it never spins.
//!
//! Each connection carries a [`PeerInfo`]: the client's address for rate
//! limiting and logs, and the fingerprint of a verified client certificate.
//! SIGTERM stops accepting and lets in-flight requests finish.

use axum::extract::ConnectInfo;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// `cert:<sha256 prefix>` of a client certificate signed by `clientcas`.
    pub client_cert: Option<String>,
}

/// How long clients may take, and how many may be connected.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header: Duration,
    pub send: Duration,
    pub max_connections: usize,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after the process ran out of file descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);
/// At most one warning per this long for shed connections and accept errors.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The most connections to allow by default: the open-file limit (raised
/// to its hard maximum at start-up) less a reserve for storage files,
/// sockets to S3 and upstreams, and logs.
pub fn default_max_connections() -> usize {
    let nofile = raise_nofile_limit();
    let reserve = (nofile / 2).min(256);
    nofile.saturating_sub(reserve).max(8) as usize
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does
/// for registry:2) and returns it.
#[allow(unsafe_code)]
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct they
    // are given, which lives on this stack frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A warning that is logged at most once per [`WARN_EVERY`], with how many
/// times it happened meanwhile.
struct RateLimitedWarning {
    what: &'static str,
    last: Mutex<Option<Instant>>,
    count: AtomicU64,
}

impl RateLimitedWarning {
    fn new(what: &'static str) -> Self {
        RateLimitedWarning { what, last: Mutex::new(None), count: AtomicU64::new(0) }
    }

    fn hit(&self, detail: &dyn std::fmt::Display) {
        let n = self.count.fetch_add(1, Relaxed) + 1;
        let mut last = self.last.lock().unwrap();
        if last.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            self.count.store(0, Relaxed);
            tracing::warn!(times = n, "{}: {detail}", self.what);
        }
    }
}

/// Serves `app` on `tcp` (TLS when `tls` is given) until `shutdown`
/// resolves, then waits for in-flight requests to finish.
pub async fn serve(
    tcp: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let acceptor = tls.map(TlsAcceptor::from);
    let shed = RateLimitedWarning::new("too many connections; new ones are closed at once (http.maxconnections)");
    let failed = RateLimitedWarning::new("accept failed");
    // A descriptor to give up when the process has none left, so the
    // waiting connection can be taken and closed instead of spinning.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    let out_of_files = matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                    failed.hit(&format!("{e}{}", if out_of_files { "; raise LimitNOFILE or lower http.maxconnections" } else { "" }));
                    if out_of_files && reserve.take().is_some() {
                        if let Ok((s, _)) = tcp.accept().await {
                            drop(s);
                        }
                        reserve = std::fs::File::open("/dev/null").ok();
                    }
                    tokio::time::sleep(EMFILE_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shed.hit(&addr);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let peer = PeerInfo { addr, client_cert: None };
            match acceptor {
                None => serve_connection(stream, peer, app, limits, watcher).await,
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| {
                            let d = crate::digest::Digest::sha256_of(c.as_ref());
                            format!("cert:{}", &d.hex()[..16])
                        });
                        let peer = PeerInfo { client_cert, ..peer };
                        serve_connection(tls, peer, app, limits, watcher).await
                    }
                    Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(tcp);
    graceful.shutdown().await;
    Ok(())
}

async fn serve_connection<IO>(
    io: IO,
    peer: PeerInfo,
    app: Router,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use tower::ServiceExt;
    let addr = peer.addr;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer.clone()));
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let io = hyper_util::rt::TokioIo::new(SendDeadline::new(io, limits.send));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(io, service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%addr, "connection ended: {e}");
    }
}

/// An I/O stream whose writes fail once they made no progress for
/// `limit`: a client that stops reading a response cannot hold the
/// connection (and what it pins) for ever.
struct SendDeadline<IO> {
    io: IO,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> SendDeadline<IO> {
    fn new(io: IO, limit: Duration) -> Self {
        SendDeadline { io, limit, timer: None }
    }

    /// Called when a write could not proceed: arms the timer, and says
    /// whether it ran out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }

    fn timed_out(&self) -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the client read nothing of the response for {:?}", self.limit),
        )
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendDeadline<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendDeadline<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, buf) {
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(self.timed_out())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(self.timed_out())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Pending if self.stalled(cx) => Poll::Ready(Err(self.timed_out())),
            Poll::Pending => Poll::Pending,
            ready => {
                self.timer = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
