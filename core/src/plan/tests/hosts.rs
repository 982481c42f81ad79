//! Literal driver inventories of the packagings [`crate::inventory`] handles, as discovery
//! returns them (the paths and SONAMEs of `discover/layouts.rs`), and the host snapshot the
//! plans of these tests see.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::inventory::{
    group_of, Arch, DeviceNode, DriverBinary, DriverLibrary, GpuDevice, Inventory, IpcEndpoint,
    MigDevice, Roots, NVML_NOT_TRIED,
};
use crate::plan::HostSnapshot;
use crate::proc_overlay::ProcFacts;
use crate::request::Capability;

/// A driver packaging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Debian bookworm's packages: real files in `nvidia/current`, reached through the
    /// alternatives links from `/usr/lib/x86_64-linux-gnu`; `nvidia-smi` in
    /// `/usr/lib/nvidia/current`.
    Debian,
    /// GKE's `/usr/local/nvidia` as the driver root (`lib64`, `bin`, `firmware`, `share`).
    UsrLocalNvidia,
}

/// Driver versions of the layouts (those of the packages they copy).
fn version(layout: Layout) -> &'static str {
    match layout {
        Layout::Debian => "535.261.03",
        Layout::UsrLocalNvidia => "550.90.07",
    }
}

/// Libraries by name with their SONAMEs (`None`: SONAME = file name).
const LIBRARIES: &[(&str, Option<&str>)] = &[
    ("libcuda", Some("libcuda.so.1")),
    ("libcudadebugger", Some("libcudadebugger.so.1")),
    ("libnvidia-ml", Some("libnvidia-ml.so.1")),
    ("libnvidia-cfg", Some("libnvidia-cfg.so.1")),
    (
        "libnvidia-ptxjitcompiler",
        Some("libnvidia-ptxjitcompiler.so.1"),
    ),
    ("libnvidia-nvvm", Some("libnvidia-nvvm.so.4")),
    ("libnvidia-opencl", Some("libnvidia-opencl.so.1")),
    ("libnvcuvid", Some("libnvcuvid.so.1")),
    ("libnvidia-encode", Some("libnvidia-encode.so.1")),
    ("libEGL_nvidia", Some("libEGL_nvidia.so.0")),
    ("libGLX_nvidia", Some("libGLX_nvidia.so.0")),
    ("libnvidia-glcore", None),
    ("libnvidia-glsi", None),
    ("libnvidia-tls", None),
];

fn node(path: &str, major: u32, minor: u32) -> DeviceNode {
    DeviceNode {
        path: PathBuf::from(path),
        host_path: PathBuf::from(path),
        major,
        minor,
    }
}

/// The `nvidia-caps` major of these hosts.
const CAPS_MAJOR: u32 = 237;

fn cap_node(minor: u32) -> DeviceNode {
    node(
        &format!("/dev/nvidia-caps/nvidia-cap{minor}"),
        CAPS_MAJOR,
        minor,
    )
}

