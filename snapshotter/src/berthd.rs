//! The node's berthd, as the snapshotter reads from it: layer indexes and
//! uncompressed ranges over HTTP/1.1 on loopback or a unix socket. One
//! connection per request: on loopback that costs microseconds, and no
//! pool can go stale when berthd restarts.

use berth_wire::layer_index::LayerIndex;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::path::PathBuf;
use std::time::Duration;

/// Why berthd could not give what was asked. `Timeout` and `Stalled` are
/// berthd (or the link) being slow; the rest are berthd unreachable,
/// refusing, or answering something that does not check out.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("berthd URL {url:?} must {expected}")]
    BadUrl { url: String, expected: &'static str },
    #[error("cannot build the request: {0}")]
    Request(#[source] http::Error),
    #[error("connect {target}: {source}")]
    Unreachable {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("request: {0}")]
    Send(#[source] hyper::Error),
    /// No (complete) answer within the timeout.
    #[error("berthd did not answer in {0:?}")]
    Timeout(Duration),
    /// A streamed answer's body paused for longer than the timeout.
    #[error("the answer stalled for {0:?}")]
    Stalled(Duration),
    #[error("response body: {0}")]
    BadBody(#[source] hyper::Error),
    #[error("berthd answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("index is not valid JSON: {0}")]
    IndexJson(#[source] serde_json::Error),
    #[error("prefetch list is not valid JSON: {0}")]
    PrefetchJson(#[source] serde_json::Error),
    #[error("invalid layer index: {0}")]
    BadIndex(String),
    #[error("berthd sent the index of {got} for {want}")]
    WrongIndex { got: String, want: String },
    #[error("berthd sent {got} bytes for a {want}-byte range")]
    ShortRange { got: usize, want: u64 },
}

impl ClientError {
    /// berthd answered `status` with `body` where something else was due.
    fn status(status: u16, body: &[u8]) -> ClientError {
        ClientError::Status { status, body: String::from_utf8_lossy(body).into_owned() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

/// Where to reach berthd.
#[derive(Clone, Debug)]
pub struct Berthd {
    target: Target,
    timeout: Duration,
}

/// A layer as berthd names it: the repository (and, for a mirrored or
/// cluster registry, its name as `ns`) and the blob digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRef {
    pub ns: String,
    pub repo: String,
    pub digest: String,
}

impl LayerRef {
    /// From CRI's `cri.image-ref` label (`host/repo:tag`, `repo@digest`,
    /// or a Docker Hub short name) and the layer digest.
    pub fn from_image_ref(image: &str, digest: &str) -> Option<LayerRef> {
        let no_digest = image.split('@').next()?;
        // A tag follows the last `:` after the last `/`.
        let name = match no_digest.rfind(':') {
            Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
            _ => no_digest,
        };
        let (host, repo) = match name.split_once('/') {
            Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), r.to_string()),
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repo = if host == "docker.io" && !repo.contains('/') { format!("library/{repo}") } else { repo };
        let ok = !repo.is_empty()
            && digest.starts_with("sha256:")
            && digest.len() == 71
            && digest[7..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        ok.then(|| LayerRef { ns: host, repo, digest: digest.to_string() })
    }

    fn path(&self, what: &str) -> String {
        format!("/v2/{}/_berth/layer/{}/{what}?ns={}", self.repo, self.digest, self.ns)
    }
}

impl Berthd {
    /// `http://127.0.0.1:5000` or `unix:///run/berth/berthd.sock`.
    pub fn parse(url: &str) -> Result<Berthd, ClientError> {
        let target = if let Some(p) = url.strip_prefix("unix://") {
            Target::Unix(PathBuf::from(p))
        } else if let Some(rest) = url.strip_prefix("http://") {
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') {
                return Err(ClientError::BadUrl { url: url.to_string(), expected: "be http://HOST:PORT" });
            }
            let hostport = if hostport.contains(':') { hostport.to_string() } else { format!("{hostport}:80") };
            Target::Tcp(hostport)
        } else {
            return Err(ClientError::BadUrl { url: url.to_string(), expected: "start with http:// or unix://" });
        };
        Ok(Berthd { target, timeout: Duration::from_secs(30) })
    }

    pub fn with_timeout(mut self, t: Duration) -> Berthd {
        self.timeout = t;
        self
    }

    /// GET `path`; returns the status, the Content-Type and the body.
    pub async fn fetch(&self, path: &str, accept: &str) -> Result<(u16, String, Bytes), ClientError> {
        self.request(path, None, accept).await
    }

    async fn get(&self, path: &str, range: Option<(u64, u64)>) -> Result<(u16, Bytes), ClientError> {
        let (status, _, body) = self.request(path, range, "").await?;
        Ok((status, body))
    }

    /// GET `path` with the body read as it arrives, for blobs too large to
    /// hold in memory or to fetch within one timeout: the timeout bounds the
    /// wait for the answer's head and each wait for more of its body.
    pub async fn open(&self, path: &str, accept: &str) -> Result<Streaming, ClientError> {
        let resp = tokio::time::timeout(self.timeout, self.head(path, None, accept))
            .await
            .map_err(|_| ClientError::Timeout(self.timeout))??;
        let status = resp.status().as_u16();
        Ok(Streaming { status, body: resp.into_body(), idle: self.timeout })
    }

    async fn request(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        accept: &str,
    ) -> Result<(u16, String, Bytes), ClientError> {
        self.exchange(self.get_request(path, range, accept)?).await
    }

    /// Sends `req` and reads the whole answer within the timeout: the
    /// status, the Content-Type and the body.
    async fn exchange<B>(&self, req: hyper::Request<B>) -> Result<(u16, String, Bytes), ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let fut = async {
            let resp = self.send(req).await?;
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = resp.into_body().collect().await.map_err(ClientError::BadBody)?.to_bytes();
            Ok((status, ctype, body))
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| ClientError::Timeout(self.timeout))?
    }

    /// Sends a GET; the answer's body is still to be read.
    async fn head(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        accept: &str,
    ) -> Result<hyper::Response<Incoming>, ClientError> {
        self.send(self.get_request(path, range, accept)?).await
    }

    fn get_request(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        accept: &str,
    ) -> Result<hyper::Request<Empty<Bytes>>, ClientError> {
        let mut req = hyper::Request::get(path).header(hyper::header::HOST, self.host());
        if let Some((start, end)) = range {
            req = req.header(hyper::header::RANGE, format!("bytes={start}-{end}"));
        }
        if !accept.is_empty() {
            req = req.header(hyper::header::ACCEPT, accept);
        }
        req.body(Empty::<Bytes>::new()).map_err(ClientError::Request)
    }

    /// The `Host` header for berthd.
    fn host(&self) -> String {
        match &self.target {
            Target::Tcp(h) => h.clone(),
            Target::Unix(_) => "localhost".to_string(),
        }
    }

    /// Connects and sends `req`; the answer's body is still to be read.
    async fn send<B>(&self, req: hyper::Request<B>) -> Result<hyper::Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match &self.target {
            Target::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| ClientError::Unreachable { target: addr.clone(), source })?;
                send(TokioIo::new(s), req).await
            }
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|source| ClientError::Unreachable { target: p.display().to_string(), source })?;
                send(TokioIo::new(s), req).await
            }
        }
    }

    /// The layer's prefetch list: the chunk numbers a first start read, in
    /// the order it read them; `None` when none is recorded yet.
    pub async fn prefetch_list(&self, layer: &LayerRef) -> Result<Option<Vec<u32>>, ClientError> {
        let (status, body) = self.get(&layer.path("prefetch"), None).await?;
        match status {
            200 => {
                let list: PrefetchList = serde_json::from_slice(&body).map_err(ClientError::PrefetchJson)?;
                Ok(Some(list.chunks))
            }
            404 => Ok(None),
            _ => Err(ClientError::status(status, &body)),
        }
    }

    /// Records the layer's prefetch list (berthd checks it against the index).
    pub async fn put_prefetch_list(&self, layer: &LayerRef, chunks: Vec<u32>) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&PrefetchList { chunks }).expect("a list serializes");
        let req = hyper::Request::put(layer.path("prefetch"))
            .header(hyper::header::HOST, self.host())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(Bytes::from(body)))
            .map_err(ClientError::Request)?;
        let (status, _, body) = self.exchange(req).await?;
        match status {
            200..=299 => Ok(()),
            _ => Err(ClientError::status(status, &body)),
        }
    }

    /// The layer's index, validated.
    pub async fn index(&self, layer: &LayerRef) -> Result<(LayerIndex, Bytes), ClientError> {
        let (status, body) = self.get(&layer.path("index"), None).await?;
        if status != 200 {
            return Err(ClientError::status(status, &body));
        }
        let idx: LayerIndex = serde_json::from_slice(&body).map_err(ClientError::IndexJson)?;
        idx.validate().map_err(ClientError::BadIndex)?;
        if idx.digest != layer.digest {
            return Err(ClientError::WrongIndex { got: idx.digest, want: layer.digest.clone() });
        }
        Ok((idx, body))
    }

    /// `len` uncompressed bytes of the layer's tar at `offset`.
    pub async fn range(&self, layer: &LayerRef, offset: u64, len: u64) -> Result<Bytes, ClientError> {
        let (status, body) = self.get(&layer.path("tar"), Some((offset, offset + len - 1))).await?;
        if status != 206 {
            return Err(ClientError::status(status, &body));
        }
        if body.len() as u64 != len {
            return Err(ClientError::ShortRange { got: body.len(), want: len });
        }
        Ok(body)
    }
}

