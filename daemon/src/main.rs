//! `berthd`: the command line. All logic lives in the library crate.

#![deny(unsafe_code)]

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berthd", version = berthd::VERSION, about = "Berth: a per-node OCI registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the OCI distribution API (registry:2 compatible config).
    Serve {
        /// registry:2 style YAML config; without one, berthd listens on
        /// 127.0.0.1:5000 and stores under its default data directory.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The config path as registry:2 takes it (`registry serve FILE`).
        #[arg(conflicts_with = "config", value_name = "CONFIG")]
        config_positional: Option<PathBuf>,
    },
    /// Verify the storage: every blob hashes to its digest, every link
    /// names a blob that exists, every manifest's references are there.
    /// Exit status 0 when clean, 1 when problems were found.
    Fsck {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(conflicts_with = "config", value_name = "CONFIG")]
        config_positional: Option<PathBuf>,
        /// Quarantine damaged blobs and unreadable links (under
        /// /berth/quarantine), so the registry stops offering them and a
        /// push repairs them.
        #[arg(long)]
        repair: bool,
    },
    /// One garbage collection while every node keeps serving: tags
    /// retention removes and manifests and blobs nothing reaches go to the
    /// trash, and trash entries an earlier collection left are deleted (see
    /// docs/operations.md). Exit status 0
    /// done, 1 another collection is running, 2 cannot use config or storage.
    Gc {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(conflicts_with = "config", value_name = "CONFIG")]
        config_positional: Option<PathBuf>,
        /// Report what would be done; change nothing (registry:2's `-d`).
        #[arg(long, short = 'd')]
        dry_run: bool,
        /// Leave blobs and manifests written, and trash entries made, less
        /// than this long ago (a Go duration: 1h, 30m, 0s) [default:
        /// storage.gc.delay, else 1h].
        #[arg(long, value_parser = parse_duration)]
        delay: Option<std::time::Duration>,
        /// Also remove manifests no tag reaches (an index's children and
        /// the referrers of what stays are reached) [default:
        /// storage.gc.deleteuntagged] (registry:2's `-m`).
        #[arg(long, short = 'm')]
        delete_untagged: bool,
    },
    /// Integrate with the node's container runtime.
    Containerd {
        #[command(subcommand)]
        command: ContainerdCommand,
    },
    /// Work with berthd's configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a config and the files it names without starting; prints
    /// every problem. Exit status 0 when berthd can start with it, 2 when
    /// not.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(conflicts_with = "config", value_name = "CONFIG")]
        config_positional: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ContainerdCommand {
    /// Point containerd (or k3s) at this node's berthd for every registry it
    /// fronts: writes hosts.toml files and sets config_path.
    Configure {
        /// berthd's config: the listener address and the mirrors come from it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// containerd's hosts directory.
        #[arg(long, default_value = berthd::nodeconfig::DEFAULT_CERTS_D)]
        certs_d: PathBuf,
        /// containerd's config.toml.
        #[arg(long, default_value = berthd::nodeconfig::DEFAULT_CONTAINERD_CONFIG)]
        containerd_config: PathBuf,
        /// Configure k3s (registries.yaml) instead of containerd; detected
        /// when /etc/rancher/k3s exists.
        #[arg(long)]
        k3s: bool,
        /// k3s's registries.yaml (implies --k3s).
        #[arg(long)]
        k3s_registries: Option<PathBuf>,
        /// Print the changes as a diff and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Undo exactly what an earlier run wrote.
        #[arg(long)]
        remove: bool,
        /// Restart containerd (or k3s) when its configuration changed.
        #[arg(long)]
        restart: bool,
        /// The systemd unit --restart restarts (default: containerd, or
        /// k3s's; needed with a --containerd-config of another containerd).
        #[arg(long)]
        unit: Option<String>,
        /// Exit status 3 when files changed (or, with --dry-run, would
        /// change), 0 when nothing did, as Terraform's option of that name.
        #[arg(long)]
        detailed_exitcode: bool,
        /// Also make berth-snapshotter containerd's snapshotter: adds
        /// `[proxy_plugins.berth]` and sets the CRI plugin's
        /// `snapshotter = "berth"`, `disable_snapshot_annotations = false`.
        #[arg(long)]
        snapshotter: bool,
        /// The socket berth-snapshotter listens on.
        #[arg(long, default_value = berthd::nodeconfig::DEFAULT_SNAPSHOTTER_SOCKET)]
        snapshotter_address: PathBuf,
    },
}

