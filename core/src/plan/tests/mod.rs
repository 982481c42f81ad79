//! Tests of [`super::plan`] over literal inputs, no root and no I/O besides the golden files:
//! the hosts (`hosts`), a table of request forms each checked against its golden file
//! (`golden`), and the property that the built-in path and a generated CDI spec give a
//! container the same things (`generated`).

use oci_spec::runtime::{Linux, LinuxDevice, Spec};

use crate::cdi::{HookPlan, Registry};
use crate::inventory::Inventory;
use crate::plan::{plan, HostSnapshot, InjectionPlan, PlanError, PlanInputs, PlanPolicy};
use crate::request::GpuRequest;

mod generated;
mod golden;
mod hosts;

/// What [`plan`] decides for `request` (read from `spec`) on `inv`, `host` and the specs of
/// `registry`, under the default policy, with no hook steps left in the spec.
fn plan_for(
    spec: &Spec,
    request: &GpuRequest,
    inv: &Inventory,
    registry: Option<&Registry>,
    host: &HostSnapshot,
) -> Result<Option<InjectionPlan>, PlanError> {
    plan(PlanInputs {
        spec,
        request,
        inventory: Some(inv),
        registry,
        host,
        spec_hooks: &HookPlan::default(),
        policy: PlanPolicy::default(),
    })
}

/// `spec` with `plan`'s edits applied, and its Linux section.
fn applied(spec: &Spec, plan: &InjectionPlan) -> (Spec, Linux) {
    let mut edited = spec.clone();
    plan.apply_to(&mut edited).expect("the plan's edits apply");
    let linux = edited.linux().clone().unwrap_or_default();
    (edited, linux)
}

/// A device node as a line: its path, type and `major:minor`, then `rest`.
fn node_line(d: &LinuxDevice, rest: impl std::fmt::Display) -> String {
    format!(
        "{} {} {}:{} {rest}",
        d.path().display(),
        d.typ().as_str(),
        d.major(),
        d.minor()
    )
}
