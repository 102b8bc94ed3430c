//! The maintenance commands beside `serve` (`berthd fsck`): each builds
//! what it needs from the config, runs one job of the library and reports
//! on the terminal. `main.rs` only parses the command line.

pub mod fsck;
mod progress;
