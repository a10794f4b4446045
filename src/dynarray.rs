//! Arrays whose element type is known only at run time: [`DynArray`] (owned)
//! and [`DynView`] (borrowed), one variant per element type the crate
//! stores, and [`Widen`], the conversions numpy calls *safe casts*.

use std::io::Read;
use std::path::Path;

use ndarray::{ArrayD, ArrayViewD};
use ndarray_npy::ReadNpyExt;
use num_complex::Complex;

use crate::element::Element;
use crate::error::{Error, Result};

macro_rules! dyn_types {
    ($m:ident) => {
        $m! {
            Bool(bool, "|b1"),
            I8(i8, "|i1"),
            I16(i16, "i2"),
            I32(i32, "i4"),
            I64(i64, "i8"),
            U8(u8, "|u1"),
            U16(u16, "u2"),
            U32(u32, "u4"),
            U64(u64, "u8"),
            F32(f32, "f4"),
            F64(f64, "f8"),
            C32(Complex<f32>, "c8"),
            C64(Complex<f64>, "c16"),
        }
    };
}

macro_rules! define {
    ($($v:ident($t:ty, $d:literal)),* $(,)?) => {
        /// A borrowed array of any element type the crate stores: one
        /// variant per type, each holding an ndarray view. Match on it to
        /// work with the typed view, or use [`shape`](Self::shape) and
        /// [`dtype`](Self::dtype) without matching.
        #[derive(Clone, Debug)]
        #[non_exhaustive]
        pub enum DynView<'a> {
            $(
                #[doc = concat!("Elements of dtype `", $d, "`.")]
                $v(ArrayViewD<'a, $t>),
            )*
        }

        /// An owned array of any element type the crate stores (see
        /// [`DynView`]); what [`DiskBackedStore::read_dyn`](crate::DiskBackedStore::read_dyn)
        /// returns.
        #[derive(Clone, Debug, PartialEq)]
        #[non_exhaustive]
        pub enum DynArray {
            $(
                #[doc = concat!("Elements of dtype `", $d, "`.")]
                $v(ArrayD<$t>),
            )*
        }

        impl DynView<'_> {
            /// The shape.
            pub fn shape(&self) -> &[usize] {
                match self { $(DynView::$v(a) => a.shape(),)* }
            }

            /// The numpy dtype string of the elements, in host byte order
            /// (`"<f8"`, `"|u1"`).
            pub fn dtype(&self) -> String {
                match self { $(DynView::$v(_) => <$t as Element>::dtype(),)* }
            }

            /// The Rust name of the element type (`"f64"`, `"u8"`,
            /// `"Complex<f32>"`).
            pub fn type_name(&self) -> &'static str {
                let kind = match self { $(DynView::$v(_) => $d,)* };
                crate::element::rust_type_name(&format!("|{}", kind.trim_start_matches('|')))
                    .unwrap_or("?")
            }

            /// A copy in RAM.
            pub fn to_owned(&self) -> DynArray {
                match self { $(DynView::$v(a) => DynArray::$v(a.to_owned()),)* }
            }

            /// The elements converted to `T` by a safe cast (see [`Widen`]),
            /// or `None` when that would lose information (`f64` to `f32`).
            pub fn to_array<T: Widen>(&self) -> Option<ArrayD<T>> {
                T::widen(self)
            }
        }

        impl DynArray {
            /// A view.
            pub fn view(&self) -> DynView<'_> {
                match self { $(DynArray::$v(a) => DynView::$v(a.view()),)* }
            }

            /// The shape.
            pub fn shape(&self) -> &[usize] {
                match self { $(DynArray::$v(a) => a.shape(),)* }
            }

            /// The numpy dtype string of the elements, in host byte order.
            pub fn dtype(&self) -> String {
                self.view().dtype()
            }

            /// The elements converted to `T` by a safe cast (see [`Widen`]);
            /// moved without a copy when they already are `T`.
            pub fn into_array<T: Widen>(self) -> Option<ArrayD<T>> {
                let any: Box<dyn std::any::Any> = match self {
                    $(DynArray::$v(a) => Box::new(a),)*
                };
                match any.downcast::<ArrayD<T>>() {
                    Ok(a) => Some(*a),
                    Err(any) => {
                        // Not `T`: convert from a view of it.
                        $(
                            if let Some(a) = any.downcast_ref::<ArrayD<$t>>() {
                                return T::widen(&DynView::$v(a.view()));
                            }
                        )*
                        None
                    }
                }
            }

            /// Reads a whole `.npy` (either byte order, either memory order)
            /// into RAM; `path` names it in errors.
            pub(crate) fn read_npy(descr: &str, reader: impl Read, path: &Path) -> Result<DynArray> {
                let kind = descr.trim_start_matches(['<', '>', '|', '=']);
                let err = |e: ndarray_npy::ReadNpyError| Error::corrupt(path, e.to_string());
                $(
                    if kind == $d.trim_start_matches('|') {
                        return Ok(DynArray::$v(ArrayD::<$t>::read_npy(reader).map_err(err)?));
                    }
                )*
                Err(Error::Unsupported {
                    path: path.to_path_buf(),
                    reason: format!("dtype {descr:?} is not one of the element types the crate reads"),
                })
            }
        }

        $(
            impl<'a> From<ArrayViewD<'a, $t>> for DynView<'a> {
                fn from(a: ArrayViewD<'a, $t>) -> Self {
                    DynView::$v(a)
                }
            }
            impl From<ArrayD<$t>> for DynArray {
                fn from(a: ArrayD<$t>) -> Self {
                    DynArray::$v(a)
                }
            }
        )*
    };
}

