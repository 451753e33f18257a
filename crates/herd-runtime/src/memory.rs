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
