//! The `.meta.json` half of an entry's pair.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The only schema version this crate reads and writes.
pub const SCHEMA_VERSION: u64 = 1;
/// The largest `.meta.json` read (GSEGUtils writes about 200 bytes).
pub(crate) const META_LIMIT: u64 = 4 << 20;
/// The entry classes this crate knows.
pub const KNOWN_CLASSES: &[&str] = &["DiskBackedNDArray"];
/// The field holding an entry's user attributes (GSEGUtils ignores it).
pub(crate) const ATTRS_FIELD: &str = "ndoffload_attrs";
/// The field marking an entry the disk budget may delete (written only when
/// `true`; GSEGUtils ignores it).
pub(crate) const RECOMPUTABLE_FIELD: &str = "ndoffload_recomputable";
/// The field holding where an in-flight publish staged its `.npy`.
pub(crate) const COMMIT_FIELD: &str = "ndoffload_commit";
/// The field holding the version token of the published `.npy`: the name
/// under which `.ndoffload/versions/` holds a hard link of that very file
/// (see docs/format.md, "Version identity").
pub(crate) const VERSION_FIELD: &str = "ndoffload_version";
/// The field of an object-store entry: its data object, size and CRC-32
/// (docs/format.md, "Remote stores"); in a remote store's cache directory,
/// the data object the cached pair is a copy of.
pub(crate) const REMOTE_FIELD: &str = "ndoffload_remote";
/// The field of a pair in a remote store's cache directory that is a write
/// not yet committed to the object store: the version of the metadata
/// object it replaces (`{}`: none, the key must not exist).
pub(crate) const STAGED_FIELD: &str = "ndoffload_staged";
/// GSEGUtils' fields, in the order it writes them.
const GSEG_FIELDS: &[&str] = &[
    "schema_version",
    "lazy_disk_cache_class",
    "shape",
    "dtype",
    "purge_disk_on_gc",
    "automatic_offloading",
    "enable_caching",
];

/// An entry's user attributes: a JSON object.
pub type Attrs = Map<String, Value>;

/// Per-entry flags stored in the metadata.
///
/// Read from [`EntryInfo::flags`](crate::EntryInfo#structfield.flags); the
/// store builds it from the configuration and any overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryFlags {
    /// `purge_disk_on_gc`, GSEGUtils' flag for the transient working copy of
    /// a loaded array. Read and written as it is; it never deletes a stored
    /// pair. Set at insert, it makes the entry a scratch entry of the handle
    /// that inserted it (deleted when that handle closes the store).
    pub purge_on_drop: bool,
    /// `automatic_offloading`: re-offload after each access that loaded it.
    pub automatic_offloading: bool,
    /// `enable_caching`: the entry may live on disk.
    pub caching: bool,
    /// `ndoffload_recomputable`, this crate's own field: the entry can be
    /// computed again (it was made by
    /// [`get_or_compute`](crate::DiskBackedStore::get_or_compute) or
    /// inserted with
    /// [`InsertOptions::recomputable`](crate::InsertOptions::recomputable)),
    /// so the disk budget
    /// ([`StoreBuilder::disk_budget`](crate::StoreBuilder::disk_budget)) may
    /// delete it. Missing means `false`: entries written by GSEGUtils or
    /// numpy never are.
    pub recomputable: bool,
}

/// Where the temporary `.npy` of an in-flight pair was, so an interrupted
/// publish can be completed at the next open (see docs/format.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Commit {
    pub npy_tmp: String,
    pub npy_ino: u64,
    /// The version token of the staged `.npy` (rendered as the top-level
    /// `ndoffload_version`), when a version link is made for it.
    pub version: Option<String>,
}

/// A parsed `.meta.json`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub class: String,
    /// `None` when the file has no `shape` (GSEGUtils then reads it from
    /// the `.npy` header, and so does the store).
    pub shape: Option<Vec<usize>>,
    /// `None` when the file has no `dtype` (taken from the `.npy` header).
    pub dtype: Option<String>,
    pub purge: Option<bool>,
    pub automatic: Option<bool>,
    pub caching: Option<bool>,
    /// `ndoffload_recomputable` (`None` when absent).
    pub recomputable: Option<bool>,
    pub commit: Option<Commit>,
    /// `ndoffload_version`: the token of the published `.npy` (`None` for
    /// pairs written by numpy, GSEGUtils or older versions of the crate).
    pub version: Option<String>,
    /// The user attributes (`ndoffload_attrs`); empty when absent.
    pub attrs: Attrs,
    /// `ndoffload_remote` (an object store's entries and their cached
    /// copies), as stored.
    pub remote: Option<Value>,
    /// `ndoffload_staged` (a write in a remote store's cache directory not
    /// yet committed), as stored.
    pub staged: Option<Value>,
}

