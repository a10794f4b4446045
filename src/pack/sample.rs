//! Samples: several named arrays of any dtypes plus JSON metadata, stored
//! as one pack entry.

use std::path::PathBuf;

use ndarray::{Array, ArrayBase, Data, Dimension, IxDyn};
use serde_json::Value;

use crate::element::{dtype_itemsize, Element};
use crate::error::{Error, Result};

/// One named array of a [`Sample`], held as its dtype, shape and C-order
/// element bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SampleArray {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// An owned group of named arrays (of any element types and shapes) plus an
/// optional JSON metadata value, written and read back as one pack entry.
///
/// Build one with [`with_array`](Sample::with_array) and
/// [`with_meta`](Sample::with_meta), store it with
/// [`PackWriter::append_sample`](crate::pack::PackWriter::append_sample), and get it
/// back with [`PackEntry::to_sample`](crate::pack::PackEntry::to_sample) (owned) or
/// read its arrays in place through [`PackEntry::array`](crate::pack::PackEntry::array).
///
/// Arrays keep their insertion order. Two samples are equal when they hold
/// the same names, dtypes, shapes, element bytes and metadata.
///
/// # Examples
///
/// ```
/// use ndarray::{array, Array1, Array2};
/// use ndarray_offload::pack::Sample;
/// use serde_json::json;
///
/// let s = Sample::new()
///     .with_array("image", &Array2::<u8>::zeros((4, 4)))?
///     .with_array("label", &array![3i64])?
///     .with_meta(json!({"source": "tile 7"}));
/// assert_eq!(s.names().collect::<Vec<_>>(), ["image", "label"]);
/// let label: Array1<i64> = s.get("label")?;
/// assert_eq!(label[0], 3);
/// # Ok::<_, ndarray_offload::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub(crate) arrays: Vec<SampleArray>,
    pub(crate) meta: Option<Value>,
    pub(crate) origin: Option<PathBuf>,
}

impl PartialEq for Sample {
    fn eq(&self, other: &Self) -> bool {
        self.arrays == other.arrays && self.meta == other.meta
    }
}

