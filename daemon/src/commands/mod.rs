//! The commands beside `serve` (`berthd fsck`, `berthd config check`): each builds
//! what it needs from the config, runs one job of the library and reports
//! on the terminal. `main.rs` only parses the command line.

pub mod config_check;
pub mod fsck;
pub mod gc;
mod progress;
