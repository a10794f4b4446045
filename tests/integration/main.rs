//! The crate's integration tests (one binary).

mod array;
mod common;
mod numpy;
mod store;
