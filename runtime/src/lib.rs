//! `testflinger-device-connectors`: a drop-in replacement for Testflinger's
//! device connector command line in which every provision type is a
//! WebAssembly component running in a sandbox.
//!
//! Start reading at [`cli::main`]: it parses the command line and hands a
//! stage invocation to [`run::run_stage`], which loads the device config
//! and the job, picks the connector ([`connectors`]), instantiates it with
//! the host functions of [`host`] and calls the stage's export, falling back
//! to the runtime's native [`defaults`] when the connector does not
//! implement the stage.

pub mod cache;
pub mod capability;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod context;
pub mod control_host;
pub mod defaults;
pub mod endpoints;
pub mod engine;
pub mod error;
pub mod host;
pub mod http;
pub mod job_file;
pub mod lab;
pub mod limits;
pub mod logging;
pub mod maas_auth;
pub mod manifest;
pub mod power;
pub mod run;
pub mod rundir;
pub mod schema;
pub mod serial;
pub mod ssh;
pub mod stage;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;
pub mod transfer;
pub mod units;
