//! A simulated Testflinger lab on loopback: devices under test reachable
//! over SSH, control hosts, ser2net-style serial consoles, power control
//! and the HTTP services connectors talk to. Used by the end-to-end tests
//! and by the README's demo.
//!
//! Every simulated service runs on its own thread with its own async
//! runtime, so it works the same from synchronous tests (which run the CLI
//! as a child process) and from async code; dropping the handle stops it.

pub mod dut;
pub mod keyserver;
pub mod tls;
pub mod web;
