//! Integration, fault and compatibility tests of Meridian live in `tests/`;
//! their shared helpers are in `tests/support/`.
