//! Validated entry names.

use std::fmt;

use crate::error::{Error, Result};

/// Longest name accepted, in bytes.
///
/// Every file the crate creates for an entry (`NAME.npy`, `NAME.meta.json`
/// and their temporary files `.ndo.<unique>.NAME.meta.json.tmp`) then stays
/// within the 255-byte file-name limit of common file systems.
pub const MAX_NAME_BYTES: usize = 200;

/// A name that is safe to use as a file stem in a store directory.
///
/// The rules are those of GSEGUtils' `DiskBackedStore` (the first failing
/// rule is reported), plus a length limit:
///
/// 1. not `""`, `"."` or `".."`;
/// 2. no control character (below U+0020, or U+007F);
/// 3. not an absolute path or drive (POSIX or Windows), and no `:`;
/// 4. no `/` or `\`;
/// 5. not a Windows device name (`CON`, `PRN`, `AUX`, `NUL`, `CONIN$`,
///    `CONOUT$`, `COM0`-`COM9`, `LPT0`-`LPT9`, `COM¹`-`COM³`, `LPT¹`-`LPT³`),
///    case-insensitive, compared on the part before the first dot with
///    trailing spaces removed (so `con.npy` and `CON .txt` are refused);
/// 6. no trailing space or dot;
/// 7. at most [`MAX_NAME_BYTES`] bytes.
///
/// # Examples
///
/// ```
/// use ndarray_offload::EntryName;
///
/// assert!(EntryName::new("tile_0001").is_ok());
/// assert!(EntryName::new(".hidden").is_ok());
/// assert!(EntryName::new("../escape").is_err());
/// assert!(EntryName::new("con.npy").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryName(String);

impl PartialEq<str> for EntryName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EntryName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

const DEVICES: &[&str] = &[
    "CON",
    "PRN",
    "AUX",
    "NUL",
    "CONIN$",
    "CONOUT$",
    "COM0",
    "COM1",
    "COM2",
    "COM3",
    "COM4",
    "COM5",
    "COM6",
    "COM7",
    "COM8",
    "COM9",
    "LPT0",
    "LPT1",
    "LPT2",
    "LPT3",
    "LPT4",
    "LPT5",
    "LPT6",
    "LPT7",
    "LPT8",
    "LPT9",
    "COM\u{b9}",
    "COM\u{b2}",
    "COM\u{b3}",
    "LPT\u{b9}",
    "LPT\u{b2}",
    "LPT\u{b3}",
];

impl EntryName {
    /// Validates `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] naming the first rule `name` breaks.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        match Self::rule_broken(&name) {
            None => Ok(EntryName(name)),
            Some(rule) => Err(Error::InvalidName { name, rule }),
        }
    }

    /// The first rule `name` breaks, if any.
    fn rule_broken(name: &str) -> Option<&'static str> {
        if name.is_empty() || name == "." || name == ".." {
            return Some("empty or reserved path name");
        }
        if name.chars().any(|c| c < '\u{20}' || c == '\u{7f}') {
            return Some("control character");
        }
        let b = name.as_bytes();
        let drive = b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':';
        if name.starts_with('/') || name.starts_with('\\') || drive || name.contains(':') {
            return Some("absolute path, drive or ':'");
        }
        if name.contains('/') || name.contains('\\') {
            return Some("path separator");
        }
        let stem = name.split('.').next().unwrap_or("").trim_end_matches(' ');
        // An ASCII stem is compared without an upper-case copy (its
        // upper case is its ASCII upper case).
        let device = if stem.is_ascii() {
            DEVICES.iter().any(|d| d.eq_ignore_ascii_case(stem))
        } else {
            DEVICES.contains(&stem.to_uppercase().as_str())
        };
        if device {
            return Some("Windows device name");
        }
        if name.ends_with(' ') || name.ends_with('.') {
            return Some("trailing space or dot");
        }
        if name.len() > MAX_NAME_BYTES {
            return Some("longer than 200 bytes");
        }
        None
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `.npy` file name of this entry.
    pub(crate) fn npy_file(&self) -> String {
        self.with_suffix(".npy")
    }

    /// The `.meta.json` file name of this entry.
    pub(crate) fn meta_file(&self) -> String {
        self.with_suffix(".meta.json")
    }

    /// The name followed by `suffix` (one allocation of the right size).
    pub(crate) fn with_suffix(&self, suffix: &str) -> String {
        let mut s = String::with_capacity(self.0.len() + suffix.len());
        s.push_str(&self.0);
        s.push_str(suffix);
        s
    }
}

impl fmt::Debug for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EntryName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for EntryName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        EntryName::new(s)
    }
}

impl TryFrom<&str> for EntryName {
    type Error = Error;
    fn try_from(s: &str) -> Result<Self> {
        EntryName::new(s)
    }
}

impl TryFrom<String> for EntryName {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        EntryName::new(s)
    }
}

impl TryFrom<&String> for EntryName {
    type Error = Error;
    fn try_from(s: &String) -> Result<Self> {
        EntryName::new(s.as_str())
    }
}

impl From<&EntryName> for EntryName {
    fn from(n: &EntryName) -> Self {
        n.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str) -> Option<&'static str> {
        match EntryName::new(name) {
            Ok(_) => None,
            Err(Error::InvalidName { rule, .. }) => Some(rule),
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn accepted_examples() {
        for n in [
            ".hidden",
            "a.npy",
            "tile_0001",
            "\u{ff23}\u{ff2f}\u{ff2e}",
            "COM10",
            "a b",
        ] {
            assert_eq!(rule(n), None, "{n}");
        }
    }

    #[test]
    fn each_rule_in_order() {
        assert_eq!(rule(""), Some("empty or reserved path name"));
        assert_eq!(rule(".."), Some("empty or reserved path name"));
        assert_eq!(rule("a\u{7f}"), Some("control character"));
        assert_eq!(rule("a\nb"), Some("control character"));
        assert_eq!(rule("/etc"), Some("absolute path, drive or ':'"));
        assert_eq!(rule("C:x"), Some("absolute path, drive or ':'"));
        assert_eq!(rule("a:b"), Some("absolute path, drive or ':'"));
        assert_eq!(rule("\\\\server"), Some("absolute path, drive or ':'"));
        assert_eq!(rule("a/b"), Some("path separator"));
        assert_eq!(rule("a\\b"), Some("path separator"));
        assert_eq!(rule("con.npy"), Some("Windows device name"));
        assert_eq!(rule("CON .txt"), Some("Windows device name"));
        assert_eq!(rule("lpt\u{b9}"), Some("Windows device name"));
        assert_eq!(rule("conout$"), Some("Windows device name"));
        assert_eq!(rule("a."), Some("trailing space or dot"));
        assert_eq!(rule("a "), Some("trailing space or dot"));
        assert_eq!(rule(&"x".repeat(201)), Some("longer than 200 bytes"));
        assert_eq!(rule(&"x".repeat(200)), None);
        // First failing clause wins.
        assert_eq!(rule("/a\n"), Some("control character"));
    }
}
