//! Records the git commit berthd is built from (`BERTH_COMMIT`, for
//! `berth_build_info`), read from the repository's files — no git binary
//! needed; "unknown" outside a git checkout. `BERTH_COMMIT` in the
//! environment wins (release builds from a tarball).

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=BERTH_COMMIT");
    let commit = std::env::var("BERTH_COMMIT").ok().or_else(|| {
        let git = Path::new(&std::env::var("CARGO_MANIFEST_DIR").ok()?).join("../.git");
        println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
        let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
        let head = head.trim();
        let Some(reference) = head.strip_prefix("ref: ") else { return Some(head.to_string()) };
        println!("cargo:rerun-if-changed={}", git.join(reference).display());
        println!("cargo:rerun-if-changed={}", git.join("packed-refs").display());
        std::fs::read_to_string(git.join(reference)).ok().map(|s| s.trim().to_string()).or_else(|| {
            let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
            packed.lines().find_map(|l| l.strip_suffix(reference)?.split_whitespace().next().map(str::to_string))
        })
    });
    let commit = commit.filter(|c| c.len() >= 12 && c.bytes().all(|b| b.is_ascii_hexdigit()));
    println!("cargo:rustc-env=BERTH_COMMIT={}", commit.as_deref().map_or("unknown", |c| &c[..12]));
}
