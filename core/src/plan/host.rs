//! The host and image facts [`super::plan`] decides from, gathered once per Create: every read
//! of the GPU path happens here, so that the plan itself is pure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::Split;
use crate::cdi::{gather_node_facts, NodeFactsByPath, Registry};
use crate::compat::{self, CompatLibcuda, COMPAT_DIR};
use crate::discover::{mps_pipe_dir, present_endpoints, Arch, Inventory, IpcEndpoint};
use crate::edits::{gather_gated, GatedDevices};
use crate::elf::{read_info, MAX_LIBRARY_SIZE};
use crate::proc_overlay::ProcFacts;
use crate::request::GpuRequest;
use crate::rootfs::Rootfs;
use crate::untrusted::{self, FinalLink};
use crate::Config;

/// Where the host's facts are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPaths {
    /// The host root: daemon sockets, the MPS pipe directory and gated devices are under it
    /// (the config's `dev_root`, `/` on a real host).
    pub host_root: PathBuf,
    /// The driver's `/proc` (the config's `proc_root`).
    pub proc_root: PathBuf,
    /// This kernel's own `/proc`, which the container's will show.
    pub kernel_proc: PathBuf,
    /// The MPS pipe directory as the host names it.
    pub mps_pipe_dir: PathBuf,
}

impl HostPaths {
    /// The paths `config` and the shim's environment (`CUDA_MPS_PIPE_DIRECTORY`) name.
    pub fn from_config(config: &Config) -> Self {
        Self {
            host_root: config.dev_root.clone(),
            proc_root: config.proc_root.clone(),
            kernel_proc: PathBuf::from("/proc"),
            mps_pipe_dir: mps_pipe_dir(),
        }
    }
}

/// What the image holds that the plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageFacts {
    /// Its CUDA forward-compat `libcuda`, when it has exactly one.
    pub compat: Option<CompatLibcuda>,
    /// Every library in its compat directory, as (SONAME, path in the container).
    pub compat_libs: Vec<(String, PathBuf)>,
    /// Files of the image not read, and why (a FIFO, a device, a file over the size limit).
    pub skipped: Vec<(PathBuf, String)>,
}

impl ImageFacts {
    /// Reads the image's compat directory through the confined `rootfs`.
    pub fn gather(rootfs: &Rootfs) -> Self {
        let mut skipped = Vec::new();
        let Some(lib) = compat::find_noting(rootfs, &mut skipped) else {
            return Self {
                skipped,
                ..Self::default()
            };
        };
        let dir = Path::new(COMPAT_DIR);
        let mut compat_libs = Vec::new();
        for e in rootfs.list_dir(dir) {
            if !e.is_file || !e.name.starts_with("lib") || !e.name.contains(".so") {
                continue;
            }
            let path = dir.join(&e.name);
            // libcuda was read when its note was; the others are read for their SONAME.
            let soname = if path == lib.path {
                lib.soname.clone()
            } else {
                match rootfs.open_file(&path, MAX_LIBRARY_SIZE) {
                    Ok(f) => read_info(&f).ok().and_then(|i| i.soname),
                    Err(e) => {
                        skipped.push((path.clone(), e.to_string()));
                        None
                    }
                }
            };
            if let Some(soname) = soname {
                compat_libs.push((soname, path));
            }
        }
        Self {
            compat: Some(lib),
            compat_libs,
            skipped,
        }
    }
}

/// Everything the plan knows of the host and the image besides the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostSnapshot {
    /// IPC endpoints present on the host.
    pub ipc: Vec<IpcEndpoint>,
    /// Devices of the gated features the request enables.
    pub gated: GatedDevices,
    /// The driver's `/proc` tree.
    pub proc: ProcFacts,
    /// Host nodes of the resolved CDI devices that their edits leave incomplete.
    pub cdi_nodes: NodeFactsByPath,
    /// SONAMEs of the `*.so*` files the spec and the CDI devices mount, by host path.
    pub mounted_sonames: BTreeMap<PathBuf, String>,
    /// Mount sources named like libraries that were not read, and why (a FIFO, a device, a
    /// directory, a file over the size limit): they get no SONAME link or ld cache entry.
    pub skipped_sources: Vec<(PathBuf, String)>,
    /// The image's compat libraries.
    pub image: ImageFacts,
    /// The architecture whose ld cache flags apply.
    pub arch: Arch,
}