impl Meta {
    /// Parses and validates `bytes` read from `path`.
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Meta> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::corrupt(path, format!("metadata is not UTF-8: {e}")))?;
        crate::depth::check_json(bytes, crate::depth::MAX_JSON_DEPTH)
            .map_err(|e| Error::corrupt(path, format!("metadata is not valid JSON: {e}")))?;
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::corrupt(path, format!("metadata is not valid JSON: {e}")))?;
        let Value::Object(o) = v else {
            return Err(Error::corrupt(path, "metadata is not a JSON object"));
        };
        let field = |k: &str| -> Result<&Value> {
            o.get(k)
                .ok_or_else(|| Error::corrupt(path, format!("metadata has no {k:?} field")))
        };
        let version = field("schema_version")?;
        if version.as_u64() != Some(SCHEMA_VERSION) || !version.is_u64() {
            return Err(Error::SchemaVersion {
                path: path.to_path_buf(),
                found: version.to_string(),
            });
        }
        let class = match field("lazy_disk_cache_class")? {
            Value::String(s) => s.clone(),
            other => {
                return Err(Error::UnknownClass {
                    path: path.to_path_buf(),
                    class: other.to_string(),
                })
            }
        };
        if !KNOWN_CLASSES.contains(&class.as_str()) {
            return Err(Error::UnknownClass {
                path: path.to_path_buf(),
                class,
            });
        }
        let shape = match o.get("shape") {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| {
                        Error::corrupt(path, "shape is not a list of non-negative integers")
                    })?,
            ),
            _ => return Err(Error::corrupt(path, "shape is not a list")),
        };
        let dtype = match o.get("dtype") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            _ => return Err(Error::corrupt(path, "dtype is not a string")),
        };
        // A handle is made from the metadata alone: its element count and
        // byte size must be representable, as for an .npy header.
        // Zero dimensions do not make any shape fit (see `checked_nbytes`).
        let itemsize = dtype
            .as_deref()
            .and_then(crate::element::dtype_itemsize)
            .unwrap_or(1);
        let fits = shape
            .as_deref()
            .is_none_or(|s| crate::element::checked_nbytes(s, itemsize).is_some());
        if !fits {
            return Err(Error::corrupt(
                path,
                format!(
                    "shape {:?} overflows the addressable size",
                    shape.unwrap_or_default()
                ),
            ));
        }
        let flag = |k: &str| -> Result<Option<bool>> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(Error::corrupt(path, format!("{k} is not a boolean"))),
            }
        };
        let commit = o.get(COMMIT_FIELD).and_then(parse_commit);
        // A token is a plain name part (it names a file): anything else is
        // not one this crate wrote, and is read as no token.
        let version = o
            .get(VERSION_FIELD)
            .and_then(Value::as_str)
            .filter(|t| is_token(t))
            .map(str::to_owned);
        let attrs = match o.get(ATTRS_FIELD) {
            None | Some(Value::Null) => Attrs::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(Error::corrupt(
                    path,
                    format!("{ATTRS_FIELD} is not a JSON object"),
                ))
            }
        };
        Ok(Meta {
            class,
            shape,
            dtype,
            purge: flag("purge_disk_on_gc")?,
            automatic: flag("automatic_offloading")?,
            caching: flag("enable_caching")?,
            recomputable: flag(RECOMPUTABLE_FIELD)?,
            commit,
            version,
            attrs,
            remote: o.get(REMOTE_FIELD).filter(|v| v.is_object()).cloned(),
            staged: o.get(STAGED_FIELD).filter(|v| v.is_object()).cloned(),
        })
    }

    /// Reads and parses the metadata file at `path`.
    pub(crate) fn read(path: &Path) -> Result<Meta> {
        let bytes = crate::io::read_bounded(path, META_LIMIT)?;
        Meta::parse(&bytes, path)
    }

    /// Reads and parses the metadata file `name` of the directory `dir`.
    pub(crate) fn read_in(dir: &crate::io::Dir, name: &str) -> Result<Meta> {
        let bytes = dir.read_bounded(name, META_LIMIT)?;
        Meta::parse(&bytes, &dir.join(name))
    }

    /// The flags, with missing ones taken from `defaults` (a missing
    /// `ndoffload_recomputable` is `false`, whatever the defaults).
    pub(crate) fn flags(&self, defaults: EntryFlags) -> EntryFlags {
        EntryFlags {
            purge_on_drop: self.purge.unwrap_or(defaults.purge_on_drop),
            automatic_offloading: self.automatic.unwrap_or(defaults.automatic_offloading),
            caching: self.caching.unwrap_or(defaults.caching),
            recomputable: self.recomputable.unwrap_or(false),
        }
    }
}

