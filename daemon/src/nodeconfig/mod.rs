//! `berthd containerd configure`: points a node's containerd (or k3s) at the
//! node's berthd for every registry berthd fronts — the cluster's own names
//! (`containerd.registries`) and every configured mirror.
//!
//! Idempotent (a second run changes nothing and says so), `--dry-run`
//! prints the diff, and `--remove` undoes exactly what it wrote: the first
//! time a file is changed its original content (or absence) is recorded in a
//! state file beside the hosts files, and removal restores it byte for byte
//! unless the file was changed since, in which case it is left alone and
//! named. It says when containerd or k3s must be restarted and restarts
//! only with `--restart`.

pub mod containerd_toml;
mod diff;
mod error;
pub mod hosts;
pub mod k3s;
mod state;

pub use error::{ConfigureError, EditError};

use crate::config::Config;
use state::{Managed, State};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DEFAULT_CERTS_D: &str = "/etc/containerd/certs.d";
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
const STATE_FILE: &str = ".berthd-configure.json";

pub struct Options {
    pub certs_d: PathBuf,
    pub containerd_config: PathBuf,
    /// `Some` on k3s nodes: registries.yaml to edit instead of containerd's files.
    pub k3s_registries: Option<PathBuf>,
    pub dry_run: bool,
    pub remove: bool,
    pub restart: bool,
    /// `Some(socket)`: also register berth-snapshotter (listening on
    /// `socket`) as containerd's proxy snapshotter and make CRI use it.
    pub snapshotter: Option<PathBuf>,
    /// The systemd unit to restart; by default `containerd` (or k3s's),
    /// and none for a `--containerd-config` that is not the system's.
    pub unit: Option<String>,
}

impl Options {
    /// The unit that reads the files configure edits, when known.
    fn unit(&self) -> Option<String> {
        match (&self.unit, &self.k3s_registries) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) => Some(k3s::unit().to_string()),
            (None, None) if self.containerd_config == Path::new(DEFAULT_CONTAINERD_CONFIG) => Some("containerd".into()),
            (None, None) => None,
        }
    }
}

/// Where berth-snapshotter listens unless told otherwise.
pub const DEFAULT_SNAPSHOTTER_SOCKET: &str = "/run/berth/snapshotter.sock";

/// One file to change: `after == None` deletes it.
struct Change {
    path: PathBuf,
    before: Option<String>,
    after: Option<String>,
    /// containerd (or k3s) only reads this file at start.
    needs_restart: bool,
    /// The change gives the file back its original state: configure
    /// forgets the file afterwards.
    restores: bool,
}

fn read(path: &Path) -> Result<Option<String>, ConfigureError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigureError::Read { path: path.to_path_buf(), source }),
    }
}

/// Writes atomically and durably ([`crate::durable`]), creating directories.
fn write(path: &Path, content: &str) -> Result<(), ConfigureError> {
    crate::durable::write_file(path, content.as_bytes())
        .map_err(|source| ConfigureError::Write { path: path.to_path_buf(), source })
}

/// The URL containerd should use for this node's berthd: the first
/// plain-HTTP listener it can reach on this node. containerd never speaks
/// TLS to berthd, so a node whose listeners all have TLS is refused.
pub fn berthd_url(config: &Config) -> Result<String, ConfigureError> {
    let addr = config
        .listeners
        .iter()
        .filter(|l| l.tls.is_none())
        .map(|l| l.addr)
        .min_by_key(|a| !(a.ip().is_loopback() || a.ip().is_unspecified()))
        .ok_or(ConfigureError::NoPlainListener)?;
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(v) => format!("[{v}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{ip}:{}", addr.port()))
}

/// Registries berthd fronts, with the server containerd falls back to.
fn registries(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for m in &config.mirrors {
        out.push((m.name.clone(), m.url.clone()));
    }
    for name in &config.cluster_registries {
        if !out.iter().any(|(n, _)| n == name) {
            out.push((name.clone(), hosts::default_server(name)));
        }
    }
    out
}

