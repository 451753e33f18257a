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

/// Process-wide allocator settings for a server: a few glibc arenas instead of eight per core
/// (each thread that allocates may otherwise get one, and freed memory in one cannot serve
/// another). Called once before the first model loads; `HERD_MALLOC_ARENAS` overrides (0 =
/// leave glibc's default).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let n: i32 = std::env::var("HERD_MALLOC_ARENAS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4);
        if n > 0 {
            // SAFETY: mallopt sets an allocator parameter.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, n);
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
        if let Some(before) = allocated_bytes() {
            let v = vec![1u8; 8 << 20];
            let after = allocated_bytes().unwrap();
            assert!(after >= before + (8 << 20) - 4096, "{before} -> {after}");
            drop(v);
        }
    }
}
