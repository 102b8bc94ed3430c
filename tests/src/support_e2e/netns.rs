//! A network namespace behind a veth pair, for benchmarks that need a
//! server across a real link: whatever the namespace sends can be shaped to
//! a rate with `tc tbf`, and the bytes that crossed are counted by the
//! kernel. Needs root. Removed on drop, and before creation (what a killed
//! earlier run left).

use crate::common::run;
use std::process::{Command, Stdio};

pub struct ShapedLink {
    /// The namespace's name (`ip netns exec NAME …`).
    pub ns: String,
    host_if: String,
    ns_if: String,
    /// Address of the host's end, and of the namespace's end.
    pub host_ip: String,
    pub ns_ip: String,
}

/// Runs `args` (the program first), ignoring failure.
fn quiet(args: &[&str]) {
    let _ = Command::new(args[0]).args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

fn sh(args: &[&str]) {
    run(Command::new(args[0]).args(&args[1..]));
}

impl ShapedLink {
    /// Namespace `ns` on 10.250.`subnet`.0/30; `short` (a few letters)
    /// names the veth ends, whose names the kernel keeps under 16 bytes.
    pub fn create(ns: &str, short: &str, subnet: u8) -> ShapedLink {
        let link = ShapedLink {
            ns: ns.into(),
            host_if: format!("{short}-host"),
            ns_if: format!("{short}-ns"),
            host_ip: format!("10.250.{subnet}.1"),
            ns_ip: format!("10.250.{subnet}.2"),
        };
        link.remove();
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "link", "add", &link.host_if, "type", "veth", "peer", "name", &link.ns_if, "netns", ns]);
        sh(&["ip", "addr", "add", &format!("{}/30", link.host_ip), "dev", &link.host_if]);
        sh(&["ip", "link", "set", &link.host_if, "up"]);
        link.exec(&["ip", "addr", "add", &format!("{}/30", link.ns_ip), "dev", &link.ns_if]);
        link.exec(&["ip", "link", "set", &link.ns_if, "up"]);
        link.exec(&["ip", "link", "set", "lo", "up"]);
        link
    }

    fn exec(&self, args: &[&str]) {
        sh(&[&["ip", "netns", "exec", self.ns.as_str()], args].concat());
    }

    fn remove(&self) {
        for pid in String::from_utf8_lossy(
            &Command::new("ip").args(["netns", "pids", &self.ns]).output().map(|o| o.stdout).unwrap_or_default(),
        )
        .split_whitespace()
        {
            quiet(&["kill", "-9", pid]);
        }
        quiet(&["ip", "netns", "del", &self.ns]);
        quiet(&["ip", "link", "del", &self.host_if]);
    }

    /// Shapes what the namespace sends to `mbit` Mbit/s; 0 removes the limit.
    pub fn limit(&self, mbit: u64) {
        if mbit == 0 {
            quiet(&["ip", "netns", "exec", &self.ns, "tc", "qdisc", "del", "dev", &self.ns_if, "root"]);
            return;
        }
        // A burst of at least one jiffy's worth of bytes at this rate, so
        // fast links are not held under their rate by the timer.
        let burst = format!("{}kb", (mbit * 1000 / 8 / 250).max(128));
        let rate = format!("{mbit}mbit");
        self.exec(&[
            "tc",
            "qdisc",
            "replace",
            "dev",
            &self.ns_if,
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            &burst,
            "latency",
            "100ms",
        ]);
    }

    /// Bytes the host has received from the namespace so far.
    pub fn rx_bytes(&self) -> u64 {
        let p = format!("/sys/class/net/{}/statistics/rx_bytes", self.host_if);
        std::fs::read_to_string(p).unwrap().trim().parse().unwrap()
    }
}

impl Drop for ShapedLink {
    fn drop(&mut self) {
        self.remove();
    }
}
