//! The bound every element type satisfies.

use ndarray_npy::{ReadableElement, ViewElement, ViewMutElement, WritableElement};

/// An element type that can be stored in a `.npy` file and viewed in place
/// from a memory map.
///
/// Implemented for every type `ndarray-npy` reads, writes and views: `bool`,
/// `i8`..`i64`, `u8`..`u64`, `f32`, `f64`, and `num_complex::Complex<f32>` /
/// `Complex<f64>`. There is nothing to implement by hand.
pub trait Element:
    WritableElement + ReadableElement + ViewElement + ViewMutElement + Clone + Send + Sync + 'static
{
    /// The numpy dtype string of this type (`"<f4"`, `"|u1"`, `"|b1"`, ...).
    fn dtype() -> String {
        descr_string(&Self::type_descriptor())
    }
}

impl<T> Element for T where
    T: WritableElement
        + ReadableElement
        + ViewElement
        + ViewMutElement
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Renders a `.npy` type descriptor as numpy's `dtype.str`.
pub(crate) fn descr_string(v: &py_literal::Value) -> String {
    match v.as_string() {
        Some(s) => s.clone(),
        None => v.format_ascii().unwrap_or_else(|_| format!("{v:?}")),
    }
}

/// The Rust type whose elements the numpy dtype `descr` holds, whatever its
/// byte order (`"<f4"` and `">f4"`: `f32`), for messages.
pub(crate) fn rust_type_name(descr: &str) -> Option<&'static str> {
    let kind = descr.get(1..)?;
    Some(match kind {
        "b1" => "bool",
        "i1" => "i8",
        "i2" => "i16",
        "i4" => "i32",
        "i8" => "i64",
        "u1" => "u8",
        "u2" => "u16",
        "u4" => "u32",
        "u8" => "u64",
        "f4" => "f32",
        "f8" => "f64",
        "c8" => "Complex<f32>",
        "c16" => "Complex<f64>",
        _ => return None,
    })
}

/// `descr` with its Rust type and, when not the host's, its byte order:
/// `"f32 (<f4)"`, `"f64 (>f8, big-endian)"`, `"'<U10'"` for a dtype no Rust
/// element type holds.
pub(crate) fn describe_dtype(descr: &str) -> String {
    let native = if cfg!(target_endian = "little") {
        '<'
    } else {
        '>'
    };
    match rust_type_name(descr) {
        Some(t) if descr.starts_with(native) || descr.starts_with('|') => format!("{t} ({descr})"),
        Some(t) if descr.starts_with('>') => format!("{t} ({descr}, big-endian)"),
        Some(t) if descr.starts_with('<') => format!("{t} ({descr}, little-endian)"),
        _ => format!("{descr:?}"),
    }
}

/// Byte size of one element of the numpy dtype `descr`, when it is one of the
/// simple scalar dtypes (`<f4`, `|u1`, `>i8`, `<c16`, ...).
pub(crate) fn dtype_itemsize(descr: &str) -> Option<usize> {
    let b = descr.as_bytes();
    if b.len() < 3 || !matches!(b[0], b'<' | b'>' | b'|' | b'=') {
        return None;
    }
    if !matches!(b[1], b'b' | b'i' | b'u' | b'f' | b'c') {
        return None;
    }
    descr[2..].parse().ok().filter(|n| *n > 0 && *n <= 32)
}

/// Bytes of an array of `shape` whose elements take `itemsize` bytes, or
/// `None` when the array could not exist: the product of the non-zero
/// dimensions times the item size must fit in `isize::MAX`, as numpy and
/// ndarray require, so `(0, 2**63)` and `(2**40, 2**40, 0)` are refused
/// although they hold no element.
pub(crate) fn checked_nbytes(shape: &[usize], itemsize: usize) -> Option<u64> {
    let mut bytes = itemsize.max(1) as u64;
    let mut empty = false;
    for &d in shape {
        if d == 0 {
            empty = true;
        } else {
            bytes = bytes.checked_mul(u64::try_from(d).ok()?)?;
        }
    }
    if bytes > isize::MAX as u64 {
        return None;
    }
    Some(if empty || itemsize == 0 { 0 } else { bytes })
}

#[cfg(test)]
mod tests {
    use super::{checked_nbytes, describe_dtype};

    #[test]
    fn dtypes_are_described_with_rust_types() {
        assert_eq!(describe_dtype("<f4"), "f32 (<f4)");
        assert_eq!(describe_dtype("|u1"), "u8 (|u1)");
        assert_eq!(describe_dtype(">f8"), "f64 (>f8, big-endian)");
        assert_eq!(describe_dtype("<U10"), "\"<U10\"");
    }

    #[test]
    fn sizes_count_every_non_zero_dimension() {
        assert_eq!(checked_nbytes(&[], 4), Some(4));
        assert_eq!(checked_nbytes(&[3, 4], 8), Some(96));
        assert_eq!(checked_nbytes(&[0, 5], 8), Some(0));
        assert_eq!(checked_nbytes(&[0, 1 << 63], 4), None);
        assert_eq!(checked_nbytes(&[1 << 40, 1 << 40, 0], 1), None);
        assert_eq!(checked_nbytes(&[0, 1 << 61], 4), None);
        assert_eq!(checked_nbytes(&[0, 1 << 60], 4), Some(0));
        assert_eq!(
            checked_nbytes(&[isize::MAX as usize], 1),
            Some(isize::MAX as u64)
        );
        assert_eq!(checked_nbytes(&[isize::MAX as usize, 0], 2), None);
    }
}
