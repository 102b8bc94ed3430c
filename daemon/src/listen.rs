//! Listeners: plain TCP and TLS (see [`crate::tls`]) both yield a
//! [`PeerInfo`] per connection — the client's address for rate limiting and
//! logs, and the fingerprint of a verified client certificate, if any.

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    /// `cert:<sha256 prefix>` of a client certificate signed by `clientcas`.
    pub client_cert: Option<String>,
}

pub struct PlainListener(pub TcpListener);

impl Listener for PlainListener {
    type Io = TcpStream;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, PeerInfo { addr, client_cert: None });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(PeerInfo { addr: self.0.local_addr()?, client_cert: None })
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl Connected<IncomingStream<'_, crate::tls::TlsListener>> for PeerInfo {
    fn connect_info(stream: IncomingStream<'_, crate::tls::TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}