/// An answer whose body is read piece by piece ([`Berthd::open`]).
pub struct Streaming {
    pub status: u16,
    body: Incoming,
    idle: Duration,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| ClientError::Stalled(self.idle))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::BadBody(e)),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The start of the body, for an error message.
    pub async fn text(mut self) -> String {
        let mut out = Vec::new();
        while out.len() < 4096 {
            match self.next().await {
                Ok(Some(b)) => out.extend_from_slice(&b),
                _ => break,
            }
        }
        out.truncate(4096);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// berthd's prefetch list format (its `registry/prefetch.rs`).
#[derive(serde::Serialize, serde::Deserialize)]
struct PrefetchList {
    chunks: Vec<u32>,
}

async fn send<IO, B>(io: IO, req: hyper::Request<B>) -> Result<hyper::Response<Incoming>, ClientError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(ClientError::Handshake)?;
    tokio::spawn(conn);
    sender.send_request(req).await.map_err(ClientError::Send)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = LayerRef::from_image_ref("registry.example.test/app:v1", &d).unwrap();
        assert_eq!((r.ns.as_str(), r.repo.as_str()), ("registry.example.test", "app"));
        let r = LayerRef::from_image_ref("busybox:1.36", &d).unwrap();
        assert_eq!((r.ns.as_str(), r.repo.as_str()), ("docker.io", "library/busybox"));
        let r = LayerRef::from_image_ref("localhost:5000/a/b@sha256:00", &d).unwrap();
        assert_eq!((r.ns.as_str(), r.repo.as_str()), ("localhost:5000", "a/b"));
        assert!(LayerRef::from_image_ref("x/y", "sha256:short").is_none());
        assert_eq!(r.path("index"), format!("/v2/a/b/_berth/layer/{d}/index?ns=localhost:5000"));
    }

    #[test]
    fn urls() {
        assert_eq!(Berthd::parse("http://127.0.0.1:5000").unwrap().target, Target::Tcp("127.0.0.1:5000".into()));
        assert_eq!(Berthd::parse("unix:///run/b.sock").unwrap().target, Target::Unix("/run/b.sock".into()));
        let e = Berthd::parse("https://x").unwrap_err().to_string();
        assert_eq!(e, r#"berthd URL "https://x" must start with http:// or unix://"#);
        let e = Berthd::parse("http://x/y").unwrap_err().to_string();
        assert_eq!(e, r#"berthd URL "http://x/y" must be http://HOST:PORT"#);
    }

    #[test]
    fn error_texts() {
        assert_eq!(ClientError::Timeout(Duration::from_secs(10)).to_string(), "berthd did not answer in 10s");
        assert_eq!(ClientError::Stalled(Duration::from_millis(1500)).to_string(), "the answer stalled for 1.5s");
        let e = ClientError::Status { status: 404, body: "no index".into() };
        assert_eq!(e.to_string(), "berthd answered 404: no index");
        assert_eq!(ClientError::ShortRange { got: 3, want: 4 }.to_string(), "berthd sent 3 bytes for a 4-byte range");
        let source = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = ClientError::Unreachable { target: "127.0.0.1:5000".into(), source };
        assert!(e.to_string().starts_with("connect 127.0.0.1:5000: "), "{e}");
    }
}