/// Runs configure (or `--remove`), reporting to `out`. Returns whether
/// anything changed.
pub fn run(opts: &Options, config: &Config, out: &mut dyn Write) -> Result<bool, ConfigureError> {
    let state_path = opts.certs_d.join(STATE_FILE);
    let state: State = match read(&state_path)? {
        Some(s) => serde_json::from_str(&s)
            .map_err(|source| ConfigureError::CorruptState { path: state_path.clone(), source })?,
        None => State::default(),
    };
    let changes = if opts.remove { removal(&state, out)? } else { plan(opts, config, &state)? };
    let restart = changes.iter().any(|c| c.needs_restart);
    let unit = opts.unit();
    if restart && opts.restart && unit.is_none() {
        return Err(ConfigureError::UnknownUnit { config: opts.containerd_config.clone() });
    }
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}");
    if changes.is_empty() {
        w(
            out,
            if opts.remove {
                "nothing to remove: berthd has not configured this node".into()
            } else {
                "nothing to change: containerd already pulls through berthd".into()
            },
        )?;
        return Ok(false);
    }
    if opts.dry_run {
        for c in &changes {
            diff::write(out, &c.path, c.before.as_deref().unwrap_or(""), c.after.as_deref().unwrap_or(""))?;
        }
        w(out, format!("dry run: {} file(s) would change; nothing was written", changes.len()))?;
        return Ok(true);
    }
    let mut state = state;
    for c in &changes {
        if c.restores {
            state.files.retain(|m| m.path != c.path);
        }
        match &c.after {
            Some(content) => {
                if !c.restores {
                    state.note_new_dirs(&c.path);
                }
                write(&c.path, content)?;
                if c.restores {
                    w(out, format!("restored {}", c.path.display()))?;
                    continue;
                }
                match state.files.iter_mut().find(|m| m.path == c.path) {
                    Some(m) => m.written = content.clone(),
                    None => state.files.push(Managed {
                        path: c.path.clone(),
                        original: c.before.clone(),
                        written: content.clone(),
                    }),
                }
                w(out, format!("wrote {}", c.path.display()))?;
            }
            None => {
                std::fs::remove_file(&c.path)
                    .map_err(|source| ConfigureError::Remove { path: c.path.clone(), source })?;
                w(out, format!("removed {}", c.path.display()))?;
            }
        }
    }
    if opts.remove {
        state.files.clear();
    }
    if state.files.is_empty() {
        // Nothing of ours is left: the state file goes, then the
        // directories configure made, if nothing else lives in them.
        let _ = std::fs::remove_file(&state_path);
        for d in state.remove_created_dirs() {
            w(out, format!("removed {}", d.display()))?;
        }
    }
    if !state.files.is_empty() || !state.created_dirs.is_empty() {
        write(&state_path, &serde_json::to_string_pretty(&state).expect("state serializes"))?;
    }
    if restart {
        let Some(unit) = unit else {
            w(out, format!("containerd must be restarted to read the change: the one that reads {} (name its unit with --unit to have configure restart it)", opts.containerd_config.display()))?;
            return Ok(true);
        };
        if opts.restart {
            let status = std::process::Command::new("systemctl")
                .args(["restart", &unit])
                .status()
                .map_err(|source| ConfigureError::Systemctl { unit: unit.clone(), source })?;
            if !status.success() {
                return Err(ConfigureError::RestartFailed { unit, status });
            }
            w(out, format!("restarted {unit}"))?;
        } else {
            w(out, format!("{unit} must be restarted to read the change: systemctl restart {unit} (or run again with --restart)"))?;
        }
    } else {
        w(out, "no restart needed: containerd reads hosts.toml files on every pull".into())?;
    }
    Ok(true)
}

fn plan(opts: &Options, config: &Config, state: &State) -> Result<Vec<Change>, ConfigureError> {
    let regs = registries(config);
    if regs.is_empty() {
        return Err(ConfigureError::NothingToConfigure);
    }
    let url = berthd_url(config)?;
    let mut changes = Vec::new();
    let mut push = |path: PathBuf, after: String, needs_restart: bool| -> Result<(), ConfigureError> {
        let before = read(&path)?;
        if before.as_deref() != Some(after.as_str()) {
            changes.push(Change { path, before, after: Some(after), needs_restart, restores: false });
        }
        Ok(())
    };
    match &opts.k3s_registries {
        Some(_) if opts.snapshotter.is_some() => return Err(ConfigureError::SnapshotterWithK3s),
        Some(path) => {
            let names: Vec<String> = regs.iter().map(|(n, _)| n.clone()).collect();
            let current = read(path)?.unwrap_or_default();
            push(path.clone(), k3s::add_mirrors(&current, &names, &url)?, true)?;
        }
        None => {
            for (name, server) in &regs {
                push(opts.certs_d.join(name).join("hosts.toml"), hosts::render(server, &url), false)?;
            }
            let current = read(&opts.containerd_config)?.unwrap_or_default();
            let certs_d = opts.certs_d.display().to_string();
            let edited = containerd_toml::set_config_path(&current, &certs_d)?;
            if edited.legacy_mirrors {
                tracing::warn!(
                    "{} still has registry.mirrors/configs entries; containerd ignores them once config_path is set",
                    opts.containerd_config.display()
                );
            }
            // Without --snapshotter, take out what an earlier --snapshotter set.
            let written_before = state.files.iter().find(|m| m.path == opts.containerd_config);
            let text = match (&opts.snapshotter, written_before) {
                (Some(socket), _) => containerd_toml::set_snapshotter(&edited.text, &socket.display().to_string())?,
                (None, Some(m)) => {
                    containerd_toml::unset_snapshotter(&edited.text, m.original.as_deref().unwrap_or(""))?
                }
                (None, None) => edited.text,
            };
            push(opts.containerd_config.clone(), text, true)?;
        }
    }
    if opts.k3s_registries.is_none() {
        // hosts files written for registries no longer configured go back to
        // what was there (unless someone changed them since).
        let wanted: Vec<PathBuf> = regs.iter().map(|(n, _)| opts.certs_d.join(n).join("hosts.toml")).collect();
        for m in &state.files {
            let ours = m.path.starts_with(&opts.certs_d) && m.path.file_name() == Some("hosts.toml".as_ref());
            if ours && !wanted.contains(&m.path) {
                let current = read(&m.path)?;
                if current.as_deref() == Some(m.written.as_str()) {
                    changes.push(Change {
                        path: m.path.clone(),
                        before: current,
                        after: m.original.clone(),
                        needs_restart: false,
                        restores: true,
                    });
                }
            }
        }
    }
    Ok(changes)
}

fn removal(state: &State, out: &mut dyn Write) -> Result<Vec<Change>, ConfigureError> {
    let mut changes = Vec::new();
    for m in &state.files {
        let current = read(&m.path)?;
        if current.as_deref() != Some(m.written.as_str()) {
            writeln!(out, "left alone: {} was changed since berthd wrote it", m.path.display())?;
            continue;
        }
        let needs_restart = m.path.extension().is_some_and(|e| e != "toml") || m.path.ends_with("config.toml");
        changes.push(Change {
            path: m.path.clone(),
            before: current,
            after: m.original.clone(),
            needs_restart,
            restores: true,
        });
    }
    Ok(changes)
}