impl HostSnapshot {
    /// Reads what a plan for `request` (split as `split`) needs; `rootfs` is the container's
    /// rootfs, opened confined.
    pub fn gather(
        paths: &HostPaths,
        spec: &Spec,
        request: &GpuRequest,
        split: &Split,
        inventory: Option<&Inventory>,
        registry: Option<&Registry>,
        rootfs: Option<&Rootfs>,
    ) -> Self {
        let resolved = registry
            .filter(|_| !split.cdi_names.is_empty())
            .and_then(|r| r.resolve(&split.cdi_names).ok())
            .unwrap_or_default();
        let from_inventory = split.from_inventory.is_some();
        let mut sources: Vec<(&Path, &Path)> = spec
            .mounts()
            .iter()
            .flatten()
            .filter_map(|m| Some((m.source().as_deref()?, m.destination().as_path())))
            .collect();
        for r in &resolved {
            for e in [&r.spec.container_edits, &r.device.container_edits] {
                sources.extend(
                    e.mounts
                        .iter()
                        .map(|m| (Path::new(&m.host_path), Path::new(&m.container_path))),
                );
            }
        }
        let mut mounted_sonames = BTreeMap::new();
        let mut skipped_sources = Vec::new();
        for (source, destination) in sources {
            let is_library = destination
                .file_name()
                .is_some_and(|n| n.to_string_lossy().contains(".so"));
            if !is_library
                || mounted_sonames.contains_key(source)
                || skipped_sources.iter().any(|(s, _)| s == source)
            {
                continue;
            }
            // A tenant's volume may put a FIFO or a device there: it is never opened (a final
            // symlink is followed, as the kernel's bind mount follows it).
            match untrusted::open(source, FinalLink::Follow, MAX_LIBRARY_SIZE) {
                Ok(f) => {
                    if let Some(soname) = read_info(&f).ok().and_then(|i| i.soname) {
                        mounted_sonames.insert(source.to_owned(), soname);
                    }
                }
                Err(e) if e.is_missing() => {}
                Err(e) => skipped_sources.push((source.to_owned(), e.to_string())),
            }
        }
        Self {
            ipc: if from_inventory {
                present_endpoints(&paths.host_root, &paths.mps_pipe_dir)
            } else {
                Vec::new()
            },
            gated: if from_inventory {
                gather_gated(&paths.host_root, &request.gated)
            } else {
                GatedDevices::new()
            },
            proc: inventory
                .filter(|_| from_inventory)
                .map(|inv| ProcFacts::gather(&paths.proc_root, &paths.kernel_proc, inv))
                .unwrap_or_default(),
            cdi_nodes: gather_node_facts(&resolved),
            mounted_sonames,
            skipped_sources,
            image: rootfs.map(ImageFacts::gather).unwrap_or_default(),
            arch: inventory
                .map(|i| i.arch)
                .or_else(Arch::host)
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestPolicy;
    use oci_spec::runtime::{MountBuilder, ProcessBuilder, SpecBuilder};
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn library_named_mount_sources_that_are_not_files_are_skipped_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libfoo.so");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let lib = dir.path().join("libreal.so.1");
        std::fs::copy(
            crate::discover::fixture::shared_object("libreal.so.1"),
            &lib,
        )
        .unwrap();
        let mount = |src: &Path, dst: &str| {
            MountBuilder::default()
                .source(src)
                .destination(dst)
                .typ("bind")
                .build()
                .unwrap()
        };
        let spec = SpecBuilder::default()
            .process(
                ProcessBuilder::default()
                    .env(vec!["NVIDIA_VISIBLE_DEVICES=0".to_owned()])
                    .build()
                    .unwrap(),
            )
            .mounts(vec![
                mount(&fifo, "/opt/libfoo.so"),
                mount(Path::new("/dev/zero"), "/opt/libzero.so.1"),
                mount(&lib, "/opt/libreal.so.1"),
                mount(&dir.path().join("missing.so"), "/opt/missing.so"),
            ])
            .build()
            .unwrap();
        let request = GpuRequest::from_spec(&spec, &RequestPolicy::default()).unwrap();
        let split = super::super::split(&request.devices, None, true);
        let paths = HostPaths {
            host_root: dir.path().to_owned(),
            proc_root: dir.path().join("proc"),
            kernel_proc: dir.path().join("proc"),
            mps_pipe_dir: dir.path().join("mps"),
        };
        // No writer ever opens the FIFO: a blocking open would not return.
        let host = HostSnapshot::gather(&paths, &spec, &request, &split, None, None, None);
        assert_eq!(
            host.mounted_sonames.get(&lib).map(String::as_str),
            Some("libreal.so.1")
        );
        assert_eq!(
            host.skipped_sources,
            [
                (fifo, "is a FIFO, not a regular file".to_owned()),
                (
                    PathBuf::from("/dev/zero"),
                    "is a device, not a regular file".to_owned()
                ),
            ]
        );
    }
}
