//! Where an array's data is: the public [`ArrayState`] and the private
//! `State` that holds the data.

use ndarray::{Array, Dimension};

use crate::element::Element;
use crate::mmap::{LoadMode, MappedNpy};

/// Where an array's data is right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArrayState {
    /// Owned in RAM.
    InMemory,
    /// Memory-mapped from its `.npy` file with the given mode.
    Mapped(LoadMode),
    /// Only in its file; no RAM held.
    Offloaded,
}

pub(crate) enum State<T, D> {
    Owned(Array<T, D>),
    Mapped(MappedNpy<T, D>),
    Offloaded,
}

impl<T: Element, D: Dimension> State<T, D> {
    /// The public state, encoded for `DiskBackedArray::kind` (decoded by
    /// [`decode_state`]).
    pub(super) fn code(&self) -> u8 {
        match self {
            State::Owned(_) => 0,
            State::Mapped(m) => match m.mode() {
                LoadMode::ReadOnly => 1,
                LoadMode::ReadWrite => 2,
                LoadMode::CopyOnWrite => 3,
            },
            State::Offloaded => 4,
        }
    }
}

pub(super) fn decode_state(code: u8) -> ArrayState {
    match code {
        0 => ArrayState::InMemory,
        1 => ArrayState::Mapped(LoadMode::ReadOnly),
        2 => ArrayState::Mapped(LoadMode::ReadWrite),
        3 => ArrayState::Mapped(LoadMode::CopyOnWrite),
        _ => ArrayState::Offloaded,
    }
}