impl Sample {
    /// An empty sample.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ndarray_offload::pack::Sample::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn origin(&self) -> PathBuf {
        self.origin
            .clone()
            .unwrap_or_else(|| PathBuf::from("<sample>"))
    }

    /// Adds the array `name` (copying its elements, in C order).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`] if `name` is empty or already used in this
    /// sample; [`Error::InvalidInput`] if the element type has no simple
    /// numpy dtype.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::pack::Sample;
    ///
    /// let mut s = Sample::new();
    /// s.insert("xyz", &array![[1.0f32, 2.0, 3.0]])?;
    /// assert!(s.insert("xyz", &array![1u8]).is_err());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn insert<T, S, D>(
        &mut self,
        name: impl Into<String>,
        array: &ArrayBase<S, D>,
    ) -> Result<()>
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::InvalidName {
                name,
                rule: "a sample array needs a non-empty name",
            });
        }
        if self.arrays.iter().any(|a| a.name == name) {
            return Err(Error::InvalidName {
                name,
                rule: "duplicate array name in one sample",
            });
        }
        let dtype = T::dtype();
        if dtype_itemsize(&dtype).is_none() {
            return Err(Error::InvalidInput {
                path: self.origin(),
                reason: format!("element dtype {dtype} cannot be stored in a pack"),
            });
        }
        let std = array.as_standard_layout();
        let mut bytes = Vec::with_capacity(std.len() * std::mem::size_of::<T>());
        if let Some(s) = std.as_slice() {
            T::write_slice(s, &mut bytes).map_err(|e| Error::InvalidInput {
                path: self.origin(),
                reason: format!("encoding array {name:?}: {e}"),
            })?;
        }
        self.arrays.push(SampleArray {
            name,
            dtype,
            shape: array.shape().to_vec(),
            bytes,
        });
        Ok(())
    }

    /// Adds the array `name` and returns the sample (builder style).
    ///
    /// # Errors
    ///
    /// As [`insert`](Sample::insert).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// use ndarray_offload::pack::Sample;
    ///
    /// let s = Sample::new().with_array("a", &array![1.0f64, 2.0])?;
    /// assert_eq!(s.len(), 1);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn with_array<T, S, D>(
        mut self,
        name: impl Into<String>,
        array: &ArrayBase<S, D>,
    ) -> Result<Self>
    where
        T: Element,
        S: Data<Elem = T>,
        D: Dimension,
    {
        self.insert(name, array)?;
        Ok(self)
    }

    /// Sets the metadata value and returns the sample (builder style).
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::Sample;
    /// use serde_json::json;
    ///
    /// let s = Sample::new().with_meta(json!({"label": 3}));
    /// assert_eq!(s.meta(), Some(&json!({"label": 3})));
    /// ```
    pub fn with_meta(mut self, meta: Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Sets or clears the metadata value.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray_offload::pack::Sample;
    ///
    /// let mut s = Sample::new();
    /// s.set_meta(Some(serde_json::json!("x")));
    /// s.set_meta(None);
    /// assert!(s.meta().is_none());
    /// ```
    pub fn set_meta(&mut self, meta: Option<Value>) {
        self.meta = meta;
    }

    /// The metadata value, if any.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ndarray_offload::pack::Sample::new().meta().is_none());
    /// ```
    pub fn meta(&self) -> Option<&Value> {
        self.meta.as_ref()
    }

    /// Number of arrays.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(ndarray_offload::pack::Sample::new().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.arrays.len()
    }

    /// Whether the sample holds no array.
    ///
    /// # Examples
    ///
    /// ```
    /// assert!(ndarray_offload::pack::Sample::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.arrays.is_empty()
    }

    /// The array names, in insertion order.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::array;
    /// let s = ndarray_offload::pack::Sample::new().with_array("b", &array![1u8])?;
    /// assert_eq!(s.names().collect::<Vec<_>>(), ["b"]);
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.arrays.iter().map(|a| a.name.as_str())
    }

    /// The numpy dtype string and shape of array `name`.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::Array2;
    /// let s = ndarray_offload::pack::Sample::new().with_array("m", &Array2::<f32>::zeros((2, 3)))?;
    /// assert_eq!(s.describe("m"), Some(("<f4", &[2usize, 3][..])));
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn describe(&self, name: &str) -> Option<(&str, &[usize])> {
        self.arrays
            .iter()
            .find(|a| a.name == name)
            .map(|a| (a.dtype.as_str(), a.shape.as_slice()))
    }

    /// A copy of array `name` as an owned array of element type `T`.
    ///
    /// # Errors
    ///
    /// [`Error::KeyNotFound`] if there is no such array,
    /// [`Error::DtypeMismatch`] / [`Error::DimensionMismatch`] if it holds
    /// another element type or dimensionality.
    ///
    /// # Examples
    ///
    /// ```
    /// use ndarray::{array, Array1};
    /// let s = ndarray_offload::pack::Sample::new().with_array("v", &array![1i32, 2])?;
    /// let v: Array1<i32> = s.get("v")?;
    /// assert_eq!(v, array![1, 2]);
    /// assert!(s.get::<f32, ndarray::Ix1>("v").is_err());
    /// # Ok::<_, ndarray_offload::Error>(())
    /// ```
    pub fn get<T: Element, D: Dimension>(&self, name: &str) -> Result<Array<T, D>> {
        let path = self.origin();
        let a = self
            .arrays
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| Error::KeyNotFound {
                name: name.to_string(),
                path: path.clone(),
            })?;
        decode_owned(
            &a.bytes,
            &a.dtype,
            &a.shape,
            &path,
            &format!("array {name:?}"),
        )
    }
}

/// Decodes little-endian element bytes into an owned array, checking dtype
/// and dimensionality.
pub(crate) fn decode_owned<T: Element, D: Dimension>(
    bytes: &[u8],
    dtype: &str,
    shape: &[usize],
    path: &std::path::Path,
    what: &str,
) -> Result<Array<T, D>> {
    let dim = check_type::<T, D>(dtype, shape, path)?;
    let len = dim.size();
    let v = T::read_to_end_exact_vec(bytes, &T::type_descriptor(), len)
        .map_err(|e| Error::corrupt(path, format!("{what}: {e}")))?;
    Array::from_shape_vec(dim, v).map_err(|e| Error::corrupt(path, format!("{what}: {e}")))
}

/// Checks that `dtype`/`shape` fit `T`/`D` and returns the typed shape.
pub(crate) fn check_type<T: Element, D: Dimension>(
    dtype: &str,
    shape: &[usize],
    path: &std::path::Path,
) -> Result<D> {
    let expected = T::dtype();
    if expected != dtype {
        return Err(Error::DtypeMismatch {
            path: path.to_path_buf(),
            expected,
            found: dtype.to_string(),
        });
    }
    if let Some(n) = D::NDIM {
        if n != shape.len() {
            return Err(Error::DimensionMismatch {
                path: path.to_path_buf(),
                expected: n,
                found: shape.len(),
            });
        }
    }
    D::from_dimension(&IxDyn(shape)).ok_or_else(|| Error::DimensionMismatch {
        path: path.to_path_buf(),
        expected: D::NDIM.unwrap_or(shape.len()),
        found: shape.len(),
    })
}
