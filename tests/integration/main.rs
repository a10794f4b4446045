//! The crate's integration tests (one binary).

mod api;
mod array;
mod budget;
mod cli;
mod common;
mod concurrency;
mod conformance;
mod crash;
mod disk_budget;
mod examples;
mod faults;
mod hardening;
mod numpy;
mod overlap;
mod pack;
mod powerloss;
mod processes;
mod python_reader;
mod reliability;
#[cfg(feature = "remote")]
mod remote;
#[cfg(feature = "remote")]
mod remote_acked;
#[cfg(feature = "remote")]
mod remote_robust;
#[cfg(feature = "remote")]
mod remote_setup;
#[cfg(feature = "remote")]
mod remote_windows;
#[cfg(feature = "remote")]
mod remote_write;
mod store;
#[cfg(feature = "remote")]
mod tiers;
mod versions;
