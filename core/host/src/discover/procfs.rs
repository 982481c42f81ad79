//! Reads the driver's `/proc` files under a proc root for core's parsers
//! ([`nvidia_shim_core::inventory::procfs`]).

use std::collections::BTreeMap;
use std::path::Path;

use nvidia_shim_core::inventory::procfs::{self as parse, DEVICES_FILE, GPUS_DIR, VERSION_FILE};
use nvidia_shim_core::inventory::{DiscoverError, GpuDevice};

fn read(path: &Path) -> Result<String, DiscoverError> {
    std::fs::read_to_string(path).map_err(|source| DiscoverError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The kernel module version from `driver/nvidia/version`.
pub fn driver_version(proc_root: &Path) -> Result<String, DiscoverError> {
    let path = proc_root.join(VERSION_FILE);
    parse::driver_version(&read(&path)?, &path)
}

/// Every GPU under `driver/nvidia/gpus`, indexed in PCI bus order (NVML's default order).
pub fn gpus(proc_root: &Path) -> Result<Vec<GpuDevice>, DiscoverError> {
    let dir = proc_root.join(GPUS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DiscoverError::Read { path: dir, source }),
    };
    let mut gpus = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path().join("information");
        let name = entry.file_name().to_string_lossy().into_owned();
        gpus.extend(parse::gpu(&name, &read(&path)?, &path)?);
    }
    Ok(parse::in_bus_order(gpus))
}

/// Character device majors by name from `devices`.
pub fn char_majors(proc_root: &Path) -> Result<BTreeMap<String, u32>, DiscoverError> {
    Ok(parse::char_majors(&read(&proc_root.join(DEVICES_FILE))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::FakeDriver;

    #[test]
    fn parses_version_gpus_and_majors() {
        let fake = FakeDriver::builder().gpus(3).build();
        assert_eq!(driver_version(&fake.proc_root()).unwrap(), "580.159.04");
        let gpus = gpus(&fake.proc_root()).unwrap();
        assert_eq!(gpus.len(), 3);
        assert_eq!(gpus[0].index, 0);
        assert_eq!(gpus[2].minor, 2);
        assert!(gpus[1].uuid.starts_with("GPU-"));
        assert_eq!(gpus[1].bus_id, "00000000:00:07.0");
        let majors = char_majors(&fake.proc_root()).unwrap();
        assert_eq!(majors.get("nvidia"), Some(&195));
        assert_eq!(majors.get("nvidia-uvm"), Some(&238));
    }

    #[test]
    fn missing_proc_tree_is_an_error_naming_the_file() {
        let err = driver_version(Path::new("/nonexistent-proc")).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-proc/driver/nvidia/version"),
            "{err}"
        );
    }

    #[test]
    fn index_follows_bus_order_not_directory_order() {
        let fake = FakeDriver::builder().gpus(2).reverse_minors().build();
        let gpus = gpus(&fake.proc_root()).unwrap();
        assert_eq!((gpus[0].index, gpus[0].minor), (0, 1));
        assert_eq!((gpus[1].index, gpus[1].minor), (1, 0));
    }
}
