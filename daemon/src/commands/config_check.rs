//! `berthd config check [FILE]`: everything berthd would refuse at start,
//! found without starting — the config's keys and values, and the files
//! it names (TLS certificates and keys, client CAs, htpasswd or token
//! certificates, outbound CA files, the layer index key file). Every
//! problem is reported, not just the first; warnings are printed too.

use crate::config::{self, Config, Secret};
use std::io::Write;
use std::path::Path;

/// Checks the config at `path` (with `vars`' `REGISTRY_*` overrides) and
/// reports on `out`. Returns whether berthd can start with it.
pub fn run(path: Option<&Path>, vars: &[(String, String)], out: &mut dyn Write) -> std::io::Result<bool> {
    let shown = path.map_or_else(|| "the built-in defaults".to_string(), |p| p.display().to_string());
    let loaded = match config::load(path, vars) {
        Ok(l) => l,
        Err(e) => {
            writeln!(out, "error: {e}")?;
            writeln!(out, "{shown}: 1 problem; berthd would not start")?;
            return Ok(false);
        }
    };
    for w in &loaded.warnings {
        writeln!(out, "warning: {w}")?;
    }
    let problems = problems(&loaded.config);
    for p in &problems {
        writeln!(out, "error: {p}")?;
    }
    if problems.is_empty() {
        writeln!(out, "{shown}: ok")?;
    } else {
        writeln!(out, "{shown}: {} problem(s); berthd would not start", problems.len())?;
    }
    Ok(problems.is_empty())
}

/// What start-up would refuse in the files the config names.
fn problems(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        if let Some(files) = &l.tls {
            if let Err(e) = crate::tls::server::server_config(files) {
                out.push(format!("listener {i} ({}): {e}", l.addr));
            }
        }
    }
    if let Err(e) = crate::server::build_gate(config) {
        out.push(e.to_string());
    }
    let trust = crate::tls::client::Trust { ca_files: config.tls_cacerts.clone(), discover_cluster_ca: false };
    if let Err(e) = crate::tls::client::root_store(&trust) {
        out.push(format!("tls.cacerts: {e}"));
    }
    if let Some(Secret::File(p)) = &config.layer_index_key {
        match std::fs::read_to_string(p) {
            Ok(k) if k.trim().len() >= 32 => {}
            Ok(_) => out.push(format!("layerindex.keyfile {}: the key must be at least 32 characters", p.display())),
            Err(e) => out.push(format!("layerindex.keyfile {}: cannot read it: {e}", p.display())),
        }
    }
    let root = &config.storage.root;
    if root.exists() && !root.is_dir() {
        out.push(format!("storage root {} exists and is not a directory", root.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config.yml");
        let root = dir.path().join("data");
        std::fs::write(
            &cfg,
            format!(
                "storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  tls:\n    certificate: /nonexistent/c.pem\n    key: /nonexistent/k.pem\nauth:\n  htpasswd:\n    path: /nonexistent/htpasswd\nlayerindex:\n  keyfile: /nonexistent/key\nunknownkey: 1\n",
                root.display()
            ),
        )
        .unwrap();
        let mut out = Vec::new();
        assert!(!run(Some(&cfg), &[], &mut out).unwrap());
        let text = String::from_utf8(out).unwrap();
        for want in ["c.pem", "htpasswd", "layerindex.keyfile", "`unknownkey`", "3 problem(s)"] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }

        std::fs::write(&cfg, "http:\n  addr: 127.0.0.1:5000\n").unwrap();
        let mut out = Vec::new();
        assert!(run(Some(&cfg), &[("HOME".into(), "/home/u".into())], &mut out).unwrap());
        assert!(String::from_utf8(out).unwrap().ends_with(": ok\n"));

        std::fs::write(&cfg, "log:\n  level: loud\n").unwrap();
        let mut out = Vec::new();
        assert!(!run(Some(&cfg), &[], &mut out).unwrap());
        assert!(String::from_utf8(out).unwrap().contains("log.level"));
    }
}
