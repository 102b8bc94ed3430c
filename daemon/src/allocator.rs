//! glibc's allocator, set up for a long-running server on a few cores.
//!
//! glibc gives a thread that finds every arena busy an arena of its own, up
//! to eight per core, and keeps what is freed in an arena for that arena's
//! later use. Under load tokio's blocking pool (file reads and writes,
//! fsync) runs dozens of threads, so a burst left memory spread over a
//! dozen arenas: the registry benchmark peaked at 47 MiB resident where two
//! arenas peak at 24 MiB, at the same throughput (docs/benchmarks.md).
#![allow(unsafe_code)] // one mallopt call

/// How many malloc arenas berthd's threads share.
const ARENAS: i32 = 2;

/// Limits glibc to [`ARENAS`] malloc arenas, unless the operator chose a
/// number with `MALLOC_ARENA_MAX`. Call it first thing in `main`, before
/// any thread starts. Nothing to do on other C libraries.
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets a tunable of the allocator; it takes no pointers
    // and glibc makes it safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}
