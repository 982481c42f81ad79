//! What only NVML knows, added to an NVML-free [`Inventory`]: each GPU's compute capability
//! (`arch=` requirements) and brand (`brand=`), the CUDA version the driver supports, and the
//! `MIG-` UUIDs and NVML indices of MIG devices. NVML (`nvml-wrapper`) is loaded from the
//! driver's own `libnvidia-ml.so.1` in the discovered driver root, so `/usr/local/nvidia` style
//! installs work without `LD_LIBRARY_PATH`; it runs once per discovery, never on a create that
//! a cached inventory serves.

use std::path::{Path, PathBuf};

use nvml_wrapper::Nvml;

use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::require::{Version, NVML_BRANDS};

/// Why NVML could not be used (the inventory is then kept as the `/proc` path read it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvmlUnavailable {
    /// The driver root has no `libnvidia-ml.so.1`.
    #[error("no libnvidia-ml.so.1 among the driver's libraries")]
    NoLibrary,
    /// The library is not NVML (no `nvmlInit_v2`), as in test fixtures.
    #[error("{0} does not export nvmlInit_v2")]
    NotNvml(PathBuf),
    /// Loading or initializing NVML failed.
    #[error("NVML from {lib}: {reason}")]
    Init {
        /// The library.
        lib: PathBuf,
        /// NVML's error.
        reason: String,
    },
}

/// Whether the ELF at `lib` exports `nvmlInit_v2` (nvml-wrapper panics when a symbol it calls
/// is missing, so a library that is not NVML must never reach it).
fn exports_nvml_init(lib: &Path) -> bool {
    let Ok(bytes) = crate::untrusted::read(
        lib,
        crate::untrusted::FinalLink::Follow,
        crate::elf::MAX_LIBRARY_SIZE,
    ) else {
        return false;
    };
    let Ok(elf) = goblin::elf::Elf::parse(&bytes) else {
        return false;
    };
    elf.dynsyms
        .iter()
        .any(|s| !s.is_import() && elf.dynstrtab.get_at(s.st_name) == Some("nvmlInit_v2"))
}

/// `major*1000 + minor*10` as NVML reports the CUDA driver version, as `major.minor`.
pub fn cuda_version_text(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Adds NVML's facts to `inv`. On error `inv` is unchanged.
pub fn enrich(inv: &mut Inventory) -> Result<(), NvmlUnavailable> {
    let lib = inv
        .libraries
        .iter()
        .find(|l| l.soname.as_deref() == Some("libnvidia-ml.so.1"))
        .map(|l| l.path.clone())
        .ok_or(NvmlUnavailable::NoLibrary)?;
    if !exports_nvml_init(&lib) {
        return Err(NvmlUnavailable::NotNvml(lib));
    }
    let init = |lib: &Path| Nvml::builder().lib_path(lib.as_os_str()).init();
    let nvml = init(&lib).map_err(|e| NvmlUnavailable::Init {
        lib: lib.clone(),
        reason: e.to_string(),
    })?;
    if let Ok(v) = nvml.sys_cuda_driver_version() {
        inv.cuda_version = Some(cuda_version_text(v));
    }
    let mut mig_facts = Vec::new();
    for g in &mut inv.gpus {
        let Ok(dev) = nvml.device_by_uuid(g.uuid.as_str()) else {
            continue;
        };
        if let Ok(cc) = dev.cuda_compute_capability() {
            g.arch = Version::parse(&format!("{}.{}", cc.major, cc.minor));
        }
        if let Ok(b) = dev.brand() {
            g.brand = usize::try_from(b.as_c())
                .ok()
                .and_then(|i| NVML_BRANDS.get(i))
                .map(|s| (*s).to_owned());
        }
        if !dev.mig_mode().is_ok_and(|m| m.current == 1) {
            continue;
        }
        for i in 0..dev.mig_device_count().unwrap_or(0) {
            let Ok(m) = dev.mig_device_by_index(i) else {
                continue;
            };
            if let (Ok(uuid), Some((gi, ci))) = (m.uuid(), instance_ids(&nvml, &m)) {
                mig_facts.push((g.index, i, gi, ci, uuid));
            }
        }
    }
    for (parent, index, gi, ci, uuid) in mig_facts {
        if let Some(m) = inv
            .mig
            .iter_mut()
            .find(|m| (m.parent, m.gi, m.ci) == (parent, gi, ci))
        {
            m.index = index;
            m.uuid = Some(uuid);
        }
    }
    Ok(())
}

/// The GPU and compute instance ids of MIG device `m` (not wrapped by nvml-wrapper; called
/// through its raw bindings, each symbol checked first).
fn instance_ids(nvml: &Nvml, m: &nvml_wrapper::Device<'_>) -> Option<(u32, u32)> {
    let lib = nvml.lib();
    if lib.nvmlDeviceGetGpuInstanceId.is_err() || lib.nvmlDeviceGetComputeInstanceId.is_err() {
        return None;
    }
    let (mut gi, mut ci) = (0u32, 0u32);
    // SAFETY: `m` is a live handle of this NVML instance, the symbols exist (checked above)
    // and the out-pointers are valid for the calls.
    let ok = unsafe {
        let h = m.handle();
        lib.nvmlDeviceGetGpuInstanceId(h, &mut gi) == 0
            && lib.nvmlDeviceGetComputeInstanceId(h, &mut ci) == 0
    };
    ok.then_some((gi, ci))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_is_not_nvml_is_refused_before_loading_and_changes_nothing() {
        if !crate::fixture::root_or_skip("a_library_that_is_not_nvml_is_refused") {
            return;
        }
        let fake = crate::fixture::FakeDriver::builder().build();
        let mut inv = crate::discover::inventory(&fake.roots()).unwrap();
        let before = inv.clone();
        let err = enrich(&mut inv).unwrap_err();
        assert!(
            matches!(err, NvmlUnavailable::NotNvml(ref p) if p.ends_with("libnvidia-ml.so.580.159.04")),
            "{err}"
        );
        assert_eq!(inv, before);
        inv.libraries.clear();
        assert_eq!(enrich(&mut inv), Err(NvmlUnavailable::NoLibrary));
    }

    #[test]
    fn cuda_versions_read_as_nvml_encodes_them() {
        assert_eq!(cuda_version_text(12040), "12.4");
        assert_eq!(cuda_version_text(13010), "13.1");
    }
}
