//! [`IntoStoredArray`]: the arrays a [`DiskBackedArray`](super::DiskBackedArray)
//! or a store entry is made from.

use ndarray::{
    Array, ArrayBase, ArrayView, ArrayViewMut, CowArray, Data, Dimension, OwnedArcRepr, OwnedRepr,
};

use crate::element::Element;

/// An array that can become the data of a
/// [`DiskBackedArray`](crate::DiskBackedArray) or of a store entry: an owned
/// [`Array`] is **moved** (no copy); a reference to any array
/// (`&Array`, `&ArrayView`, `&ArcArray`, ...), a view or a slice is
/// **copied** once into a new owned array, in standard (C) order when
/// its layout allows it.
///
/// There is nothing to implement: it is implemented for `Array<T, D>`,
/// `ArcArray<T, D>` (moved when not shared), `CowArray<T, D>`,
/// `ArrayView<T, D>`, `ArrayViewMut<T, D>` and `&ArrayBase<S, D>` for every
/// `S: Data`.
///
/// # Examples
///
/// ```
/// use ndarray::{s, Array2};
/// use ndarray_offload::DiskBackedStore;
///
/// let dir = tempfile::tempdir()?;
/// let store = DiskBackedStore::open(dir.path())?;
/// let big = Array2::<f64>::zeros((100, 3));
/// store.insert("first_rows", big.slice(s![..5, ..]))?; // a view: copied
/// store.insert("by_ref", &big)?; // a reference: copied
/// store.insert("moved", big)?; // owned: moved, no copy
/// assert_eq!(store.info("first_rows")?.shape, [5, 3]);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
pub trait IntoStoredArray {
    /// The element type.
    type Elem: Element;
    /// The dimension.
    type Dim: Dimension;
    /// The owned array: moved if `self` owns its data, else a copy.
    fn into_stored_array(self) -> Array<Self::Elem, Self::Dim>;
}

impl<T: Element, D: Dimension> IntoStoredArray for ArrayBase<OwnedRepr<T>, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self
    }
}

impl<T: Element, D: Dimension> IntoStoredArray for ArrayBase<OwnedArcRepr<T>, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self.into_owned()
    }
}

impl<T: Element, D: Dimension> IntoStoredArray for CowArray<'_, T, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self.into_owned()
    }
}

impl<T: Element, D: Dimension> IntoStoredArray for ArrayView<'_, T, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self.to_owned()
    }
}

impl<T: Element, D: Dimension> IntoStoredArray for ArrayViewMut<'_, T, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self.to_owned()
    }
}

impl<T: Element, S: Data<Elem = T>, D: Dimension> IntoStoredArray for &ArrayBase<S, D> {
    type Elem = T;
    type Dim = D;
    fn into_stored_array(self) -> Array<T, D> {
        self.to_owned()
    }
}
