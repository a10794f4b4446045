//! The `.meta.json` half of an entry's pair.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
        Meta::parse_at(bytes, || path.to_path_buf())
    }

    /// [`parse`](Self::parse), the path named in errors made by `path`
    /// only for an error.
    pub(crate) fn parse_at(bytes: &[u8], path: impl Fn() -> PathBuf) -> Result<Meta> {
        let corrupt = |reason: String| Error::Corrupt {
            path: path(),
            reason,
        };
        let text = std::str::from_utf8(bytes)
            .map_err(|e| corrupt(format!("metadata is not UTF-8: {e}")))?;
        // The layout this crate and GSEGUtils write: no JSON parser needed
        // (and no nesting to bound).
        if let Some(c) = canonical(bytes) {
            return c.into_meta(corrupt);
        }
        crate::depth::check_json(bytes, crate::depth::MAX_JSON_DEPTH)
            .map_err(|e| corrupt(format!("metadata is not valid JSON: {e}")))?;
        let doc: Doc = serde_json::from_str(text)
            .map_err(|e| corrupt(format!("metadata is not valid JSON: {e}")))?;
        let Doc::Object(o) = doc else {
            return Err(corrupt("metadata is not a JSON object".into()));
        };
        let o = *o;
        let field = |v: Option<Value>, k: &str| -> Result<Value> {
            v.ok_or_else(|| corrupt(format!("metadata has no {k:?} field")))
        };
        let version = field(o.schema_version, "schema_version")?;
        if version.as_u64() != Some(SCHEMA_VERSION) || !version.is_u64() {
            return Err(Error::SchemaVersion {
                path: path(),
                found: version.to_string(),
            });
        }
        let class = match field(o.class, "lazy_disk_cache_class")? {
            Value::String(s) => s,
            other => {
                return Err(Error::UnknownClass {
                    path: path(),
                    class: other.to_string(),
                })
            }
        };
        if !KNOWN_CLASSES.contains(&class.as_str()) {
            return Err(Error::UnknownClass {
                path: path(),
                class,
            });
        }
        let shape = match o.shape {
            None => None,
            Some(Value::Array(a)) => Some(
                a.iter()
                    .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or_else(|| {
                        corrupt("shape is not a list of non-negative integers".into())
                    })?,
            ),
            _ => return Err(corrupt("shape is not a list".into())),
        };
        let dtype = match o.dtype {
            None => None,
            Some(Value::String(s)) => Some(s),
            _ => return Err(corrupt("dtype is not a string".into())),
        };
        if let Some(s) = &shape {
            check_fits(s, dtype.as_deref()).map_err(&corrupt)?;
        }
        let flag = |v: Option<Value>, k: &str| -> Result<Option<bool>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(b)),
                Some(_) => Err(corrupt(format!("{k} is not a boolean"))),
            }
        };
        let commit = o.commit.as_ref().and_then(parse_commit);
        // A token is a plain name part (it names a file): anything else is
        // not one this crate wrote, and is read as no token.
        let version = match o.version {
            Some(Value::String(t)) if is_token(&t) => Some(t),
            _ => None,
        };
        let attrs = match o.attrs {
            None | Some(Value::Null) => Attrs::new(),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(corrupt(format!("{ATTRS_FIELD} is not a JSON object"))),
        };
        Ok(Meta {
            class,
            shape,
            dtype,
            purge: flag(o.purge, "purge_disk_on_gc")?,
            automatic: flag(o.automatic, "automatic_offloading")?,
            caching: flag(o.caching, "enable_caching")?,
            recomputable: flag(o.recomputable, RECOMPUTABLE_FIELD)?,
            commit,
            version,
            attrs,
            remote: o.remote.filter(|v| v.is_object()),
            staged: o.staged.filter(|v| v.is_object()),
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
        Meta::parse_at(&bytes, || dir.join(name))
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

/// The fields of a `.meta.json` this crate reads, each as its parsed JSON
/// value (`None`: absent). Every other field is parsed as a JSON value too
/// (so that the same documents are valid JSON as with a whole parse) and
/// dropped; a field given twice counts once, the last, as in a parsed JSON
/// object. No map of every field and no key is allocated: the typed read
/// of a small metadata file costs a third of a whole parse.
#[derive(Default)]
struct Fields {
    schema_version: Option<Value>,
    class: Option<Value>,
    shape: Option<Value>,
    dtype: Option<Value>,
    purge: Option<Value>,
    automatic: Option<Value>,
    caching: Option<Value>,
    recomputable: Option<Value>,
    commit: Option<Value>,
    version: Option<Value>,
    attrs: Option<Value>,
    remote: Option<Value>,
    staged: Option<Value>,
}

/// A parsed metadata document: an object's [`Fields`], or any other JSON
/// value (parsed whole, then dropped).
enum Doc {
    Object(Box<Fields>),
    Other,
}

/// A key of a metadata object.
enum Key {
    SchemaVersion,
    Class,
    Shape,
    Dtype,
    Purge,
    Automatic,
    Caching,
    Recomputable,
    Commit,
    Version,
    Attrs,
    Remote,
    Staged,
    Other,
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Key, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, k: &str) -> std::result::Result<Key, E> {
                Ok(match k {
                    "schema_version" => Key::SchemaVersion,
                    "lazy_disk_cache_class" => Key::Class,
                    "shape" => Key::Shape,
                    "dtype" => Key::Dtype,
                    "purge_disk_on_gc" => Key::Purge,
                    "automatic_offloading" => Key::Automatic,
                    "enable_caching" => Key::Caching,
                    RECOMPUTABLE_FIELD => Key::Recomputable,
                    COMMIT_FIELD => Key::Commit,
                    VERSION_FIELD => Key::Version,
                    ATTRS_FIELD => Key::Attrs,
                    REMOTE_FIELD => Key::Remote,
                    STAGED_FIELD => Key::Staged,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Doc, D::Error> {
        use serde::de::{MapAccess, SeqAccess};
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Doc, E> {
                Ok(Doc::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Doc, A::Error> {
                while a.next_element::<Value>()?.is_some() {}
                Ok(Doc::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Doc, A::Error> {
                let mut f = Fields::default();
                while let Some(k) = a.next_key::<Key>()? {
                    let slot = match k {
                        Key::SchemaVersion => &mut f.schema_version,
                        Key::Class => &mut f.class,
                        Key::Shape => &mut f.shape,
                        Key::Dtype => &mut f.dtype,
                        Key::Purge => &mut f.purge,
                        Key::Automatic => &mut f.automatic,
                        Key::Caching => &mut f.caching,
                        Key::Recomputable => &mut f.recomputable,
                        Key::Commit => &mut f.commit,
                        Key::Version => &mut f.version,
                        Key::Attrs => &mut f.attrs,
                        Key::Remote => &mut f.remote,
                        Key::Staged => &mut f.staged,
                        Key::Other => {
                            a.next_value::<Value>()?;
                            continue;
                        }
                    };
                    *slot = Some(a.next_value::<Value>()?);
                }
                Ok(Doc::Object(Box::new(f)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The fields of metadata in exactly the layout [`render`] writes (and
/// GSEGUtils, with Python's `json.dump`): GSEGUtils' fields in their order,
/// then `ndoffload_recomputable`, `ndoffload_commit` and
/// `ndoffload_version` when present, `", "` and `": "` between them, plain
/// decimal integers, strings of printable ASCII without escapes. `None`
/// for anything else (attributes, other fields, other spacing, escapes,
/// numbers that are not plain integers of 64 bits, trailing bytes): the
/// JSON parser then reads it. What is read here is what the parser would
/// read from the same bytes.
fn canonical(bytes: &[u8]) -> Option<Canonical> {
    let mut c = Canon { s: bytes, i: 0 };
    c.lit(
        b"{\"schema_version\": 1, \"lazy_disk_cache_class\": \"DiskBackedNDArray\", \"shape\": [",
    )?;
    let mut shape = Vec::new();
    if !c.eat(b"]") {
        loop {
            shape.push(usize::try_from(c.uint()?).ok()?);
            if c.eat(b"]") {
                break;
            }
            c.lit(b", ")?;
        }
    }
    c.lit(b", \"dtype\": ")?;
    let dtype = c.string()?.to_owned();
    c.lit(b", \"purge_disk_on_gc\": ")?;
    let purge = c.boolean()?;
    c.lit(b", \"automatic_offloading\": ")?;
    let automatic = c.boolean()?;
    c.lit(b", \"enable_caching\": ")?;
    let caching = c.boolean()?;
    let mut m = Canonical {
        shape,
        dtype,
        purge,
        automatic,
        caching,
        recomputable: None,
        commit: None,
        version: None,
    };
    if c.eat(b", \"ndoffload_recomputable\": ") {
        m.recomputable = Some(c.boolean()?);
    }
    if c.eat(b", \"ndoffload_commit\": {\"npy_tmp\": ") {
        let npy_tmp = c.string()?.to_owned();
        c.lit(b", \"npy_ino\": ")?;
        let npy_ino = c.uint()?;
        c.lit(b"}")?;
        m.commit = Some(Commit {
            npy_tmp,
            npy_ino,
            version: None,
        });
    }
    if c.eat(b", \"ndoffload_version\": ") {
        m.version = Some(c.string()?.to_owned());
    }
    c.lit(b"}")?;
    (c.i == bytes.len()).then_some(m)
}

/// Metadata in the layout [`canonical`] reads: every field of the right
/// type, the schema version and class the known ones, no attributes.
struct Canonical {
    shape: Vec<usize>,
    dtype: String,
    purge: bool,
    automatic: bool,
    caching: bool,
    recomputable: Option<bool>,
    commit: Option<Commit>,
    version: Option<String>,
}

impl Canonical {
    /// The metadata, after the checks the layout does not make by itself
    /// (the same as for any metadata): the shape fits, the version is a
    /// token.
    fn into_meta(self, corrupt: impl Fn(String) -> Error) -> Result<Meta> {
        check_fits(&self.shape, Some(&self.dtype)).map_err(corrupt)?;
        Ok(Meta {
            class: KNOWN_CLASSES[0].to_owned(),
            shape: Some(self.shape),
            dtype: Some(self.dtype),
            purge: Some(self.purge),
            automatic: Some(self.automatic),
            caching: Some(self.caching),
            recomputable: self.recomputable,
            commit: self.commit,
            version: self.version.filter(|t| is_token(t)),
            attrs: Attrs::new(),
            remote: None,
            staged: None,
        })
    }
}

/// A handle is made from the metadata alone: the element count and byte
/// size of `shape` must be representable, as for an .npy header. Zero
/// dimensions do not make any shape fit (see `checked_nbytes`).
fn check_fits(shape: &[usize], dtype: Option<&str>) -> std::result::Result<(), String> {
    let itemsize = dtype.and_then(crate::element::dtype_itemsize).unwrap_or(1);
    match crate::element::checked_nbytes(shape, itemsize) {
        Some(_) => Ok(()),
        None => Err(format!("shape {shape:?} overflows the addressable size")),
    }
}

/// A cursor over metadata bytes for [`canonical`].
struct Canon<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Canon<'a> {
    /// Skips `lit` if the bytes go on with it.
    fn eat(&mut self, lit: &[u8]) -> bool {
        let found = self.s[self.i..].starts_with(lit);
        if found {
            self.i += lit.len();
        }
        found
    }

    fn lit(&mut self, lit: &[u8]) -> Option<()> {
        self.eat(lit).then_some(())
    }

    /// A JSON integer from 0 to `u64::MAX` written in plain decimal (no
    /// sign, fraction, exponent or leading zero).
    fn uint(&mut self) -> Option<u64> {
        let digits = self.s[self.i..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let text = &self.s[self.i..self.i + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        if matches!(self.s.get(self.i + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let mut n: u64 = 0;
        for &d in text {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.i += digits;
        Some(n)
    }

    /// A JSON string of printable ASCII without escapes.
    fn string(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let len = self.s[self.i..].iter().position(|&b| b == b'"')?;
        let text = &self.s[self.i..self.i + len];
        if !text
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
        {
            return None;
        }
        self.i += len + 1;
        std::str::from_utf8(text).ok()
    }

    fn boolean(&mut self) -> Option<bool> {
        if self.eat(b"true") {
            Some(true)
        } else if self.eat(b"false") {
            Some(false)
        } else {
            None
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

    /// The parse of the canonical layout reads what the JSON parser reads
    /// from the same bytes: for every metadata this crate renders, and for
    /// every one-byte change of it that the fast path still takes.
    #[test]
    fn the_canonical_layout_reads_as_the_json_parser_reads_it() {
        let p = Path::new("k.meta.json");
        // A trailing space is valid JSON that the fast path never takes.
        let slow = |b: &[u8]| Meta::parse(&[b, b" "].concat(), p);
        let mut texts = Vec::new();
        for shape in [&[][..], &[0], &[7], &[1000, 3], &[2, 3, 4, 5]] {
            for dtype in ["<f4", "|b1", "<c16", "weird dtype"] {
                for (purge, automatic, caching, recomputable) in
                    [(false, false, true, false), (true, true, false, true)]
                {
                    let flags = EntryFlags {
                        purge_on_drop: purge,
                        automatic_offloading: automatic,
                        caching,
                        recomputable,
                    };
                    let c = Commit {
                        npy_tmp: ".ndo.1-2-3-4.k.npy.tmp".into(),
                        npy_ino: u64::MAX,
                        version: Some("1-2-3-4".into()),
                    };
                    let plain = Commit {
                        version: None,
                        npy_ino: 12,
                        ..c.clone()
                    };
                    texts.push(render(shape, dtype, flags, None, None, None));
                    texts.push(render(shape, dtype, flags, Some(&c), None, None));
                    texts.push(render(shape, dtype, flags, Some(&plain), None, None));
                }
            }
        }
        // As `set_attrs` leaves it with no attributes: the version, no commit.
        let committed = texts[1].clone();
        texts.push(with_attrs(committed.as_bytes(), p, &Attrs::new()).unwrap());
        for t in &texts {
            let b = t.as_bytes();
            assert!(canonical(b).is_some(), "{t}");
            assert_eq!(Meta::parse(b, p).unwrap(), slow(b).unwrap(), "{t}");
        }
        let mut taken = 0;
        for t in texts.iter().step_by(5) {
            let b = t.as_bytes();
            for i in 0..b.len() {
                let mut variants = vec![[&b[..i], &b[i + 1..]].concat()];
                for r in [
                    b'0', b'1', b'9', b'"', b'\\', b' ', b'e', b'.', b']', b'-', b'}',
                ] {
                    let mut m = b.to_vec();
                    m[i] = r;
                    variants.push(m);
                }
                for m in variants {
                    if canonical(&m).is_some() {
                        taken += 1;
                        assert_eq!(
                            Meta::parse(&m, p).ok(),
                            slow(&m).ok(),
                            "{}",
                            String::from_utf8_lossy(&m)
                        );
                    }
                }
            }
        }
        assert!(taken > 100, "{taken}");
        // A backend's own fields (an object store's): the JSON parser.
        let mut extra = Attrs::new();
        extra.insert(
            REMOTE_FIELD.into(),
            serde_json::json!({"object": "data/k-1.npy", "size": 128}),
        );
        let t = render(&[2], "<f4", F, None, None, Some(&extra));
        assert!(canonical(t.as_bytes()).is_none(), "{t}");
        let m = Meta::parse(t.as_bytes(), p).unwrap();
        assert_eq!(m.remote.as_ref(), extra.get(REMOTE_FIELD));
        // Not the canonical layout: the JSON parser reads them.
        for t in [
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [01], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#,
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1e3], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#,
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [18446744073709551616], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#,
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1], "dtype": "<\u0066\"4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true}"#,
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true, "shape": [2]}"#,
            r#"{"schema_version": 1, "lazy_disk_cache_class": "DiskBackedNDArray", "shape": [1], "dtype": "<f4", "purge_disk_on_gc": false, "automatic_offloading": false, "enable_caching": true, "ndoffload_attrs": {"a": 1}}"#,
            r#"{"schema_version":1,"lazy_disk_cache_class":"DiskBackedNDArray","shape":[1],"dtype":"<f4","purge_disk_on_gc":false,"automatic_offloading":false,"enable_caching":true}"#,
        ] {
            assert!(canonical(t.as_bytes()).is_none(), "{t}");
        }
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
