//! Each request form on each literal host, planned and applied, against a golden file under
//! `core/testdata/plan/<case>.json`: the device nodes, device cgroup rules, mounts (in order),
//! env, links, ld cache entries and `/proc` overlay, or the error. `UPDATE_GOLDEN=1` rewrites
//! the files (review the diff).
// The golden files are this test's own fixtures: it reads them (and with UPDATE_GOLDEN=1, named
// in its environment, writes them); the crate's code reads nothing.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::{json, Value};

use super::hosts::{inventory, snapshot, Layout};
use super::{applied, node_line, plan_for};
use crate::request::{GpuRequest, RequestPolicy};

/// One request on one host.
struct Case {
    /// The golden file's name.
    name: &'static str,
    /// Layout, GPUs, GPU 0 in MIG mode.
    host: (Layout, u32, bool),
    /// The container's env besides `PATH`.
    env: &'static [&'static str],
    /// Its annotations.
    annotations: &'static [(&'static str, &'static str)],
    /// Device plugin volume mounts (`/var/run/nvidia-container-devices/<this>`); the policy
    /// accepts them.
    volume_mounts: &'static [&'static str],
    /// CAP_SYS_ADMIN in the bounding set.
    privileged: bool,
}

const D1: (Layout, u32, bool) = (Layout::Debian, 1, false);
const D8: (Layout, u32, bool) = (Layout::Debian, 8, false);
const MIG: (Layout, u32, bool) = (Layout::Debian, 2, true);
const LOCAL: (Layout, u32, bool) = (Layout::UsrLocalNvidia, 2, false);

const fn case(name: &'static str, host: (Layout, u32, bool), env: &'static [&'static str]) -> Case {
    Case {
        name,
        host,
        env,
        annotations: &[],
        volume_mounts: &[],
        privileged: false,
    }
}

const CASES: &[Case] = &[
    case(
        "debian-1-all-default-caps",
        D1,
        &["NVIDIA_VISIBLE_DEVICES=all"],
    ),
    case(
        "debian-1-index-all-caps",
        D1,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=all"],
    ),
    case("debian-1-none", D1, &["NVIDIA_VISIBLE_DEVICES=none"]),
    case("debian-1-void", D1, &["NVIDIA_VISIBLE_DEVICES=void"]),
    case("debian-1-unset", D1, &[]),
    case("debian-1-legacy-cuda-image", D1, &["CUDA_VERSION=12.2.0"]),
    case(
        "debian-1-requirement-unmet",
        D1,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=13.0",
        ],
    ),
    case(
        "debian-1-requirement-disabled",
        D1,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=13.0",
            "NVIDIA_DISABLE_REQUIRE=true",
        ],
    ),
    case(
        "debian-8-indices-compute",
        D8,
        &[
            "NVIDIA_VISIBLE_DEVICES=1,3",
            "NVIDIA_DRIVER_CAPABILITIES=compute",
        ],
    ),
    case(
        "debian-8-uuid-and-bus-id",
        D8,
        &["NVIDIA_VISIBLE_DEVICES=GPU-00000005-1111-2222-3333-444455556666,00000000:17:00.0"],
    ),
    case("debian-8-unknown-index", D8, &["NVIDIA_VISIBLE_DEVICES=8"]),
    case(
        "debian-8-cdi-name-in-env",
        D8,
        &["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"],
    ),
    Case {
        annotations: &[("cdi.k8s.io/devices", "nvidia.com/gpu=2,nvidia.com/gpu=6")],
        ..case("debian-8-cdi-annotation", D8, &[])
    },
    Case {
        volume_mounts: &["GPU-00000004-1111-2222-3333-444455556666"],
        ..case(
            "debian-8-device-plugin-volume-mount",
            D8,
            &["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"],
        )
    },
    case("mig-device-by-index", MIG, &["NVIDIA_VISIBLE_DEVICES=0:1"]),
    case(
        "mig-config-unprivileged",
        MIG,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"],
    ),
    Case {
        privileged: true,
        ..case(
            "mig-config-and-monitor-privileged",
            MIG,
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_MIG_CONFIG_DEVICES=all",
                "NVIDIA_MIG_MONITOR_DEVICES=all",
            ],
        )
    },
    case(
        "usr-local-nvidia-all-caps",
        LOCAL,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=all",
        ],
    ),
    case(
        "usr-local-nvidia-graphics-display",
        LOCAL,
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "NVIDIA_DRIVER_CAPABILITIES=graphics,display",
        ],
    ),
];

/// The container's spec as containerd writes it for an image (trimmed to what matters).
fn spec_of(case: &Case) -> Spec {
    let mut env = vec![Value::from(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    )];
    env.extend(case.env.iter().map(|e| Value::from(*e)));
    let mut bounding = vec!["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
    if case.privileged {
        bounding.push("CAP_SYS_ADMIN");
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
    ];
    for m in case.volume_mounts {
        mounts.push(json!({
            "destination": format!("/var/run/nvidia-container-devices/{m}"),
            "type": "bind", "source": "/dev/null", "options": ["rbind", "ro"],
        }));
    }
    let annotations: serde_json::Map<String, Value> = case
        .annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
        .collect();
    serde_json::from_value(json!({
        "ociVersion": "1.1.0",
        "process": {
            "user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["/app"], "env": env,
            "capabilities": {"bounding": bounding, "effective": bounding, "permitted": bounding},
        },
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "annotations": annotations,
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}},
    }))
    .expect("a valid spec")
}

