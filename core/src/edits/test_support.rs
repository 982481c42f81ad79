//! Helpers for tests of the inventory's edits.

use oci_spec::runtime::Spec;

use super::DriverEdits;
use crate::cdi::apply_edits;

/// Applies one set of driver edits through the one engine.
pub fn apply_one(spec: &mut Spec, edits: &DriverEdits) {
    apply_edits(spec, &[edits.to_cdi()]).expect("driver edits are complete");
}
