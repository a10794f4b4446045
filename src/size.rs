//! Byte sizes and the memory available to the process: leaf types that the
//! array, the store's budget and the configuration share.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

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
pub struct ByteSize(u64);

impl ByteSize {
    /// A size of `bytes` bytes.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::ByteSize;
    ///
    /// assert_eq!(ByteSize::new(1 << 20).to_string(), "1.0 MiB");
    /// assert_eq!(ByteSize::new(7), ByteSize::from(7));
    /// ```
    pub const fn new(bytes: u64) -> Self {
        ByteSize(bytes)
    }

    /// The number of bytes.
    pub const fn bytes(self) -> u64 {
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
            option: None,
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

impl TryFrom<&str> for ByteSize {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        ByteSize::parse(s)
    }
}

impl TryFrom<String> for ByteSize {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        ByteSize::parse(&s)
    }
}

/// A size option's value: a [`ByteSize`], a number of bytes (`u64`), or a
/// string parsed as [`ByteSize::parse`] does (`"200MiB"`, `"2GB"`).
///
/// [`StoreBuilder::memory_budget`](crate::StoreBuilder::memory_budget) takes
/// it and reports a malformed string as [`Error::InvalidSize`] naming the
/// option at [`open`](crate::StoreBuilder::open). Setters that cannot fail
/// ([`CacheConfig::with_chunk_budget`](crate::CacheConfig::with_chunk_budget),
/// [`DiskBackedStore::set_memory_budget`](crate::DiskBackedStore::set_memory_budget),
/// [`SystemPressure::new`](crate::SystemPressure::new)) take a [`ByteSize`]
/// or a `u64`; a string goes through `ByteSize::try_from("64MiB")?` (or
/// `.parse()?`) there.
///
/// # Examples
///
/// ```
/// use ndarray_offload::{ByteSize, IntoByteSize};
///
/// assert_eq!("200MiB".into_byte_size()?, ByteSize::new(200 << 20));
/// assert_eq!(4096u64.into_byte_size()?, ByteSize::new(4096));
/// assert!("lots".into_byte_size().is_err());
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
pub trait IntoByteSize {
    /// The size, or [`Error::InvalidSize`] for a malformed string.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSize`].
    fn into_byte_size(self) -> Result<ByteSize>;
}

impl IntoByteSize for ByteSize {
    fn into_byte_size(self) -> Result<ByteSize> {
        Ok(self)
    }
}

impl IntoByteSize for u64 {
    fn into_byte_size(self) -> Result<ByteSize> {
        Ok(ByteSize(self))
    }
}

impl IntoByteSize for &str {
    fn into_byte_size(self) -> Result<ByteSize> {
        ByteSize::parse(self)
    }
}

impl IntoByteSize for String {
    fn into_byte_size(self) -> Result<ByteSize> {
        ByteSize::parse(&self)
    }
}

impl IntoByteSize for &String {
    fn into_byte_size(self) -> Result<ByteSize> {
        ByteSize::parse(self)
    }
}

/// A size option as given: the size, or the parse error reported later
/// (the error is not `Clone`; its parts are).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SizeSetting {
    Ok(u64),
    Invalid { input: String, reason: &'static str },
}

impl SizeSetting {
    pub(crate) fn new(v: impl IntoByteSize) -> Self {
        match v.into_byte_size() {
            Ok(b) => SizeSetting::Ok(b.bytes()),
            Err(Error::InvalidSize { input, reason, .. }) => SizeSetting::Invalid { input, reason },
            Err(_) => SizeSetting::Invalid {
                input: String::new(),
                reason: "not a size",
            },
        }
    }

    /// The size, or the parse error naming the option it was given to.
    pub(crate) fn get(&self, option: &'static str) -> Result<u64> {
        match self {
            SizeSetting::Ok(b) => Ok(*b),
            SizeSetting::Invalid { input, reason } => Err(Error::InvalidSize {
                input: input.clone(),
                reason,
                option: Some(option),
            }),
        }
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

/// Memory available to this process, in bytes (`None` if unknown): what
/// `sysinfo` reports as available on the host, capped by the free memory of
/// the process's cgroup (a container's limit) on Linux.
///
/// The crate's one memory query: the default chunk budget
/// ([`default_chunk_budget`](crate::default_chunk_budget)) and the store's
/// system-pressure check both use it.
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
}
