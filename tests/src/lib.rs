//! Integration, fault and compatibility tests of Meridian live in `tests/`;
//! their shared helpers are in `tests/support/`. This library holds what the
//! tests use that needs tests of its own: the linearizability checker.

pub mod linearizability;
