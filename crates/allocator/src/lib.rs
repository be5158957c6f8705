//! The allocator settings every chatlake process runs with: the binary calls [`tune`] first
//! thing, and so do the criterion benchmarks, so that they measure what runs.
//!
//! Why a crate of its own, outside `chatlake-core`: the settings are the process's, not the
//! library's (a program embedding the components keeps its own allocator), so only binaries
//! should apply them — the CLI as a dependency, the benchmarks of normalize, dedupe, parquet and
//! LINE WORKS as a dev-dependency. The benchmarks cannot reach the CLI crate itself (it depends on
//! every component, including the one being measured), and this crate is the one place with
//! `unsafe` FFI and the `libc` dependency.

/// Arrow buffers of a batch are megabytes, allocated and freed by the thousand on several
/// threads. glibc's malloc raises its mmap threshold each time such a block is freed (up to 32
/// MiB), after which big blocks come from the heap arenas, where freed space stays resident. A
/// fixed 4 MiB threshold sends the biggest blocks straight back to the kernel. Measured (issue 6,
/// BENCHMARKS.md) on the LINE WORKS job at 5M rows: 255–265 MiB peak without it, 213–215 MiB
/// with it, same speed (256 KiB would save a little more memory for 1 s more system time).
///
/// Fixing that threshold also fixes the trim threshold at its 128 KiB default: every time the
/// free space at the top of an arena passed 128 KiB it went back to the kernel, and the next
/// batch took it back page by page (83k page faults per million Zoom rows, a quarter of the
/// run's system time). At 4 MiB a batch's worth stays: Zoom 1.00 → 0.92 s; LINE WORKS at 5M
/// rows peaks at 278 MiB instead of 263 (64 MiB was no faster and peaked at 310).
///
/// Returns whether the settings took (always false off glibc, where there is nothing to set).
#[allow(unsafe_code)]
pub fn tune() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters (under glibc's arena locks); callers run
    // it first thing, before their threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20) == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_settings() {
        assert_eq!(
            super::tune(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
}