dyn_types!(define);

/// An element type that others convert to without losing information, as
/// numpy's *safe* casting (`np.can_cast(from, to, "safe")`) and
/// `ndarray-npy`'s readers allow: the same type in either byte order; a
/// narrower integer to a wider one of a sign that holds all its values;
/// `bool` to any number; integers to floats (`i64` and `u64` to `f64`, as
/// numpy does, although values above 2^53 round); `f32` to `f64`; reals to
/// complex numbers of at least their width.
///
/// # Examples
///
/// ```
/// use ndarray::{arr1, ArrayD};
/// use ndarray_offload::DynArray;
///
/// let a = DynArray::from(arr1(&[1u8, 2, 255]).into_dyn());
/// let f: ArrayD<f64> = a.view().to_array().unwrap();
/// assert_eq!(f.as_slice().unwrap(), &[1.0, 2.0, 255.0]);
/// assert!(a.view().to_array::<i8>().is_none()); // 255 does not fit
/// ```
pub trait Widen: Element {
    /// `v` converted to `Self`, or `None` when the cast is not safe.
    fn widen(v: &DynView<'_>) -> Option<ArrayD<Self>>;
}

macro_rules! widen {
    ($t:ty: $($v:ident => $f:expr),* $(,)?) => {
        impl Widen for $t {
            fn widen(v: &DynView<'_>) -> Option<ArrayD<$t>> {
                #[allow(unreachable_patterns)]
                match v {
                    $(DynView::$v(a) => Some(a.mapv($f)),)*
                    _ => None,
                }
            }
        }
    };
}

widen!(bool: Bool => |x| x);
widen!(i8: Bool => i8::from, I8 => |x| x);
widen!(u8: Bool => u8::from, U8 => |x| x);
widen!(i16: Bool => i16::from, I8 => i16::from, U8 => i16::from, I16 => |x| x);
widen!(u16: Bool => u16::from, U8 => u16::from, U16 => |x| x);
widen!(i32: Bool => i32::from, I8 => i32::from, U8 => i32::from, I16 => i32::from,
    U16 => i32::from, I32 => |x| x);
widen!(u32: Bool => u32::from, U8 => u32::from, U16 => u32::from, U32 => |x| x);
widen!(i64: Bool => i64::from, I8 => i64::from, U8 => i64::from, I16 => i64::from,
    U16 => i64::from, I32 => i64::from, U32 => i64::from, I64 => |x| x);
widen!(u64: Bool => u64::from, U8 => u64::from, U16 => u64::from, U32 => u64::from,
    U64 => |x| x);
widen!(f32: Bool => |x| f32::from(u8::from(x)), I8 => f32::from, U8 => f32::from,
    I16 => f32::from, U16 => f32::from, F32 => |x| x);
widen!(f64: Bool => |x| f64::from(u8::from(x)), I8 => f64::from, U8 => f64::from,
    I16 => f64::from, U16 => f64::from, I32 => f64::from, U32 => f64::from,
    I64 => |x| x as f64, U64 => |x| x as f64, F32 => f64::from, F64 => |x| x);
widen!(Complex<f32>: Bool => |x| Complex::new(f32::from(u8::from(x)), 0.0),
    I8 => |x| Complex::new(f32::from(x), 0.0), U8 => |x| Complex::new(f32::from(x), 0.0),
    I16 => |x| Complex::new(f32::from(x), 0.0), U16 => |x| Complex::new(f32::from(x), 0.0),
    F32 => |x| Complex::new(x, 0.0), C32 => |x| x);
widen!(Complex<f64>: Bool => |x| Complex::new(f64::from(u8::from(x)), 0.0),
    I8 => |x| Complex::new(f64::from(x), 0.0), U8 => |x| Complex::new(f64::from(x), 0.0),
    I16 => |x| Complex::new(f64::from(x), 0.0), U16 => |x| Complex::new(f64::from(x), 0.0),
    I32 => |x| Complex::new(f64::from(x), 0.0), U32 => |x| Complex::new(f64::from(x), 0.0),
    I64 => |x| Complex::new(x as f64, 0.0), U64 => |x| Complex::new(x as f64, 0.0),
    F32 => |x| Complex::new(f64::from(x), 0.0), F64 => |x| Complex::new(x, 0.0),
    C32 => |x: Complex<f32>| Complex::new(f64::from(x.re), f64::from(x.im)), C64 => |x| x);

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn safe_casts_follow_numpy() {
        let i = DynArray::from(arr1(&[-1i32, 7]).into_dyn());
        assert_eq!(i.view().to_array::<f64>().unwrap()[[0]], -1.0);
        assert_eq!(i.view().to_array::<i64>().unwrap()[[1]], 7);
        assert!(i.view().to_array::<f32>().is_none());
        assert!(i.view().to_array::<u64>().is_none());
        let f = DynArray::from(arr1(&[0.5f64]).into_dyn());
        assert!(f.view().to_array::<f32>().is_none());
        assert_eq!(f.clone().into_array::<f64>().unwrap()[[0]], 0.5);
        assert_eq!(f.view().type_name(), "f64");
        let b = DynArray::from(arr1(&[true, false]).into_dyn());
        assert_eq!(
            b.into_array::<u8>()
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [1, 0]
        );
    }
}
