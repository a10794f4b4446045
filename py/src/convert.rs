//! numpy arrays to the crate's arrays (one copy, fallible) and the crate's
//! pinned entries to numpy arrays (no copy).

use ndarray::{ArrayD, ArrayViewD, IxDyn, ShapeBuilder};
use ndarray_offload::DynArray;
use num_complex::Complex;
use numpy::npyffi::{self, npy_intp, PY_ARRAY_API};
use numpy::{Element as NpElement, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods};
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::keeper::{Kind, PinInfo};

/// A borrowed numpy array of one of the element types the store holds,
/// readable without the GIL (the caller keeps the numpy array alive and
/// borrowed read-only while it is used).
pub enum Input<'a> {
    Bool(ArrayViewD<'a, bool>),
    I8(ArrayViewD<'a, i8>),
    I16(ArrayViewD<'a, i16>),
    I32(ArrayViewD<'a, i32>),
    I64(ArrayViewD<'a, i64>),
    U8(ArrayViewD<'a, u8>),
    U16(ArrayViewD<'a, u16>),
    U32(ArrayViewD<'a, u32>),
    U64(ArrayViewD<'a, u64>),
    F32(ArrayViewD<'a, f32>),
    F64(ArrayViewD<'a, f64>),
    C32(ArrayViewD<'a, Complex<f32>>),
    C64(ArrayViewD<'a, Complex<f64>>),
}

/// Keeps the read-only borrows of the numpy array for as long as the view
/// is used.
pub struct Borrowed<'py> {
    _keep: Box<dyn Keep + 'py>,
}

/// Anything kept alive for its drop.
pub trait Keep {}
impl<T> Keep for T {}

macro_rules! kinds {
    ($m:ident) => {
        $m! {
            Bool(bool),
            I8(i8),
            I16(i16),
            I32(i32),
            I64(i64),
            U8(u8),
            U16(u16),
            U32(u32),
            U64(u64),
            F32(f32),
            F64(f64),
            C32(Complex<f32>),
            C64(Complex<f64>),
        }
    };
}

/// The view of `obj`, a numpy array of an element type the store holds in
/// the host's byte order (the Python side converts other byte orders).
///
/// # Safety
///
/// The view must be dropped before the returned borrow.
pub unsafe fn borrow<'py>(obj: &Bound<'py, PyAny>) -> PyResult<(Input<'static>, Borrowed<'py>)> {
    macro_rules! try_each {
        ($($v:ident($t:ty)),* $(,)?) => {
            $(
                if let Ok(a) = obj.cast::<PyArrayDyn<$t>>() {
                    let ro = a.try_readonly().map_err(|e| PyValueError::new_err(e.to_string()))?;
                    // SAFETY: the caller drops the view before `Borrowed`,
                    // which holds the read-only borrow of the array (and
                    // so the array itself).
                    let v: ArrayViewD<'static, $t> = unsafe { std::mem::transmute(ro.as_array()) };
                    return Ok((Input::$v(v), Borrowed { _keep: Box::new(ro) }));
                }
            )*
        };
    }
    kinds!(try_each);
    let dtype = obj
        .getattr("dtype")
        .and_then(|d| d.str().map(|s| s.to_string()))
        .unwrap_or_else(|_| "?".into());
    Err(PyTypeError::new_err(format!(
        "unsupported dtype {dtype}: the store holds bool, int8..int64, uint8..uint64, float32, float64, complex64 and complex128 arrays"
    )))
}

/// A copy of `v` in an array the crate owns, allocated fallibly (a shape too
/// large for memory is a `MemoryError`, never an abort); C order, or
/// Fortran order when `v` is Fortran-contiguous.
fn copy<T: Clone>(v: &ArrayViewD<'_, T>) -> Result<ArrayD<T>, CopyError> {
    let n = v.len();
    let bytes = n
        .checked_mul(std::mem::size_of::<T>())
        .filter(|b| *b <= isize::MAX as usize)
        .ok_or(CopyError::TooLarge(n))?;
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(n)
        .map_err(|_| CopyError::NoMemory(bytes))?;
    let shape = v.shape().to_vec();
    if let Some(s) = v.as_slice() {
        out.extend_from_slice(s);
        return Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("shape of the source"));
    }
    if v.ndim() > 1 && v.t().is_standard_layout() {
        if let Some(s) = v.as_slice_memory_order() {
            out.extend_from_slice(s);
            return Ok(ArrayD::from_shape_vec(IxDyn(&shape).f(), out).expect("shape of the source"));
        }
    }
    out.extend(v.iter().cloned());
    Ok(ArrayD::from_shape_vec(IxDyn(&shape), out).expect("shape of the source"))
}

pub enum CopyError {
    TooLarge(usize),
    NoMemory(usize),
}

impl From<CopyError> for PyErr {
    fn from(e: CopyError) -> PyErr {
        match e {
            CopyError::TooLarge(n) => PyValueError::new_err(format!(
                "array of {n} elements is larger than the address space"
            )),
            CopyError::NoMemory(b) => {
                PyMemoryError::new_err(format!("cannot allocate {b} bytes for a copy of the array"))
            }
        }
    }
}

impl Input<'_> {
    /// A copy the crate owns (called without the GIL).
    pub fn to_owned(&self) -> Result<DynArray, CopyError> {
        macro_rules! each {
            ($($v:ident($t:ty)),* $(,)?) => {
                match self {
                    $(Input::$v(a) => copy(a).map(DynArray::from),)*
                }
            };
        }
        kinds!(each)
    }
}

/// Moves an owned array of the crate into numpy (a copy-free hand-over of
/// its buffer).
pub fn owned_to_numpy(py: Python<'_>, a: DynArray) -> PyResult<Py<PyAny>> {
    macro_rules! each {
        ($($v:ident($t:ty)),* $(,)?) => {
            match a {
                $(DynArray::$v(x) => Ok(numpy::PyArray::from_owned_array(py, x).into_any().unbind()),)*
                other => Err(PyTypeError::new_err(format!("unsupported dtype {}", other.dtype()))),
            }
        };
    }
    kinds!(each)
}

fn descr(py: Python<'_>, kind: Kind) -> Bound<'_, numpy::PyArrayDescr> {
    macro_rules! each {
        ($($v:ident($t:ty)),* $(,)?) => {
            match kind {
                $(Kind::$v => <$t as NpElement>::get_dtype(py),)*
            }
        };
    }
    kinds!(each)
}

/// A read-only numpy array over the pinned data, whose base is `base` (the
/// object that unpins it when numpy frees the array).
///
/// # Safety
///
/// The data described by `info` must stay valid and unchanged while `base`
/// lives.
pub unsafe fn pinned_to_numpy(
    py: Python<'_>,
    info: &PinInfo,
    base: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let dtype = descr(py, info.kind);
    let item = dtype.itemsize() as isize;
    let mut dims: Vec<npy_intp> = info.shape.iter().map(|&d| d as npy_intp).collect();
    let mut strides: Vec<npy_intp> = info
        .strides
        .iter()
        .map(|&s| (s * item) as npy_intp)
        .collect();
    // SAFETY: the descriptor reference is stolen by NewFromDescr; dims and
    // strides have `nd` elements; the data stays valid while `base` lives
    // (the caller's contract), and the array holds `base` as its base object.
    unsafe {
        let ptr = PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            npyffi::get_type_object(py, npyffi::NpyTypes::PyArray_Type),
            dtype.into_dtype_ptr(),
            dims.len() as std::os::raw::c_int,
            dims.as_mut_ptr(),
            strides.as_mut_ptr(),
            info.ptr as *mut std::ffi::c_void,
            npyffi::NPY_ARRAY_ALIGNED, // not NPY_ARRAY_WRITEABLE: read-only
            std::ptr::null_mut(),
        );
        if ptr.is_null() {
            return Err(PyErr::fetch(py));
        }
        let arr: Bound<'_, PyAny> = Bound::from_owned_ptr(py, ptr);
        if PY_ARRAY_API.PyArray_SetBaseObject(
            py,
            ptr as *mut npyffi::PyArrayObject,
            base.into_ptr(),
        ) < 0
        {
            return Err(PyErr::fetch(py));
        }
        Ok(arr.unbind())
    }
}
