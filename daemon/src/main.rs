//! `berthd`: the command line. All logic lives in the library crate.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, config_positional } => serve(config.or(config_positional)),
    }
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let vars: Vec<(String, String)> = std::env::vars().collect();
    let loaded = match berthd::config::load(path.as_deref(), &vars) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("berthd: {e}");
            return ExitCode::from(2);
        }
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
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berthd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(berthd::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
