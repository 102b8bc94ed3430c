//! A misbehaving upstream registry for the mirror tests: a plain HTTP/1.1
//! server on a free port whose every answer a test chooses — wrong bytes,
//! slow or no headers, bodies that stall, challenges naming foreign
//! realms, 5xx, 429, HTML, huge bodies — and which records what berthd
//! sent it (paths, `Authorization` headers).
//!
//! Each connection serves one request and closes, so what a test sees is
//! exactly one request per connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub authorization: Option<String>,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// What to answer.
pub enum Reply {
    /// Status, headers and body at once (`Content-Length` added).
    Full { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Headers (with the given `Content-Length`, if any) after `delay`,
    /// then the body in pieces, each after its pause.
    Stream {
        delay: Duration,
        status: u16,
        headers: Vec<(String, String)>,
        length: Option<u64>,
        pieces: Vec<(Duration, Vec<u8>)>,
    },
    /// Read the request, then say nothing until the connection is closed.
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply::Full { status, headers: Vec::new(), body: Vec::new() }
    }

    pub fn body(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply::Full { status, headers: vec![("Content-Type".into(), content_type.into())], body }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        match &mut self {
            Reply::Full { headers, .. } | Reply::Stream { headers, .. } => headers.push((name.into(), value.into())),
            Reply::Hang => {}
        }
        self
    }
}

type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

pub struct FakeUpstream {
    /// `host:port` it listens on.
    pub addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    /// Listens on loopback.
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        Self::start_on("127.0.0.1", handler)
    }

    /// Listens on `ip` (e.g. a non-loopback address of this machine).
    pub fn start_on(ip: &str, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind the fake upstream");
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (handler, seen, stop) = (handler.clone(), s.clone(), st.clone());
                std::thread::spawn(move || serve(conn, &*handler, &seen, &stop));
            }
        });
        FakeUpstream { addr, seen, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// How many requests went to paths containing `part`.
    pub fn count(&self, method: &str, part: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method && s.target.contains(part)).count()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(conn: TcpStream, handler: &Handler, seen: &Mutex<Vec<Seen>>, stop: &AtomicBool) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let (mut authorization, mut length) = (None, 0usize);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v.trim().to_string()),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length];
    let _ = reader.read_exact(&mut body);
    let req = Seen { method: method.clone(), target, authorization };
    seen.lock().unwrap().push(req.clone());
    let mut conn = conn;
    let reason = |s: u16| match s {
        200 => "OK",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    };
    let head = |status: u16, headers: &[(String, String)], length: Option<u64>| {
        let mut h = format!("HTTP/1.1 {status} {}\r\nConnection: close\r\n", reason(status));
        for (k, v) in headers {
            h.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(n) = length {
            h.push_str(&format!("Content-Length: {n}\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    match handler(&req) {
        Reply::Full { status, headers, body } => {
            let _ = conn.write_all(head(status, &headers, Some(body.len() as u64)).as_bytes());
            if method != "HEAD" {
                let _ = conn.write_all(&body);
            }
        }
        Reply::Stream { delay, status, headers, length, pieces } => {
            std::thread::sleep(delay);
            if conn.write_all(head(status, &headers, length).as_bytes()).is_err() {
                return;
            }
            if method != "HEAD" {
                for (pause, piece) in pieces {
                    std::thread::sleep(pause);
                    if stop.load(Ordering::Relaxed) || conn.write_all(&piece).is_err() {
                        return;
                    }
                }
            }
        }
        Reply::Hang => {
            let mut buf = [0u8; 1];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => return,
                    Err(e)
                        if e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut =>
                    {
                        return
                    }
                    _ => {}
                }
            }
        }
    }
    let _ = conn.flush();
}