/// What `case` gives the container, as the golden file records it.
fn outcome(case: &Case) -> Value {
    let (layout, gpus, mig) = case.host;
    let inv = inventory(layout, gpus, mig);
    let host = snapshot(&inv);
    let spec = spec_of(case);
    let policy = RequestPolicy {
        accept_volume_mounts: true,
        ..RequestPolicy::default()
    };
    let request = match GpuRequest::from_spec(&spec, &policy) {
        Ok(r) => r,
        Err(e) => return json!({"request_error": e.to_string()}),
    };
    let plan = match plan_for(&spec, &request, &inv, None, &host) {
        Ok(Some(p)) => p,
        Ok(None) => return json!({"plan": "nothing to inject"}),
        Err(e) => return json!({"error": e.to_string(), "invalid_request": e.is_invalid_request()}),
    };
    let (edited, linux) = applied(&spec, &plan);
    let devices: Vec<String> = linux
        .devices()
        .iter()
        .flatten()
        .map(|d| {
            let mode = or_unset(d.file_mode().map(|m| format!("{m:o}")));
            let owner = format!("uid={} gid={}", or_unset(d.uid()), or_unset(d.gid()));
            node_line(d, format!("mode={mode} {owner}"))
        })
        .collect();
    let rules: Vec<String> = linux
        .resources()
        .as_ref()
        .and_then(|r| r.devices().clone())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            format!(
                "{} {} {}:{} {}",
                if r.allow() { "allow" } else { "deny" },
                r.typ()
                    .map_or_else(|| "a".to_owned(), |t| t.as_str().to_owned()),
                r.major().map_or("*".to_owned(), |m| m.to_string()),
                r.minor().map_or("*".to_owned(), |m| m.to_string()),
                r.access().clone().unwrap_or_default()
            )
        })
        .collect();
    let mounts: Vec<String> = edited
        .mounts()
        .iter()
        .flatten()
        .map(|m| {
            format!(
                "{} <- {} ({}) [{}]",
                m.destination().display(),
                m.source()
                    .as_deref()
                    .map(Path::display)
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                m.typ().clone().unwrap_or_default(),
                m.options().clone().unwrap_or_default().join(",")
            )
        })
        .collect();
    let env = edited
        .process()
        .as_ref()
        .and_then(|p| p.env().clone())
        .unwrap_or_default();
    json!({
        "gpus": plan.gpus,
        "devices": devices,
        "device_rules": rules,
        "mounts": mounts,
        "env": env,
        "links": pair_lines(&plan.rootfs.links, "->"),
        "ld_cache": pair_lines(&plan.rootfs.ld_entries, "=>"),
        "ld_flags": format!("{:#x}", plan.rootfs.ld_flags),
        "cuda_compat": format!("{:?}", plan.rootfs.compat),
        "proc_overlay": {
            "params": plan.overlay.params.as_ref().map(|p| String::from_utf8_lossy(p).into_owned()),
            "hidden": plan.overlay.hidden,
            "hidden_files": plan.overlay.hidden_files,
        },
        "driver_mounts": plan.driver_mounts,
    })
}

/// `pairs` as `<a> <arrow> <b>` lines.
fn pair_lines<A: AsRef<Path>, B: AsRef<Path>>(pairs: &[(A, B)], arrow: &str) -> Vec<String> {
    pairs
        .iter()
        .map(|(a, b)| format!("{} {arrow} {}", a.as_ref().display(), b.as_ref().display()))
        .collect()
}

/// A value as the golden files write it, `unset` when absent.
fn or_unset<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "unset".to_owned(), |v| v.to_string())
}

fn golden_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/plan")
        .join(format!("{name}.json"))
}

#[test]
fn every_request_form_plans_as_its_golden_file_says() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut mismatched = Vec::new();
    for case in CASES {
        let got = serde_json::to_string_pretty(&outcome(case)).expect("json") + "\n";
        let path = golden_path(case.name);
        if update {
            std::fs::write(&path, &got).expect("write the golden file");
            continue;
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        if got != want {
            eprintln!("--- {}\n{got}", path.display());
            mismatched.push(case.name);
        }
    }
    assert!(
        mismatched.is_empty(),
        "plans differ from their golden files (got printed above; UPDATE_GOLDEN=1 rewrites): {mismatched:?}"
    );
}

#[test]
fn every_golden_file_has_a_case() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plan");
    for entry in std::fs::read_dir(&dir).expect("testdata/plan") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let stem = name.trim_end_matches(".json");
        assert!(
            CASES.iter().any(|c| c.name == stem),
            "{name} has no case: remove it"
        );
    }
}
