//! The built-in path and CDI cannot drift apart: a request served by the driver inventory
//! (`NVIDIA_VISIBLE_DEVICES=<GPUs>`) and the same GPUs named through the spec `cdi generate`
//! writes for that inventory (`cdi.k8s.io/...: nvidia.com/gpu=<GPU>`, its toolkit hooks done
//! natively) give the container the same nodes, device rules, mounts, env, links and ld cache.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxDevice, Spec};
use proptest::prelude::*;
use serde_json::json;

use super::hosts::{inventory, snapshot, Layout};
use super::{applied, node_line, plan_for};
use crate::cdi::generate::{generate, Hooks};
use crate::cdi::spec::NodeType;
use crate::cdi::{NodeFacts, Registry};
use crate::inventory::Inventory;
use crate::plan::{HostSnapshot, InjectionPlan};
use crate::request::{Capabilities, GpuRequest, RequestPolicy};

/// How one GPU is named.
#[derive(Debug, Clone, Copy)]
enum Name {
    Index,
    Uuid,
}

fn spec(env: &[String], annotation: Option<String>) -> Spec {
    let mut annotations = serde_json::Map::new();
    if let Some(a) = annotation {
        annotations.insert("cdi.k8s.io/devices".to_owned(), a.into());
    }
    serde_json::from_value(json!({
        "ociVersion": "1.1.0",
        "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["/app"], "env": env},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "annotations": annotations,
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    }))
    .expect("a valid spec")
}

/// The host facts the CDI path reads that the built-in path takes from the inventory: the
/// host nodes' stat (a generated spec names nodes by path only) and the SONAMEs of the mounted
/// libraries, as the files the inventory names would answer.
fn snapshot_for_cdi(inv: &Inventory) -> HostSnapshot {
    let mut host = snapshot(inv);
    let nodes = [&inv.ctl]
        .into_iter()
        .chain(&inv.uvm)
        .chain(&inv.uvm_tools)
        .chain(&inv.modeset)
        .chain(inv.gpu_nodes.values());
    for n in nodes {
        host.cdi_nodes.insert(
            n.host_path.to_string_lossy().into_owned(),
            Ok(NodeFacts {
                typ: NodeType::Char,
                major: i64::from(n.major),
                minor: i64::from(n.minor),
                mode: 0o666,
            }),
        );
    }
    for lib in &inv.libraries {
        if let Some(soname) = &lib.soname {
            host.mounted_sonames
                .insert(lib.path.clone(), soname.clone());
        }
    }
    host
}

/// What the container gets from `plan` applied to `spec`, order-insensitive where the order
/// has no effect (links are independent files; ld cache entries are keyed by name). A node
/// edit without an owner is created root-owned, so an unset uid/gid is written as 0.
fn outcome(spec: &Spec, plan: &InjectionPlan) -> serde_json::Value {
    let (edited, linux) = applied(spec, plan);
    let node = |d: &LinuxDevice| {
        let owner = format!("{} {}", d.uid().unwrap_or(0), d.gid().unwrap_or(0));
        node_line(d, format!("{:?} {owner}", d.file_mode()))
    };
    let mut links = plan.rootfs.links.clone();
    links.sort();
    let mut ld = plan.rootfs.ld_entries.clone();
    ld.sort();
    json!({
        "nodes": linux.devices().iter().flatten().map(node).collect::<Vec<_>>(),
        "rules": serde_json::to_value(linux.resources().as_ref().and_then(|r| r.devices().clone())).expect("json"),
        "mounts": serde_json::to_value(edited.mounts()).expect("json"),
        "env": edited.process().as_ref().and_then(|p| p.env().clone()),
        "links": links,
        "ld": ld,
        "ld_flags": plan.rootfs.ld_flags,
    })
}

fn planned(
    spec: &Spec,
    inv: &Inventory,
    registry: Option<&Registry>,
    host: &HostSnapshot,
) -> InjectionPlan {
    let request = GpuRequest::from_spec(spec, &RequestPolicy::default()).expect("request");
    plan_for(spec, &request, inv, registry, host)
        .expect("planned")
        .expect("something to inject")
}

fn check(layout: Layout, gpus: u32, picked: &[(u32, Name)]) -> Result<(), TestCaseError> {
    let inv = inventory(layout, gpus, false);
    let name = |&(i, n): &(u32, Name)| match n {
        Name::Index => i.to_string(),
        Name::Uuid => inv.gpus[i as usize].uuid.clone(),
    };
    let names: Vec<String> = if picked.is_empty() {
        vec!["all".to_owned()]
    } else {
        picked.iter().map(name).collect()
    };
    let caps = "NVIDIA_DRIVER_CAPABILITIES=all".to_owned();

    let built_in_spec = spec(
        &[
            format!("NVIDIA_VISIBLE_DEVICES={}", names.join(",")),
            caps.clone(),
        ],
        None,
    );
    let built_in = planned(&built_in_spec, &inv, None, &snapshot(&inv));

    let host = snapshot_for_cdi(&inv);
    let generated =
        generate(&inv, Capabilities::all(), &Hooks::default(), &host.ipc).expect("generated");
    let registry = Registry::from_specs([(PathBuf::from("/etc/cdi/nvidia.yaml"), generated)]);
    let cdi_names: Vec<String> = names
        .iter()
        .map(|n| format!("nvidia.com/gpu={n}"))
        .collect();
    let cdi_spec = spec(&[caps], Some(cdi_names.join(",")));
    let through_cdi = planned(&cdi_spec, &inv, Some(&registry), &host);

    prop_assert_eq!(
        &through_cdi.gpus,
        &cdi_names,
        "served by the generated spec"
    );
    prop_assert_eq!(
        outcome(&built_in_spec, &built_in),
        outcome(&cdi_spec, &through_cdi)
    );
    Ok(())
}

fn picked(gpus: u32) -> impl Strategy<Value = Vec<(u32, Name)>> {
    let name = prop_oneof![Just(Name::Index), Just(Name::Uuid)];
    proptest::collection::btree_map(0..gpus, name, 0..=gpus as usize)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_built_in_path_and_the_generated_spec_give_the_same_container(
        (layout, gpus, picked) in (prop_oneof![Just(Layout::Debian), Just(Layout::UsrLocalNvidia)], 1u32..=8)
            .prop_flat_map(|(l, n)| (Just(l), Just(n), picked(n)))
    ) {
        check(layout, gpus, &picked)?;
    }
}

#[test]
fn all_gpus_on_each_layout() {
    for layout in [Layout::Debian, Layout::UsrLocalNvidia] {
        check(layout, 8, &[]).expect("same container");
    }
}
