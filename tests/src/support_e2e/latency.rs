//! A TCP relay that adds round-trip time, for benchmarks: what `tc netem
//! delay` would do, on kernels built without netem (this machine's has only
//! `tbf`). Every byte is held for half the round trip in each direction,
//! and a new connection's first bytes wait one more round trip (its
//! handshake). The relay pipelines: bytes keep flowing while earlier ones
//! wait, so a long transfer's rate is the link's, not one window per round
//! trip; what the delay costs is every request's wait for its answer, which
//! is what a lazy read pays.
//!
//! One thread per direction reads and stamps, one writes when a chunk is
//! due. The relay stops accepting when dropped; open connections end with
//! their peers.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

pub struct LatencyRelay {
    pub addr: String,
    stop: Arc<AtomicBool>,
}

impl LatencyRelay {
    /// Relays 127.0.0.1:(a free port) to `target` (host:port), adding `rtt`.
    pub fn start(target: &str, rtt: Duration) -> LatencyRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (target, stopping) = (target.to_string(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let handshake = Instant::now() + rtt;
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(client, server, rtt / 2, handshake);
                pipe(s2, c2, rtt / 2, handshake);
            }
        });
        LatencyRelay { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr); // wakes the accept loop
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read and none
/// before `not_before`.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, not_before: Instant) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || tx.send(((Instant::now() + delay).max(not_before), buf[..n].to_vec())).is_err() {
                break;
            }
        }
        // Dropping tx ends the writer once it has written what is queued.
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server behind the relay answers one round trip later, and a
    /// burst of writes arrives at once after it (pipelined, not one
    /// round trip per chunk).
    #[test]
    fn adds_the_round_trip_and_pipelines() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for mut c in echo.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let _ = std::io::copy(&mut r, &mut c);
                });
            }
        });
        let rtt = Duration::from_millis(100);
        let relay = LatencyRelay::start(&target, rtt);
        let mut c = TcpStream::connect(&relay.addr).unwrap();
        // The handshake's round trip has passed before the first exchange.
        std::thread::sleep(rtt);
        let t = Instant::now();
        for _ in 0..20 {
            c.write_all(&[7u8; 1000]).unwrap();
        }
        let mut got = vec![0u8; 20_000];
        c.read_exact(&mut got).unwrap();
        let took = t.elapsed();
        assert!(got.iter().all(|&b| b == 7));
        assert!(took >= rtt, "answered after {took:?}, before one round trip");
        assert!(took < rtt * 3, "20 chunks took {took:?}: not pipelined");
    }
}
