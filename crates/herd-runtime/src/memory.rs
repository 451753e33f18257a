//! Memory accounting: bytes allocated on the heap (glibc `mallinfo2`) and the process RSS.
//!
//! A model's charge is measured as the growth of allocated bytes while its instances are
//! created (loads are serialised around that window by the caller), which, unlike RSS, is not
//! hidden by the allocator reusing memory freed by an evicted model.

/// Bytes currently allocated through malloc (small blocks plus mmapped blocks), if known.
pub fn allocated_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads allocator statistics.
        let mi = unsafe { libc::mallinfo2() };
        Some(mi.uordblks as u64 + mi.hblkhd as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The allocator's own counters (glibc `mallinfo2`), for measurements and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AllocatorStats {
    /// Bytes in use in the arenas (small and medium blocks).
    pub in_arenas: u64,
    /// Bytes in use in blocks mmapped on their own (returned to the system on free).
    pub mmapped: u64,
    /// Free bytes the arenas hold (not returned to the system until trimmed).
    pub free_held: u64,
    /// Bytes of the arenas' heaps obtained from the system.
    pub arena_system: u64,
}

/// The allocator's counters, if known.
pub fn allocator_stats() -> Option<AllocatorStats> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads allocator statistics.
        let mi = unsafe { libc::mallinfo2() };
        Some(AllocatorStats {
            in_arenas: mi.uordblks as u64,
            mmapped: mi.hblkhd as u64,
            free_held: mi.fordblks as u64,
            arena_system: mi.arena as u64,
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Bytes the allocator holds free (not returned to the system), if known.
pub fn free_held_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads allocator statistics.
        let mi = unsafe { libc::mallinfo2() };
        Some(mi.fordblks as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// Returns free heap memory to the system (glibc `malloc_trim`), so resident memory comes back
/// down after a large request. Cheap to call often: it checks at most every 50 ms, and trims
/// only when more than 32 MiB are held free.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{SystemTime, UNIX_EPOCH};
        static LAST_MS: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let last = LAST_MS.load(Ordering::Relaxed);
        if now.saturating_sub(last) < 50
            || LAST_MS
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if free_held_bytes().unwrap_or(0) > 32 << 20 {
            // SAFETY: malloc_trim only releases free memory.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Returns free heap memory to the system when a model has gone idle: not rate-limited, and
/// trims once more than 4 MiB are held free (blocks under the mmap threshold that the last runs
/// freed stay in the arenas otherwise).
pub fn trim_idle() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if free_held_bytes().unwrap_or(0) > 4 << 20 {
        // SAFETY: malloc_trim only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// The default `M_MMAP_THRESHOLD` herd sets: blocks of this size or more get their own
/// mapping, which goes back to the system the moment it is freed. Smaller blocks come from the
/// arenas and are reused from run to run: at 256 KiB every activation of a MiniLM batch was a
/// fresh mapping, and the page faults and page clearing took 10% of the server's CPU under load
/// (throughput at 16 clients +5-10% with 4 MiB, same run).
pub const DEFAULT_MMAP_THRESHOLD: usize = 4 << 20;

/// Process-wide allocator settings for a server, called once before the first model loads:
/// - a few glibc arenas instead of eight per core (each thread that allocates may otherwise
///   get one, and freed memory in one cannot serve another); `HERD_MALLOC_ARENAS` overrides
///   (0 = glibc's default);
/// - a fixed mmap threshold ([`DEFAULT_MMAP_THRESHOLD`], `HERD_MMAP_THRESHOLD` in bytes, 0 =
///   glibc's dynamic threshold). glibc's default raises the threshold to the size of each
///   mapped block that is freed (up to 32 MiB), so after the first large run an inference's
///   tensors come from the arenas and stay resident when freed (measured: MiniLM at 32 x 256
///   kept ~100 MiB above its steady level, and `malloc_trim` did not give all of it back).
///   Fixed, every large tensor is its own mapping and resident memory comes back down as soon
///   as a run ends. Setting it also disables the dynamic trim threshold;
///   `HERD_TRIM_THRESHOLD` (bytes) sets that one explicitly.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let env = |k: &str| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.trim().parse::<i64>().ok())
        };
        let arenas = env("HERD_MALLOC_ARENAS").unwrap_or(4);
        let mmap = env("HERD_MMAP_THRESHOLD").unwrap_or(DEFAULT_MMAP_THRESHOLD as i64);
        // SAFETY: mallopt sets allocator parameters; it is safe to call at any time.
        unsafe {
            if arenas > 0 {
                libc::mallopt(libc::M_ARENA_MAX, arenas.min(i32::MAX as i64) as i32);
            }
            if mmap > 0 {
                libc::mallopt(libc::M_MMAP_THRESHOLD, mmap.min(32 << 20) as i32);
            }
            if let Some(t) = env("HERD_TRIM_THRESHOLD").filter(|t| *t > 0) {
                libc::mallopt(libc::M_TRIM_THRESHOLD, t.min(i32::MAX as i64) as i32);
            }
        }
    }
}

/// Resident set size of this process in bytes (Linux), if known.
pub fn rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// Peak resident set size of this process in bytes (Linux), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Total physical memory in bytes (Linux `/proc/meminfo`), if known.
pub fn total_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_kib_field(&text, "MemTotal:").map(|k| k * 1024)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_kib_field(&text, field)
}

fn parse_kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kib_fields() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\nVmHWM:\t 99 kB\n";
        assert_eq!(parse_kib_field(text, "VmRSS:"), Some(1234));
        assert_eq!(parse_kib_field(text, "VmSwap:"), None);
    }

    #[test]
    fn allocation_is_visible() {
        // The count is process-wide and other tests free memory meanwhile: an allocation must
        // show in at least one of a few tries (it would show in none if it were not counted).
        let mut seen = Vec::new();
        for _ in 0..10 {
            let Some(before) = allocated_bytes() else {
                return;
            };
            let v = vec![1u8; 8 << 20];
            let after = allocated_bytes().unwrap();
            drop(v);
            if after >= before + (8 << 20) - 4096 {
                return;
            }
            seen.push((before, after));
        }
        panic!("an 8 MiB allocation never showed: {seen:?}");
    }

    #[test]
    fn a_freed_large_block_goes_back_to_the_system() {
        // The fixed mmap threshold (tune_allocator) gives a large block its own mapping, which
        // is unmapped when freed, even after larger blocks were freed before it.
        tune_allocator();
        if allocator_stats().is_none() {
            return;
        }
        // Sizes at and above the default threshold (4 MiB), largest first.
        assert_eq!(DEFAULT_MMAP_THRESHOLD, 4 << 20);
        for mib in [64usize, 16, 8, 4] {
            let bytes = (mib as u64) << 20;
            // Other tests allocate and free meanwhile: the block must show in one of a few tries.
            let shown = (0..10).any(|_| {
                let before = allocator_stats().unwrap().mmapped;
                let v = vec![1u8; mib << 20];
                let during = allocator_stats().unwrap().mmapped;
                drop(v);
                during >= before + bytes
            });
            assert!(shown, "a freed {mib} MiB block was not mapped on its own");
        }
    }
}
