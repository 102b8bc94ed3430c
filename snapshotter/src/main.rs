//! `berth-snapshotter`: the command line. All logic lives in the library.
#![deny(unsafe_code)]

use berth_snapshotter::config::Config;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "berth-snapshotter", version = berth_snapshotter::VERSION, about = "Berth's containerd snapshotter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve containerd's snapshots API on a unix socket (a proxy plugin).
    Serve {
        /// YAML file with `address`, `root` and `berthd`; flags win over it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Unix socket containerd dials [default: /run/berth/snapshotter.sock].
        #[arg(long)]
        address: Option<PathBuf>,
        /// Metadata and snapshot directory [default: /var/lib/berth-snapshotter].
        #[arg(long)]
        root: Option<PathBuf>,
        /// The node's berthd [default: http://127.0.0.1:5000].
        #[arg(long)]
        berthd: Option<String>,
        /// Background fetch rate of lazy layers, bytes/s of stored (compressed) layer for the whole node (0: unlimited) [default: 8 MiB/s].
        #[arg(long)]
        fill_rate: Option<u64>,
        /// Seconds a container's read of a lazy layer may wait for berthd before it fails [default: 10].
        #[arg(long)]
        read_timeout: Option<u64>,
        /// Bytes the background fill leaves free on the root's disk [default: a tenth of it, at most 2 GiB].
        #[arg(long)]
        min_free: Option<u64>,
        /// Serve Prometheus metrics on this address (`127.0.0.1:5002`) at /metrics [default: none].
        #[arg(long)]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// Pull an image into containerd with lazily mounted layers (for nodes
    /// without Kubernetes), so `ctr run --snapshotter berth` starts at once.
    Pull {
        /// containerd's socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        containerd: PathBuf,
        /// containerd namespace to pull into.
        #[arg(long, default_value = "default")]
        namespace: String,
        /// The snapshotter's name in containerd's config.
        #[arg(long, default_value = "berth")]
        snapshotter: String,
        /// The node's berthd, which the image is fetched through.
        #[arg(long, default_value = berth_snapshotter::config::DEFAULT_BERTHD)]
        berthd: String,
        /// Fetch from REF's own registry over plain HTTP instead of berthd.
        #[arg(long)]
        plain_http: bool,
        /// Image reference, e.g. registry.example.com/app:v1.
        reference: String,
    },
    /// Serve one lazily mounted layer until it is unmounted (started by
    /// `serve`; not for direct use).
    #[command(hide = true)]
    MountLayer { lazy_dir: PathBuf, mountpoint: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour only for a person at a terminal: never into log files or the journal.
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
    match cli.command {
        Command::Serve { config, address, root, berthd, fill_rate, read_timeout, min_free, metrics_address } => {
            let mut cfg = match config {
                Some(p) => match Config::load(&p) {
                    Ok(c) => c,
                    Err(e) => return fail(&e),
                },
                None => Config::default(),
            };
            cfg.address = address.unwrap_or(cfg.address);
            cfg.root = root.unwrap_or(cfg.root);
            cfg.berthd = berthd.unwrap_or(cfg.berthd);
            cfg.fill_rate = fill_rate.unwrap_or(cfg.fill_rate);
            cfg.read_timeout = read_timeout.unwrap_or(cfg.read_timeout);
            cfg.min_free = min_free.or(cfg.min_free);
            cfg.metrics_address = metrics_address.or(cfg.metrics_address);
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            match rt.block_on(berth_snapshotter::server::serve(&cfg, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
        Command::Pull { containerd, namespace, snapshotter, berthd, plain_http, reference } => {
            let opts = berth_snapshotter::pull::Options { containerd, namespace, snapshotter, berthd, plain_http };
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let bar = LayerBar::new();
            let pulled = rt.block_on(berth_snapshotter::pull::pull(&opts, &reference, &bar));
            bar.bar.finish_and_clear();
            match pulled {
                Ok(s) => {
                    println!(
                        "{} {}: {} layer(s) mounted lazily, {} unpacked, {} already present",
                        s.name, s.digest, s.lazy, s.unpacked, s.present
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::MountLayer { lazy_dir, mountpoint } => {
            match berth_snapshotter::lazy::serve_mount(&lazy_dir, &mountpoint) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// `pull`'s progress on a terminal: layers done of all, and the one in
/// hand (indicatif hides it when stderr is not a terminal; the summary line
/// is printed either way).
struct LayerBar {
    bar: indicatif::ProgressBar,
}

impl LayerBar {
    fn new() -> LayerBar {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {pos}/{len} layers {wide_bar} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        LayerBar { bar }
    }
}

impl berth_snapshotter::pull::PullProgress for LayerBar {
    fn start(&self, total: usize) {
        self.bar.set_length(total as u64);
    }

    fn layer(&self, digest: &str) {
        self.bar.set_message(format!("{}…", &digest[..digest.len().min(19)]));
    }

    fn done(&self, digest: &str, outcome: berth_snapshotter::pull::LayerOutcome) {
        use berth_snapshotter::pull::LayerOutcome::*;
        let how = match outcome {
            Lazy => "mounted lazily",
            Unpacked => "unpacked",
            Present => "already present",
        };
        self.bar.println(format!("{}  {how}", &digest[..digest.len().min(19)]));
        self.bar.inc(1);
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("berth-snapshotter: {e}");
    ExitCode::FAILURE
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}
