//! arm64 on this amd64 machine: the cross-built binaries
//! (`tests/scripts/build-arm64.sh`) and a Debian 12 arm64 system root whose
//! programs run through qemu-user (`tests/scripts/install-qemu.sh`
//! registers it with binfmt_misc).

use super::debian_root::{root_tarball, Recipe};
use crate::common::workspace_root;
use std::path::{Path, PathBuf};

pub const TARGET: &str = "aarch64-unknown-linux-gnu";

/// berthd and berth-snapshotter for linux/arm64: `BERTH_ARM64_DIR`, else
/// `target/aarch64-unknown-linux-gnu/release/`. Missing ones fail the test
/// with what to run.
pub fn arm64_binaries() -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("BERTH_ARM64_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target").join(TARGET).join("release"));
    let pick = |name: &str| {
        let p = dir.join(name);
        assert!(
            p.is_file(),
            "{} is missing (CI={}): run `bash tests/scripts/build-arm64.sh` (tests/run.sh does)",
            p.display(),
            crate::common::in_ci()
        );
        p
    };
    (pick("berthd"), pick("berth-snapshotter"))
}

/// Whether this kernel runs arm64 programs (qemu-user through binfmt_misc).
pub fn require_arm64_emulation() {
    let registered = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    assert!(
        registered.is_file(),
        "qemu-aarch64 is not registered with binfmt_misc (CI={}): run `bash tests/scripts/install-qemu.sh`",
        crate::common::in_ci()
    );
}

/// A Debian 12 arm64 root (the userland of Raspberry Pi OS 64-bit), with
/// python3 so that Ansible can manage it; cached like every test root.
pub fn debian12_arm64_root() -> PathBuf {
    require_arm64_emulation();
    root_tarball(&Recipe {
        name: "arm64-node",
        version: "1",
        suite: "bookworm",
        packages: &["python3"],
        arch: Some("arm64"),
    })
}

/// The ELF machine of the file at `path` (183: AArch64, 62: x86-64).
pub fn elf_machine(path: &Path) -> u16 {
    use std::io::Read;
    let mut head = [0u8; 20];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(&head[..4] == b"\x7fELF", "{} is not an ELF file", path.display());
    u16::from_le_bytes([head[18], head[19]])
}
