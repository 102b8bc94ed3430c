//! Progress on a terminal (indicatif) for the maintenance commands; on
//! anything else (a log, a pipe) only problems and the summary are printed.

use crate::registry::fsck::Progress;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub fn new() -> Bar {
        // Hidden by indicatif itself when stderr is not a terminal.
        let bar = ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Bar { bar }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bar {
    fn phase(&self, name: &'static str, total: Option<u64>) {
        let style = match (name, total) {
            ("blobs", _) => "{spinner} {prefix}: {bytes} hashed ({bytes_per_sec}) {elapsed}",
            (_, Some(_)) => "{spinner} {prefix}: {pos}/{len} {wide_bar} {elapsed}",
            _ => "{spinner} {prefix}: {pos} checked {elapsed}",
        };
        if let Ok(s) = ProgressStyle::with_template(style) {
            self.bar.set_style(s);
        }
        self.bar.set_prefix(name);
        self.bar.set_position(0);
        if let Some(t) = total {
            self.bar.set_length(t);
        }
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn problem(&self, what: &str) {
        if self.bar.is_hidden() {
            eprintln!("{what}");
        } else {
            self.bar.println(what);
        }
    }
}
