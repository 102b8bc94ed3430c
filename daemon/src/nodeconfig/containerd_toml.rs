//! Makes containerd read `hosts.toml` files: sets the CRI registry
//! `config_path` in containerd's `config.toml`, editing the TOML in place so
//! the user's comments and other settings stay as they are.
//!
//! containerd 1.6/1.7 files (`version = 2`) keep it under
//! `[plugins."io.containerd.grpc.v1.cri".registry]`; containerd 2.x files
//! (`version = 3`) under `[plugins."io.containerd.cri.v1.images".registry]`.

use toml_edit::{DocumentMut, Item, Table};

const V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
const V3_PLUGIN: &str = "io.containerd.cri.v1.images";

/// What the edit found.
#[derive(Debug, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    /// The file still has deprecated `registry.mirrors`/`configs` entries,
    /// which containerd ignores once `config_path` is set.
    pub legacy_mirrors: bool,
}

fn table<'a>(parent: &'a mut Table, key: &str) -> Result<&'a mut Table, String> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut().ok_or_else(|| format!("`{key}` in containerd's config is not a table"))
}

/// Returns `text` with `config_path` including `certs_d`. An existing
/// different `config_path` is kept after ours (containerd accepts a
/// `:`-separated list).
pub fn set_config_path(text: &str, certs_d: &str) -> Result<Edited, String> {
    let mut doc: DocumentMut = if text.trim().is_empty() {
        "version = 2\n".parse().expect("valid TOML")
    } else {
        text.parse().map_err(|e| format!("containerd's config.toml is not valid TOML: {e}"))?
    };
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
    let plugin = match version {
        2 => V2_PLUGIN,
        3 => V3_PLUGIN,
        v => {
            return Err(format!(
                "containerd config version {v} is not supported; migrate it with `containerd config migrate` (containerd ≥ 1.6 uses version 2)"
            ))
        }
    };
    let root = doc.as_table_mut();
    let plugins = table(root, "plugins")?;
    let cri = table(plugins, plugin)?;
    let registry = table(cri, "registry")?;
    let legacy_mirrors = registry.contains_key("mirrors") || registry.contains_key("configs");
    let current = registry.get("config_path").and_then(|v| v.as_str()).unwrap_or("").to_string();
    if !current.split(':').any(|p| p.trim_end_matches('/') == certs_d.trim_end_matches('/')) {
        let value = if current.is_empty() { certs_d.to_string() } else { format!("{certs_d}:{current}") };
        registry["config_path"] = toml_edit::value(value);
    }
    Ok(Edited { text: doc.to_string(), legacy_mirrors })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"# containerd 1.6 config, as Ubuntu ships it
version = 2
root = "/var/lib/containerd"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"   # keep me
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
"#;

    #[test]
    fn sets_config_path_keeping_comments() {
        let e = set_config_path(V2, "/etc/containerd/certs.d").unwrap();
        assert!(e.text.contains("# containerd 1.6 config, as Ubuntu ships it"));
        assert!(e.text.contains("# keep me"));
        assert!(e.text.contains(r#"config_path = "/etc/containerd/certs.d""#), "{}", e.text);
        // Idempotent.
        assert_eq!(set_config_path(&e.text, "/etc/containerd/certs.d").unwrap().text, e.text);
    }

    #[test]
    fn version_3_and_missing_files() {
        let v3 =
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/docker/certs.d'\n";
        let e = set_config_path(v3, "/etc/containerd/certs.d").unwrap();
        let doc: DocumentMut = e.text.parse().unwrap();
        assert_eq!(
            doc["plugins"][V3_PLUGIN]["registry"]["config_path"].as_str(),
            Some("/etc/containerd/certs.d:/etc/docker/certs.d")
        );
        let fresh = set_config_path("", "/x").unwrap();
        let doc: DocumentMut = fresh.text.parse().unwrap();
        assert_eq!(doc["plugins"][V2_PLUGIN]["registry"]["config_path"].as_str(), Some("/x"));
        assert!(set_config_path("version = 1\n", "/x").is_err());
        assert!(set_config_path("not toml [", "/x").is_err());
        let legacy = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n";
        assert!(set_config_path(legacy, "/x").unwrap().legacy_mirrors);
    }
}
