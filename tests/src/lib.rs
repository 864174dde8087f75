//! A simulated Testflinger lab on loopback: devices under test reachable
//! over SSH, control hosts, ser2net-style serial consoles, power control
//! and the HTTP services connectors talk to. Used by the end-to-end tests
//! and by the README's demo.
