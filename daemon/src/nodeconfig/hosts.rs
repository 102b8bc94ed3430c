//! containerd's `hosts.toml` for one registry: the node's berthd first (pull
//! and resolve over plain HTTP on loopback), the registry itself as the
//! fallback `server`. containerd adds `?ns=<registry>` to requests it sends
//! to a mirror host, which is how berthd knows which upstream is meant.

/// The fallback server for a registry name (Docker Hub's API host differs
/// from the name images use).
pub fn default_server(registry: &str) -> String {
    match registry {
        "docker.io" => "https://registry-1.docker.io".into(),
        other => format!("https://{other}"),
    }
}

/// The file's content.
pub fn render(server: &str, berthd: &str) -> String {
    format!(
        "# Written by `berthd containerd configure`: containerd pulls through the\n\
         # node's berthd; the registry itself is the fallback. `--remove` undoes it.\n\
         server = \"{server}\"\n\
         \n\
         [host.\"{berthd}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_valid_toml() {
        let text = super::render("https://registry-1.docker.io", "http://127.0.0.1:5000");
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
        let caps = doc["host"]["http://127.0.0.1:5000"]["capabilities"].as_array().unwrap();
        assert_eq!(caps.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>(), ["pull", "resolve"]);
        assert_eq!(super::default_server("ghcr.io"), "https://ghcr.io");
    }
}
