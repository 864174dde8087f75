//! Helpers for the runtime's unit tests.

pub mod context;
pub mod log;
mod module_graph;
