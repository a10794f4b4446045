//! The crate's integration tests (one binary).

mod array;
mod budget;
mod cli;
mod common;
mod numpy;
mod store;
mod crash;
