//! End-to-end tests: the CLI binary, run as the agent runs it, against the
//! simulated lab of `tf-labsim`.

mod cache;
mod cli;
mod common;
mod compat;
mod fake_connector;
mod hostile;
mod lab;
mod labsim;
mod maas2;
mod muxpi;
mod noprovision;
mod openssh;
mod pinning;
mod reserve;
mod runtest;
