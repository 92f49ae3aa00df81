//! Tests of the placement rules and property tests of the invariants.
