//! The one place the SDK reaches the host. Every wrapper (`log`, `job`,
//! `power`, `serial`, `ssh`, `http`, `transfer`, `clock`) calls these
//! functions; on `wasm32` they call the generated bindings of the WIT
//! world, on native builds the [`crate::testing::FakeHost`] installed on
//! the current thread, so that connector logic runs in plain `cargo test`.
//!
//! Both backends offer the same functions with SDK types, so nothing above
//! this module knows which one it runs on.

#[cfg(target_arch = "wasm32")]
#[path = "wasm.rs"]
mod backend;

#[cfg(not(target_arch = "wasm32"))]
#[path = "native.rs"]
mod backend;

pub(crate) use backend::*;