fn parse_commit(v: &Value) -> Option<Commit> {
    let o: &Map<String, Value> = v.as_object()?;
    Some(Commit {
        npy_tmp: o.get("npy_tmp")?.as_str()?.to_owned(),
        npy_ino: o.get("npy_ino")?.as_u64()?,
        version: None,
    })
}

/// Renders the metadata as GSEGUtils writes it (one line, its field order),
/// followed by this crate's own fields: `ndoffload_recomputable` (only when
/// `true`), `ndoffload_attrs` (the user attributes, when there are any) and
/// `ndoffload_commit`, then `extra` (a backend's own fields).
pub(crate) fn render(
    shape: &[usize],
    dtype: &str,
    flags: EntryFlags,
    commit: Option<&Commit>,
    attrs: Option<&Attrs>,
    extra: Option<&Attrs>,
) -> String {
    let mut s = String::with_capacity(256);
    s.push_str(
        "{\"schema_version\": 1, \"lazy_disk_cache_class\": \"DiskBackedNDArray\", \"shape\": [",
    );
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{d}");
    }
    let _ = write!(
        s,
        "], \"dtype\": {}, \"purge_disk_on_gc\": {}, \"automatic_offloading\": {}, \"enable_caching\": {}",
        Value::String(dtype.to_owned()),
        flags.purge_on_drop,
        flags.automatic_offloading,
        flags.caching
    );
    if flags.recomputable {
        let _ = write!(s, ", \"{RECOMPUTABLE_FIELD}\": true");
    }
    if let Some(a) = attrs.filter(|a| !a.is_empty()) {
        let _ = write!(s, ", \"{ATTRS_FIELD}\": {}", Value::Object(a.clone()));
    }
    if let Some(c) = commit {
        let _ = write!(
            s,
            ", \"{COMMIT_FIELD}\": {{\"npy_tmp\": {}, \"npy_ino\": {}}}",
            Value::String(c.npy_tmp.clone()),
            c.npy_ino
        );
        if let Some(v) = &c.version {
            let _ = write!(s, ", \"{VERSION_FIELD}\": {}", Value::String(v.clone()));
        }
    }
    for (k, v) in extra.into_iter().flatten() {
        let _ = write!(s, ", {}: {v}", Value::String(k.clone()));
    }
    s.push('}');
    s
}

/// The metadata `bytes` (read from `path`, already parsed as [`Meta`]) with
/// its `ndoffload_attrs` replaced by `attrs` (removed when empty) and its
/// `ndoffload_commit` dropped (the pair it described is complete); every
/// other field is kept, GSEGUtils' first in its order.
#[cfg(test)]
pub(crate) fn with_attrs(bytes: &[u8], path: &Path, attrs: &Attrs) -> Result<String> {
    let attrs = (!attrs.is_empty()).then(|| Value::Object(attrs.clone()));
    with_fields(bytes, path, &[(ATTRS_FIELD, attrs)])
}

/// The metadata `bytes` (read from `path`, already parsed as [`Meta`]) with
/// each field of `set` replaced (`None`: removed) and its
/// `ndoffload_commit` dropped; every other field is kept, GSEGUtils' first
/// in its order.
pub(crate) fn with_fields(
    bytes: &[u8],
    path: &Path,
    set: &[(&str, Option<Value>)],
) -> Result<String> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::corrupt(path, format!("metadata is not valid JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(Error::corrupt(path, "metadata is not a JSON object"));
    };
    o.remove(COMMIT_FIELD);
    for (k, _) in set {
        o.remove(*k);
    }
    let mut s = String::from("{");
    let field = |s: &mut String, k: &str, v: &Value| {
        if s.len() > 1 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}: {v}", Value::String(k.to_owned()));
    };
    for k in GSEG_FIELDS {
        if let Some(v) = o.remove(*k) {
            field(&mut s, k, &v);
        }
    }
    for (k, v) in &o {
        field(&mut s, k, v);
    }
    for (k, v) in set {
        if let Some(v) = v {
            field(&mut s, k, v);
        }
    }
    s.push('}');
    Ok(s)
}

