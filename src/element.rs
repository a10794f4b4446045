//! The bound every element type satisfies.

use ndarray_npy::{ReadableElement, ViewElement, ViewMutElement, WritableElement};

/// An element type that can be stored in a `.npy` file and viewed in place
/// from a memory map.
///
/// Implemented for every type `ndarray-npy` reads, writes and views: `bool`,
/// `i8`..`i64`, `u8`..`u64`, `f32`, `f64`, and `num_complex::Complex<f32>` /
/// `Complex<f64>`. There is nothing to implement by hand.
pub trait Element:
    WritableElement
    + ReadableElement
    + ViewElement
    + ViewMutElement
    + Clone
    + Send
    + Sync
    + 'static
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
