//! [`StoredArray`]: the typed handle of a store entry.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, IxDyn};

use super::entry::{self, Loaded, StoreEntry};
use crate::array::{ArrayState, DiskBackedArray, ReadGuard, WriteGuard};
use crate::dynarray::{DynArray, DynView};
use crate::element::Element;
use crate::error::{Error, Result};
use crate::name::EntryName;

/// A typed handle to a store entry (see [`DiskBackedStore::get`](crate::DiskBackedStore::get)).
///
/// Holding the handle keeps the entry's data alive even if the entry is
/// replaced or removed from the store, or the store is closed: the handle
/// is then *detached*. It reads the data it held (from RAM, or from its
/// file, which it keeps open), and a write through it changes only that
/// copy: a detached entry never writes into the store's directory again
/// (flushing or offloading it does nothing).
pub struct StoredArray<T: Element, D: Dimension> {
    entry: Arc<StoreEntry<T>>,
    name: EntryName,
    _d: PhantomData<D>,
}

impl<T: Element, D: Dimension> Clone for StoredArray<T, D> {
    fn clone(&self) -> Self {
        StoredArray {
            entry: self.entry.clone(),
            name: self.name.clone(),
            _d: PhantomData,
        }
    }
}

impl<T: Element, D: Dimension> std::fmt::Debug for StoredArray<T, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredArray")
            .field("name", &self.name)
            .field("array", &self.entry.array)
            .finish()
    }
}

impl<T: Element, D: Dimension> StoredArray<T, D> {
    /// The handle of `loaded`, the entry `name`, if its element type is
    /// `T`; else [`Error::DtypeMismatch`] naming its metadata file. (The
    /// caller checked the dimension.)
    pub(super) fn of(
        loaded: Loaded,
        name: EntryName,
        meta_path: impl FnOnce(&EntryName) -> PathBuf,
    ) -> Result<Self> {
        let found = || loaded.dtype();
        let Some(entry) = entry::downcast::<T>(loaded.clone()) else {
            return Err(Error::DtypeMismatch {
                path: meta_path(&name),
                expected: T::dtype(),
                found: found(),
            });
        };
        Ok(StoredArray {
            entry,
            name,
            _d: PhantomData,
        })
    }

    /// The entry's name.
    pub fn name(&self) -> &EntryName {
        &self.name
    }

    /// A read guard (maps the entry if it is offloaded).
    ///
    /// # Errors
    ///
    /// Errors of mapping and cross-checking the files.
    pub fn read(&self) -> Result<ReadGuard<'_, T, IxDyn, D>> {
        self.entry.array.read_as()
    }

    /// A write guard. A persisted entry is mapped copy-on-write: the store's
    /// published file is never changed in place; the edit is published as a
    /// new pair on flush or offload.
    ///
    /// # Errors
    ///
    /// Errors of mapping.
    pub fn write(&self) -> Result<WriteGuard<'_, T, IxDyn, D>> {
        self.entry.array.write_as()
    }

    /// Runs `f` on a view.
    ///
    /// # Errors
    ///
    /// Errors of mapping or of the automatic re-offload.
    pub fn with_view<R>(&self, f: impl FnOnce(ArrayView<'_, T, D>) -> R) -> Result<R> {
        self.entry.array.with_view_as::<D, R>(f)
    }

    /// Runs `f` on a mutable view.
    ///
    /// # Errors
    ///
    /// Errors of mapping or of the automatic re-offload.
    pub fn with_view_mut<R>(&self, f: impl FnOnce(ArrayViewMut<'_, T, D>) -> R) -> Result<R> {
        self.entry.array.with_view_mut_as::<D, R>(f)
    }

    /// A copy of the data in RAM.
    ///
    /// # Errors
    ///
    /// Errors of mapping.
    pub fn to_owned_array(&self) -> Result<Array<T, D>> {
        self.with_view(|v| v.to_owned())
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.entry.array.shape()
    }

    /// Where the data is now.
    pub fn state(&self) -> ArrayState {
        self.entry.array.state()
    }

    /// The underlying array (dynamic dimension).
    pub fn as_array(&self) -> &DiskBackedArray<T, IxDyn> {
        &self.entry.array
    }
}

macro_rules! dyn_stored {
    ($($v:ident($t:ty)),* $(,)?) => {
        /// A store entry whose element type is known only at run time (see
        /// [`DiskBackedStore::get_dyn`](crate::DiskBackedStore::get_dyn)): one
        /// variant per element type, each holding the typed handle. Match on
        /// it for the typed handle, or call [`read`](Self::read) for a
        /// [`DynView`] without copying.
        #[derive(Clone, Debug)]
        #[non_exhaustive]
        pub enum DynStoredArray {
            $(
                #[doc = concat!("`", stringify!($t), "` elements.")]
                $v(StoredArray<$t, IxDyn>),
            )*
        }

        /// A read guard on a [`DynStoredArray`]; [`view`](Self::view) gives
        /// the data as a [`DynView`].
        #[non_exhaustive]
        pub enum DynReadGuard<'a> {
            $(
                #[doc = concat!("`", stringify!($t), "` elements.")]
                $v(ReadGuard<'a, $t, IxDyn, IxDyn>),
            )*
        }

        impl DynStoredArray {
            /// The handle of `name` if its dtype is one the crate maps.
            pub(super) fn get(store: &crate::DiskBackedStore, name: &str, dtype: &str) -> Result<Option<Self>> {
                $(
                    if dtype == <$t as Element>::dtype() {
                        return Ok(Some(DynStoredArray::$v(store.get::<$t, IxDyn>(name)?)));
                    }
                )*
                Ok(None)
            }

            /// The entry's name.
            pub fn name(&self) -> &EntryName {
                match self { $(DynStoredArray::$v(a) => a.name(),)* }
            }

            /// The shape.
            pub fn shape(&self) -> &[usize] {
                match self { $(DynStoredArray::$v(a) => a.shape(),)* }
            }

            /// The numpy dtype string (`"<f8"`).
            pub fn dtype(&self) -> String {
                match self { $(DynStoredArray::$v(_) => <$t as Element>::dtype(),)* }
            }

            /// A read guard (maps the entry if it is offloaded).
            ///
            /// # Errors
            ///
            /// As [`StoredArray::read`].
            pub fn read(&self) -> Result<DynReadGuard<'_>> {
                Ok(match self { $(DynStoredArray::$v(a) => DynReadGuard::$v(a.read()?),)* })
            }

            /// A copy of the data in RAM.
            ///
            /// # Errors
            ///
            /// As [`StoredArray::read`].
            pub fn to_owned_array(&self) -> Result<DynArray> {
                Ok(self.read()?.view().to_owned())
            }
        }

        impl DynReadGuard<'_> {
            /// A view of the data.
            pub fn view(&self) -> DynView<'_> {
                match self { $(DynReadGuard::$v(g) => DynView::$v(g.view()),)* }
            }
        }
    };
}

dyn_stored! {
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
    C32(num_complex::Complex<f32>),
    C64(num_complex::Complex<f64>),
}