fn main() -> ExitCode {
    berthd::allocator::limit_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, config_positional } => serve(config.or(config_positional)),
        Command::Fsck { config, config_positional, repair } => fsck(config.or(config_positional), repair),
        Command::Gc { config, config_positional, dry_run, delay, delete_untagged } => {
            gc(config.or(config_positional), berthd::commands::gc::Flags { dry_run, delay, delete_untagged })
        }
        Command::Containerd {
            command:
                ContainerdCommand::Configure {
                    config,
                    certs_d,
                    containerd_config,
                    k3s,
                    k3s_registries,
                    dry_run,
                    remove,
                    restart,
                    unit,
                    detailed_exitcode,
                    snapshotter,
                    snapshotter_address,
                },
        } => {
            let k3s_detected = k3s || std::path::Path::new("/etc/rancher/k3s").is_dir();
            let k3s_registries =
                k3s_registries.or_else(|| k3s_detected.then(|| PathBuf::from(berthd::nodeconfig::k3s::DEFAULT_PATH)));
            let opts = berthd::nodeconfig::Options {
                certs_d,
                containerd_config,
                k3s_registries,
                dry_run,
                remove,
                restart,
                snapshotter: snapshotter.then_some(snapshotter_address),
                unit,
            };
            configure(config, &opts, detailed_exitcode)
        }
        Command::Config { command: ConfigCommand::Check { config, config_positional } } => {
            config_check(config.or(config_positional))
        }
    }
}

/// Exit status of a configuration error (also the unit's
/// `RestartPreventExitStatus`): retrying cannot help.
const EXIT_CONFIG: u8 = 2;
/// `containerd configure --detailed-exitcode`: files changed.
const EXIT_CHANGED: u8 = 3;

/// The config with the environment's `REGISTRY_*` overrides; a bad one
/// is reported and exits with [`EXIT_CONFIG`].
fn load_config(path: Option<&std::path::Path>) -> Result<berthd::config::Loaded, ExitCode> {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    berthd::config::load(path, &vars).map_err(|e| {
        eprintln!("berthd: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// The async runtime; if it cannot start, says so and exits with `status`.
fn runtime(status: ExitCode) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| {
        eprintln!("berthd: cannot start the async runtime: {e}");
        status
    })
}

fn config_check(path: Option<PathBuf>) -> ExitCode {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    match berthd::commands::config_check::run(path.as_deref(), &vars, &mut std::io::stdout()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_CONFIG),
        Err(e) => {
            eprintln!("berthd config check: {e}");
            ExitCode::FAILURE
        }
    }
}

fn configure(path: Option<PathBuf>, opts: &berthd::nodeconfig::Options, detailed: bool) -> ExitCode {
    let config = match load_config(path.as_deref()) {
        Ok(l) => l.config,
        Err(code) => return code,
    };
    match berthd::nodeconfig::run(opts, &config, &mut std::io::stdout()) {
        Ok(true) if detailed => ExitCode::from(EXIT_CHANGED),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berthd containerd configure: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fsck(path: Option<PathBuf>, repair: bool) -> ExitCode {
    let config = match load_config(path.as_deref()) {
        Ok(l) => l.config,
        Err(code) => return code,
    };
    let rt = match runtime(ExitCode::from(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(berthd::commands::fsck::run(&config, repair, &mut std::io::stdout())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("berthd fsck: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    berthd::config::values::parse_go_duration(s).ok_or_else(|| format!("{s:?} is not a duration such as 1h, 30m or 0s"))
}

fn gc(path: Option<PathBuf>, flags: berthd::commands::gc::Flags) -> ExitCode {
    let config = match load_config(path.as_deref()) {
        Ok(l) => l.config,
        Err(code) => return code,
    };
    let rt = match runtime(ExitCode::from(2)) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(berthd::commands::gc::run(&config, &flags, &mut std::io::stdout())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e @ berthd::Error::Gc(berthd::registry::gc::GcError::Busy { .. })) => {
            eprintln!("berthd gc: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("berthd gc: {e}");
            ExitCode::from(2)
        }
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let loaded = match load_config(path.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let config = loaded.config;
    berthd::logging::init(&config.log);
    tracing::info!(
        version = berthd::VERSION,
        data_dir = %config.storage.root.display(),
        "berthd {} starting; data directory {}",
        berthd::VERSION,
        config.storage.root.display()
    );
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = match runtime(ExitCode::FAILURE) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(berthd::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            if e.is_configuration() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
