//! Human sizes at the edges: `256MiB`, `2GiB`, `1.5GB`, `1000000`, `80%`.

/// A size as the user wrote it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    /// A share of the machine's memory, in percent (0, 100].
    Percent(f64),
}

impl SizeSpec {
    /// Bytes, resolving a percentage against `total`.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }
}

impl std::str::FromStr for SizeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<SizeSpec, String> {
        let t = s.trim();
        let bad = || {
            format!("'{s}' is not a size: use bytes (1048576), units (256MiB, 2GiB, 1.5GB) or a share of memory (80%)")
        };
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(v > 0.0 && v <= 100.0) {
                return Err(format!("'{s}': a percentage must be in (0, 100]"));
            }
            return Ok(SizeSpec::Percent(v));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let v: f64 = num.parse().map_err(|_| bad())?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kb" => 1e3,
            "m" | "mb" => 1e6,
            "g" | "gb" => 1e9,
            "t" | "tb" => 1e12,
            "ki" | "kib" => 1024.0,
            "mi" | "mib" => 1024.0 * 1024.0,
            "gi" | "gib" => 1024.0 * 1024.0 * 1024.0,
            "ti" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        let bytes = v * mult;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(SizeSpec::Bytes(bytes as u64))
    }
}

/// `1536` -> `1.5 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(
            "256MiB".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(256 << 20)
        );
        assert_eq!(
            "2GiB".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(2 << 30)
        );
        assert_eq!(
            "1.5GB".parse::<SizeSpec>().unwrap(),
            SizeSpec::Bytes(1_500_000_000)
        );
        assert_eq!("1000".parse::<SizeSpec>().unwrap(), SizeSpec::Bytes(1000));
        assert_eq!("80%".parse::<SizeSpec>().unwrap(), SizeSpec::Percent(80.0));
        assert_eq!(SizeSpec::Percent(50.0).resolve(1000), 500);
    }

    #[test]
    fn rejects_nonsense() {
        for s in ["", "abc", "12 parsecs", "0%", "120%", "-5MiB"] {
            assert!(s.parse::<SizeSpec>().is_err(), "{s}");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }
}
