//! k3s reads mirrors from `/etc/rancher/k3s/registries.yaml` and writes
//! containerd's hosts files itself; on k3s nodes berthd is added there as
//! the first endpoint of each registry it fronts.
//!
//! The YAML is re-serialised, so comments in that file are not kept; the
//! original bytes are saved and `--remove` puts them back exactly.

use super::EditError;
use yaml_serde::{Mapping, Value};

pub const DEFAULT_PATH: &str = "/etc/rancher/k3s/registries.yaml";

/// Returns `text` with `endpoint` first in `mirrors.<name>.endpoint` for
/// every name.
pub fn add_mirrors(text: &str, names: &[String], endpoint: &str) -> Result<String, EditError> {
    let mut doc: Value =
        if text.trim().is_empty() { Value::Mapping(Mapping::new()) } else { yaml_serde::from_str(text)? };
    let root = doc.as_mapping_mut().ok_or_else(|| EditError::NotAMapping("the document".into()))?;
    let mirrors = root
        .entry(Value::from("mirrors"))
        .or_insert_with(|| Value::Mapping(Mapping::new()))
        .as_mapping_mut()
        .ok_or_else(|| EditError::NotAMapping("`mirrors`".into()))?;
    for name in names {
        let entry = mirrors
            .entry(Value::from(name.as_str()))
            .or_insert_with(|| Value::Mapping(Mapping::new()))
            .as_mapping_mut()
            .ok_or_else(|| EditError::NotAMapping(format!("`mirrors.{name}`")))?;
        let endpoints = entry
            .entry(Value::from("endpoint"))
            .or_insert_with(|| Value::Sequence(Vec::new()))
            .as_sequence_mut()
            .ok_or_else(|| EditError::NotAList(name.clone()))?;
        endpoints.retain(|e| e.as_str() != Some(endpoint));
        endpoints.insert(0, Value::from(endpoint));
    }
    let out = yaml_serde::to_string(&doc)?;
    // Idempotence: keep the input as it was when nothing changed.
    let unchanged = yaml_serde::from_str::<Value>(text).map(|v| v == doc).unwrap_or(false);
    Ok(if unchanged { text.to_string() } else { out })
}

/// The systemd unit k3s runs as on this node: `k3s` on servers,
/// `k3s-agent` on agents (the install script's names).
pub fn unit() -> &'static str {
    let has = |u: &str| {
        ["/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"]
            .iter()
            .any(|d| std::path::Path::new(d).join(u).exists())
    };
    if has("k3s-agent.service") && !has("k3s.service") {
        "k3s-agent"
    } else {
        "k3s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_berthd_first_and_is_idempotent() {
        let input = "mirrors:\n  docker.io:\n    endpoint:\n      - https://mirror.example\nconfigs:\n  registry.example:\n    auth:\n      username: u\n";
        let names = vec!["docker.io".to_string(), "ghcr.io".to_string()];
        let out = add_mirrors(input, &names, "http://127.0.0.1:5000").unwrap();
        let v: Value = yaml_serde::from_str(&out).unwrap();
        assert_eq!(v["mirrors"]["docker.io"]["endpoint"][0].as_str(), Some("http://127.0.0.1:5000"));
        assert_eq!(v["mirrors"]["docker.io"]["endpoint"][1].as_str(), Some("https://mirror.example"));
        assert_eq!(v["mirrors"]["ghcr.io"]["endpoint"][0].as_str(), Some("http://127.0.0.1:5000"));
        assert_eq!(v["configs"]["registry.example"]["auth"]["username"].as_str(), Some("u"));
        assert_eq!(add_mirrors(&out, &names, "http://127.0.0.1:5000").unwrap(), out);
    }
}