/// A host with `gpus` GPUs (A100s, so that MIG is possible) of `layout`; with `mig`, GPU 0 is
/// in MIG mode with two MIG devices.
pub fn inventory(layout: Layout, gpus: u32, mig: bool) -> Inventory {
    let v = version(layout);
    let (driver_root, lib_host, lib_container) = match layout {
        Layout::Debian => (
            "/",
            "/usr/lib/x86_64-linux-gnu/nvidia/current",
            "/usr/lib/x86_64-linux-gnu",
        ),
        Layout::UsrLocalNvidia => ("/usr/local/nvidia", "/usr/local/nvidia/lib64", "/lib64"),
    };
    let libraries = LIBRARIES
        .iter()
        .map(|(name, soname)| {
            let file = format!("{name}.so.{v}");
            DriverLibrary {
                path: Path::new(lib_host).join(&file),
                container_path: Path::new(lib_container).join(&file),
                soname: Some(soname.map_or(file.clone(), str::to_owned)),
                group: group_of(name).expect("a driver library"),
            }
        })
        .collect();
    let binary = |name: &str, capability| match layout {
        Layout::Debian => DriverBinary {
            path: Path::new("/usr/lib/nvidia/current").join(name),
            container_path: Path::new("/usr/bin").join(name),
            capability,
        },
        Layout::UsrLocalNvidia => DriverBinary {
            path: Path::new("/usr/local/nvidia/bin").join(name),
            container_path: Path::new("/bin").join(name),
            capability,
        },
    };
    let (firmware, configs) = match layout {
        Layout::Debian => (
            format!("/lib/firmware/nvidia/{v}/gsp_ga10x.bin"),
            "/usr/share/glvnd/egl_vendor.d/10_nvidia.json".to_owned(),
        ),
        Layout::UsrLocalNvidia => (
            format!("/usr/local/nvidia/firmware/nvidia/{v}/gsp_ga10x.bin"),
            "/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json".to_owned(),
        ),
    };
    let gpu_list: Vec<GpuDevice> = (0..gpus)
        .map(|i| GpuDevice {
            index: i,
            uuid: format!("GPU-{i:08x}-1111-2222-3333-444455556666"),
            minor: i,
            bus_id: format!("00000000:{:02x}:00.0", 0x10 + i),
            proc_dir: format!("0000:{:02x}:00.0", 0x10 + i),
            model: "NVIDIA A100-SXM4-80GB".to_owned(),
            arch: None,
            brand: None,
        })
        .collect();
    let gpu_nodes = (0..gpus)
        .map(|i| (i, node(&format!("/dev/nvidia{i}"), 195, i)))
        .collect();
    let mut mig_minors = BTreeMap::from([("config".to_owned(), 1), ("monitor".to_owned(), 2)]);
    let mut mig_devices = Vec::new();
    if mig {
        for (index, gi) in [(0u32, 1u32), (1, 2)] {
            let gi_minor = 12 + 9 * gi;
            mig_minors.insert(format!("gpu0/gi{gi}/access"), gi_minor);
            mig_minors.insert(format!("gpu0/gi{gi}/ci0/access"), gi_minor + 1);
            mig_devices.push(MigDevice {
                parent: 0,
                index,
                gi,
                ci: 0,
                uuid: None,
                gi_access: cap_node(gi_minor),
                ci_access: cap_node(gi_minor + 1),
            });
        }
    }
    Inventory {
        roots: Roots {
            driver_root: PathBuf::from(driver_root),
            dev_root: PathBuf::from("/"),
            proc_root: PathBuf::from("/proc"),
        },
        arch: Arch::X86_64,
        driver_version: v.to_owned(),
        gpus: gpu_list,
        ctl: node("/dev/nvidiactl", 195, 255),
        uvm: Some(node("/dev/nvidia-uvm", 510, 0)),
        uvm_tools: Some(node("/dev/nvidia-uvm-tools", 510, 1)),
        modeset: Some(node("/dev/nvidia-modeset", 195, 254)),
        gpu_nodes,
        libraries,
        library_search: vec![PathBuf::from("/etc/ld.so.cache")],
        binaries: vec![
            binary("nvidia-smi", Capability::Utility),
            binary("nvidia-debugdump", Capability::Utility),
            binary("nvidia-cuda-mps-control", Capability::Compute),
        ],
        firmware: vec![(
            PathBuf::from(&firmware),
            PathBuf::from(format!("/lib/firmware/nvidia/{v}/gsp_ga10x.bin")),
        )],
        graphics_configs: vec![(
            PathBuf::from(configs),
            PathBuf::from("/usr/share/glvnd/egl_vendor.d/10_nvidia.json"),
        )],
        char_majors: BTreeMap::from([
            ("nvidia-uvm".to_owned(), 510),
            ("nvidia-caps".to_owned(), CAPS_MAJOR),
        ]),
        cuda_version: None,
        nvml_unavailable: Some(NVML_NOT_TRIED.to_owned()),
        mig: mig_devices,
        mig_minors,
    }
}

/// What these tests' host holds besides the inventory: the persistenced socket, a driver tree
/// that lets NVML modify device files, and each GPU's MIG capability directories.
pub fn snapshot(inventory: &Inventory) -> HostSnapshot {
    let gpu_caps = inventory
        .gpus
        .iter()
        .map(|g| {
            let gis = inventory
                .mig
                .iter()
                .filter(|m| m.parent == g.index)
                .map(|m| (m.gi, vec![m.ci]))
                .collect();
            (g.minor, gis)
        })
        .collect();
    HostSnapshot {
        ipc: vec![IpcEndpoint {
            host: PathBuf::from("/run/nvidia-persistenced/socket"),
            container: PathBuf::from("/run/nvidia-persistenced/socket"),
            capability: Capability::Utility,
        }],
        proc: ProcFacts {
            present: true,
            params: Some("ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\n".to_owned()),
            gpu_caps,
            mig_files: vec!["config".to_owned(), "monitor".to_owned()],
        },
        arch: Arch::X86_64,
        ..HostSnapshot::default()
    }
}