/// Whether `t` is a version token: 1 to 64 characters of `[0-9a-z-]`.
pub(crate) fn is_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: EntryFlags = EntryFlags {
        purge_on_drop: true,
        automatic_offloading: false,
        caching: true,
        recomputable: false,
    };

    #[test]
    fn renders_like_gsegutils() {
        assert_eq!(
            render(&[4, 5], "<f4", F, None, None, None),
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [4, 5], "dtype": "<f4", "purge_disk_on_gc": true, "automatic_offloading": false, "enable_caching": true}"#
        );
        let c = Commit {
            npy_tmp: ".ndo.x.k.npy.tmp".into(),
            npy_ino: 42,
            version: None,
        };
        let text = render(&[], "|b1", F, Some(&c), None, None);
        let m = Meta::parse(text.as_bytes(), Path::new("k.meta.json")).unwrap();
        assert_eq!(m.shape, Some(Vec::<usize>::new()));
        assert_eq!(m.commit, Some(c));
        assert_eq!(m.flags(F), F);
    }

    #[test]
    fn the_recomputable_flag_is_written_only_when_set_and_kept_by_set_attrs() {
        let p = Path::new("k.meta.json");
        assert!(!render(&[2], "<f8", F, None, None, None).contains(RECOMPUTABLE_FIELD));
        let r = EntryFlags {
            recomputable: true,
            ..F
        };
        let text = render(&[2], "<f8", r, None, None, None);
        assert!(text.ends_with(r#""enable_caching": true, "ndoffload_recomputable": true}"#));
        let m = Meta::parse(text.as_bytes(), p).unwrap();
        assert_eq!(m.flags(F), r);
        let mut a = Attrs::new();
        a.insert("units".into(), Value::from("m"));
        let new = with_attrs(text.as_bytes(), p, &a).unwrap();
        assert_eq!(Meta::parse(new.as_bytes(), p).unwrap().flags(F), r);
        // Defaults never make an entry recomputable; a non-boolean is corrupt.
        let bare = r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"}"#;
        let d = EntryFlags {
            recomputable: true,
            ..F
        };
        assert!(
            !Meta::parse(bare.as_bytes(), p)
                .unwrap()
                .flags(d)
                .recomputable
        );
        let bad = r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "ndoffload_recomputable": 1}"#;
        assert!(matches!(
            Meta::parse(bad.as_bytes(), p),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn schema_and_class_errors_are_distinct_from_missing() {
        let p = Path::new("k.meta.json");
        let base = r#""lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1], "dtype": "<f4""#;
        for v in ["\"1\"", "2", "1.0", "null", "true"] {
            let t = format!("{{\"schema_version\": {v}, {base}}}");
            assert!(
                matches!(
                    Meta::parse(t.as_bytes(), p),
                    Err(Error::SchemaVersion { .. })
                ),
                "{v}"
            );
        }
        let t = format!("{{{base}}}");
        assert!(matches!(
            Meta::parse(t.as_bytes(), p),
            Err(Error::Corrupt { .. })
        ));
        // No shape or dtype: both are taken from the .npy header.
        let bare = r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray"}"#;
        let m = Meta::parse(bare.as_bytes(), p).unwrap();
        assert_eq!((m.shape, m.dtype), (None, None));
        let t = r#"{"schema_version": 1, "lazy_disk_cache_class": "Evil", "shape": [1], "dtype": "<f4"}"#;
        assert!(matches!(
            Meta::parse(t.as_bytes(), p),
            Err(Error::UnknownClass { .. })
        ));
        for bad in [&b"[1]"[..], b"\xff\xfe", b"{", b"\"x\""] {
            assert!(matches!(Meta::parse(bad, p), Err(Error::Corrupt { .. })));
        }
        let extra = r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2], "dtype": "<f4", "future": {"x": 1}}"#;
        assert!(Meta::parse(extra.as_bytes(), p).is_ok());
    }

    #[test]
    fn attributes_round_trip_and_replace() {
        let p = Path::new("k.meta.json");
        let mut a = Attrs::new();
        a.insert("crs".into(), Value::from("EPSG:2056"));
        let c = Commit {
            npy_tmp: "t".into(),
            npy_ino: 1,
            version: None,
        };
        let text = render(&[2], "<f8", F, Some(&c), Some(&a), None);
        assert!(text.contains(r#""ndoffload_attrs": {"crs":"EPSG:2056"}, "ndoffload_commit""#));
        let m = Meta::parse(text.as_bytes(), p).unwrap();
        assert_eq!(m.attrs, a);
        a.insert("units".into(), Value::from("m"));
        let new = with_attrs(text.as_bytes(), p, &a).unwrap();
        assert!(new.starts_with(r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [2], "dtype": "<f8""#));
        let m = Meta::parse(new.as_bytes(), p).unwrap();
        assert_eq!((m.attrs, m.commit), (a, None));
        let gone = with_attrs(new.as_bytes(), p, &Attrs::new()).unwrap();
        assert!(!gone.contains("ndoffload_attrs"));
        let bad = r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "ndoffload_attrs": [1]}"#;
        assert!(matches!(
            Meta::parse(bad.as_bytes(), p),
            Err(Error::Corrupt { .. })
        ));
    }
}
