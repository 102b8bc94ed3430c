//! Why `berthd containerd configure` stopped. Nothing is half-written:
//! each file is replaced whole, so the node is as before or as planned.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot remove {}: {source}", path.display())]
    Remove { path: PathBuf, source: std::io::Error },
    #[error("{} is corrupt: {source}", path.display())]
    CorruptState { path: PathBuf, source: serde_json::Error },
    #[error("cannot report progress: {0}")]
    Output(#[from] std::io::Error),
    #[error("nothing to configure: berthd's config names no `mirrors` and no `containerd.registries`")]
    NothingToConfigure,
    #[error(
        "--snapshotter is not supported with k3s: k3s generates containerd's config itself; \
         configure the proxy plugin in /var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl"
    )]
    SnapshotterWithK3s,
    #[error("cannot run systemctl restart {unit}: {source}")]
    Systemctl { unit: String, source: std::io::Error },
    #[error("systemctl restart {unit} failed ({status})")]
    RestartFailed { unit: String, status: std::process::ExitStatus },
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(
        "every listener in berthd's config has TLS, and containerd reaches berthd over plain HTTP on this node; \
         add a listener without tls on loopback (listeners: [{{addr: 127.0.0.1:5000}}, …])"
    )]
    NoPlainListener,
    #[error(
        "--restart: berthd does not know which service runs the containerd that reads {}; name it with --unit",
        config.display()
    )]
    UnknownUnit { config: PathBuf },
}

/// A containerd or k3s file berthd cannot edit safely as it is.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("containerd's config.toml is not valid TOML: {0}")]
    Toml(#[from] toml_edit::TomlError),
    #[error(
        "containerd config version {0} is not supported; migrate it with `containerd config migrate` (containerd ≥ 1.6 uses version 2)"
    )]
    TomlVersion(i64),
    #[error("`{0}` in containerd's config is not a table")]
    NotATable(String),
    #[error("registries.yaml is not valid YAML: {0}")]
    Yaml(#[from] yaml_serde::Error),
    #[error("{0} in registries.yaml must be a mapping")]
    NotAMapping(String),
    #[error("`mirrors.{0}.endpoint` must be a list")]
    NotAList(String),
}
