//! Memory budgets: byte sizes, the least-recently-used order of resident
//! entries, and system memory pressure.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::name::EntryName;

/// A number of bytes, parsed from `"512MiB"`, `"2GiB"` (powers of 1024),
/// `"2GB"`, `"500MB"` (powers of 1000), `"1.5 GiB"` or a plain `"1048576"`.
/// Units are case-insensitive; `B` may be omitted after a prefix (`"2G"` is
/// 2 GB, `"2Gi"` is 2 GiB).
///
/// # Examples
///
/// ```
/// use ndarray_offload::ByteSize;
///
/// assert_eq!("512MiB".parse::<ByteSize>()?.bytes(), 512 << 20);
/// assert_eq!("2GB".parse::<ByteSize>()?.bytes(), 2_000_000_000);
/// assert!("lots".parse::<ByteSize>().is_err());
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The number of bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses a size string.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`] naming what is wrong.
    pub fn parse(s: &str) -> Result<Self> {
        let err = |reason| Error::InvalidSize {
            input: s.to_owned(),
            reason,
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(err("no number"));
        }
        if num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
            return Err(err("malformed number"));
        }
        let unit = unit.trim().to_ascii_lowercase();
        let mult: u64 = match unit.as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "m" | "mb" => 1000u64.pow(2),
            "g" | "gb" => 1000u64.pow(3),
            "t" | "tb" => 1000u64.pow(4),
            "ki" | "kib" => 1 << 10,
            "mi" | "mib" => 1 << 20,
            "gi" | "gib" => 1 << 30,
            "ti" | "tib" => 1 << 40,
            _ => {
                return Err(err(
                    "unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)",
                ))
            }
        };
        let bytes = match num.split_once('.') {
            None => num
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult))
                .ok_or_else(|| err("too large"))?,
            Some((int, frac)) => {
                let int: u64 = int.parse().map_err(|_| err("malformed number"))?;
                let frac_digits = frac.len().min(18) as u32;
                let frac: u64 = frac[..frac_digits as usize]
                    .parse()
                    .map_err(|_| err("malformed number"))?;
                let whole = int.checked_mul(mult).ok_or_else(|| err("too large"))?;
                let part = (frac as u128 * mult as u128 / 10u128.pow(frac_digits)) as u64;
                whole.checked_add(part).ok_or_else(|| err("too large"))?
            }
        };
        Ok(ByteSize(bytes))
    }
}

impl FromStr for ByteSize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ByteSize::parse(s)
    }
}

impl From<u64> for ByteSize {
    fn from(n: u64) -> Self {
        ByteSize(n)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut x = self.0 as f64;
        let mut i = 0;
        while x >= 1024.0 && i < U.len() - 1 {
            x /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{x:.1} {}", U[i])
        }
    }
}

/// Offloading on host-wide memory pressure (off by default).
///
/// When the memory available to the system (as `sysinfo` reports it, which
/// takes cgroup limits into account on Linux) falls below `min_available`,
/// the store offloads least-recently-used entries until its resident bytes
/// are at most `target_resident`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemPressure {
    /// Available-memory threshold that triggers offloading.
    pub min_available: u64,
    /// Resident bytes to offload down to once triggered.
    pub target_resident: u64,
}

/// Memory the system has available, in bytes (`None` if unknown).
pub(crate) fn available_memory() -> Option<u64> {
    let mut s = sysinfo::System::new().ok()?;
    s.refresh_memory();
    let avail = s.available_memory();
    let avail = match s.cgroup_limits() {
        Some(c) if c.free_memory > 0 => avail.min(c.free_memory),
        _ => avail,
    };
    (avail > 0).then_some(avail)
}

/// Resident entries in least-recently-used order.
#[derive(Debug, Default)]
pub(crate) struct Lru {
    by_tick: BTreeMap<u64, EntryName>,
    tick_of: std::collections::HashMap<EntryName, u64>,
    next: u64,
}

impl Lru {
    /// Marks `name` as used now (adding it if absent).
    pub(crate) fn touch(&mut self, name: &EntryName) {
        self.next += 1;
        if let Some(old) = self.tick_of.insert(name.clone(), self.next) {
            self.by_tick.remove(&old);
        }
        self.by_tick.insert(self.next, name.clone());
    }

    /// Stops tracking `name`.
    pub(crate) fn remove(&mut self, name: &EntryName) {
        if let Some(t) = self.tick_of.remove(name) {
            self.by_tick.remove(&t);
        }
    }

    /// Names from least to most recently used.
    pub(crate) fn oldest_first(&self) -> Vec<EntryName> {
        self.by_tick.values().cloned().collect()
    }

    /// Number of tracked names.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_tick.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let b = |s: &str| ByteSize::parse(s).map(|b| b.0);
        assert_eq!(b("512MiB").unwrap(), 512 * 1024 * 1024);
        assert_eq!(b("2GiB").unwrap(), 2 << 30);
        assert_eq!(b("2GB").unwrap(), 2_000_000_000);
        assert_eq!(b("500MB").unwrap(), 500_000_000);
        assert_eq!(b("500mb").unwrap(), 500_000_000);
        assert_eq!(b(" 1.5 GiB ").unwrap(), 3 << 29);
        assert_eq!(b("0.5KB").unwrap(), 500);
        assert_eq!(b("1024").unwrap(), 1024);
        assert_eq!(b("7B").unwrap(), 7);
        assert_eq!(b("2Gi").unwrap(), 2 << 30);
        for bad in [
            "",
            "GiB",
            "12XB",
            "1..2MB",
            ".5MB",
            "5.MB",
            "-1MB",
            "99999999999TB",
            "1 2MB",
        ] {
            assert!(
                matches!(ByteSize::parse(bad), Err(Error::InvalidSize { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
    }

    #[test]
    fn lru_order() {
        let n = |s: &str| EntryName::new(s).unwrap();
        let mut l = Lru::default();
        l.touch(&n("a"));
        l.touch(&n("b"));
        l.touch(&n("c"));
        l.touch(&n("a"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("c"), n("a")]);
        l.remove(&n("c"));
        assert_eq!(l.oldest_first(), vec![n("b"), n("a")]);
        assert_eq!(l.len(), 2);
    }
}
