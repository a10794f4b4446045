//! Pack keys: unsigned 64-bit integers or UTF-8 strings.

use std::borrow::Cow;
use std::fmt;

use super::format::{key_hash, KEY_STR, KEY_U64};

/// The key of one pack entry: an unsigned 64-bit integer or a UTF-8 string.
///
/// Both kinds may be mixed in one pack; `7u64` and `"7"` are different keys.
/// Keys order integers first (numerically), then strings (by their UTF-8
/// bytes): that is the order of [`PackReader::iter_by_key`](crate::pack::PackReader::iter_by_key).
///
/// Lookups borrow (`PackKey<'_>` from a `&str`), listings borrow from the
/// reader's map; [`into_owned`](PackKey::into_owned) detaches a key.
///
/// # Examples
///
/// ```
/// use ndarray_offload::pack::PackKey;
///
/// let a: PackKey = 42u64.into();
/// let b: PackKey = "tile_0001".into();
/// assert!(a < b);
/// assert_eq!(a.as_u64(), Some(42));
/// assert_eq!(b.as_str(), Some("tile_0001"));
/// assert_eq!(b.to_string(), "tile_0001");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackKey<'a> {
    /// An integer key.
    U64(u64),
    /// A string key.
    Str(Cow<'a, str>),
}

impl PackKey<'_> {
    /// A key that owns its string.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::PackKey;
    ///
    /// let owned: PackKey<'static> = PackKey::from(&*String::from("k")).into_owned();
    /// assert_eq!(owned.as_str(), Some("k"));
    /// ```
    pub fn into_owned(self) -> PackKey<'static> {
        match self {
            PackKey::U64(k) => PackKey::U64(k),
            PackKey::Str(s) => PackKey::Str(Cow::Owned(s.into_owned())),
        }
    }

    /// The key borrowed again, without copying a string.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::PackKey;
    ///
    /// let k = PackKey::from(String::from("k"));
    /// assert_eq!(k.borrowed(), PackKey::from("k"));
    /// ```
    pub fn borrowed(&self) -> PackKey<'_> {
        match self {
            PackKey::U64(k) => PackKey::U64(*k),
            PackKey::Str(s) => PackKey::Str(Cow::Borrowed(s)),
        }
    }

    /// The string, for a string key.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::PackKey;
    ///
    /// assert_eq!(PackKey::from("a").as_str(), Some("a"));
    /// assert_eq!(PackKey::from(1u64).as_str(), None);
    /// ```
    pub fn as_str(&self) -> Option<&str> {
        match self {
            PackKey::Str(s) => Some(s),
            PackKey::U64(_) => None,
        }
    }

    /// The integer, for an integer key.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::PackKey;
    ///
    /// assert_eq!(PackKey::from(9u64).as_u64(), Some(9));
    /// assert_eq!(PackKey::from("9").as_u64(), None);
    /// ```
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            PackKey::U64(k) => Some(*k),
            PackKey::Str(_) => None,
        }
    }

    pub(crate) fn kind(&self) -> u8 {
        match self {
            PackKey::U64(_) => KEY_U64,
            PackKey::Str(_) => KEY_STR,
        }
    }

    /// Calls `f` with the key's stored bytes.
    pub(crate) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            PackKey::U64(k) => f(&k.to_le_bytes()),
            PackKey::Str(s) => f(s.as_bytes()),
        }
    }

    pub(crate) fn hash64(&self) -> u64 {
        self.with_bytes(|b| key_hash(self.kind(), b))
    }
}

impl fmt::Display for PackKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackKey::U64(k) => write!(f, "{k}"),
            PackKey::Str(s) => f.write_str(s),
        }
    }
}

impl From<u64> for PackKey<'_> {
    fn from(k: u64) -> Self {
        PackKey::U64(k)
    }
}

impl<'a> From<&'a str> for PackKey<'a> {
    fn from(k: &'a str) -> Self {
        PackKey::Str(Cow::Borrowed(k))
    }
}

impl<'a> From<&'a String> for PackKey<'a> {
    fn from(k: &'a String) -> Self {
        PackKey::Str(Cow::Borrowed(k))
    }
}

impl From<String> for PackKey<'_> {
    fn from(k: String) -> Self {
        PackKey::Str(Cow::Owned(k))
    }
}

impl<'a> From<&'a PackKey<'_>> for PackKey<'a> {
    fn from(k: &'a PackKey<'_>) -> Self {
        k.borrowed()
    }
}
