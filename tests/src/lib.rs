//! Integration, fault and compatibility tests of Meridian live in `tests/`;
//! their shared helpers are in `tests/support/`. This library holds what the
//! tests use that needs tests of its own: the linearizability checker and
//! the WAN fault layer (a UDP proxy).

pub mod linearizability;
pub mod udp_proxy;
