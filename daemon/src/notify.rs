//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): berthd says
//! `READY=1` once every listener is bound, so `systemctl start` and the
//! Ansible role return only when berthd serves, and `STOPPING=1` when it
//! begins to shut down. Without `NOTIFY_SOCKET` (not under systemd) it
//! does nothing. Twenty lines, so no crate.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;

/// Tells systemd that berthd serves.
pub fn ready() {
    notify("READY=1");
}

/// Tells systemd that berthd is shutting down.
pub fn stopping() {
    notify("STOPPING=1");
}

fn notify(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = send(&socket, state) {
            tracing::warn!("cannot notify systemd ({state}) at {}: {e}", socket.to_string_lossy());
        }
    }
}

/// Sends one notification to `socket`: a path, or `@name` for an abstract
/// socket (as systemd hands them out).
pub fn send(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_path_and_abstract_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
