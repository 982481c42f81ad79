//! The NVML-free view of the driver: `/proc/driver/nvidia/{version,gpus/*/information}` and
//! `/proc/devices`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{DiscoverError, GpuDevice};

fn read(path: &Path) -> Result<String, DiscoverError> {
    std::fs::read_to_string(path).map_err(|source| DiscoverError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The kernel module version from `driver/nvidia/version`
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu ...`).
pub fn driver_version(proc_root: &Path) -> Result<String, DiscoverError> {
    let path = proc_root.join("driver/nvidia/version");
    let text = read(&path)?;
    text.lines()
        .find(|l| l.starts_with("NVRM version:"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        })
        .map(str::to_owned)
        .ok_or_else(|| DiscoverError::Parse {
            path,
            reason: "no NVRM version line".into(),
        })
}

fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':'))
        .map(str::trim)
}

/// Every GPU under `driver/nvidia/gpus`, indexed in PCI bus order (NVML's default order).
pub fn gpus(proc_root: &Path) -> Result<Vec<GpuDevice>, DiscoverError> {
    let dir = proc_root.join("driver/nvidia/gpus");
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DiscoverError::Read { path: dir, source }),
    };
    let mut by_bus = BTreeMap::new();
    for entry in entries.flatten() {
        let path = entry.path().join("information");
        let info = read(&path)?;
        let parse_err = |reason: &str| DiscoverError::Parse {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let bus_id = field(&info, "Bus Location")
            .unwrap_or(&entry.file_name().to_string_lossy())
            .to_ascii_lowercase();
        if field(&info, "GPU Excluded").is_some_and(|v| v.eq_ignore_ascii_case("yes")) {
            continue;
        }
        let minor = field(&info, "Device Minor")
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| parse_err("no Device Minor"))?;
        let uuid = field(&info, "GPU UUID")
            .filter(|u| u.starts_with("GPU-"))
            .ok_or_else(|| parse_err("no GPU UUID"))?
            .to_owned();
        let model = field(&info, "Model").unwrap_or("unknown").to_owned();
        by_bus.insert(
            normalize_bus(&bus_id),
            GpuDevice {
                index: 0,
                uuid,
                minor,
                bus_id: normalize_bus(&bus_id),
                proc_dir: entry.file_name().to_string_lossy().into_owned(),
                model,
                arch: None,
                brand: None,
            },
        );
    }
    Ok(by_bus
        .into_values()
        .enumerate()
        .map(|(i, mut g)| {
            g.index = u32::try_from(i).unwrap_or(u32::MAX);
            g
        })
        .collect())
}

/// `0000:00:06.0` as `00000000:00:06.0` (the toolkit's 8-digit domain form).
fn normalize_bus(bus: &str) -> String {
    match bus.split_once(':') {
        Some((domain, rest)) if domain.len() < 8 => format!("{:0>8}:{rest}", domain),
        _ => bus.to_owned(),
    }
}

/// Character device majors by name from `devices` (`195 nvidia`, `238 nvidia-uvm`, ...).
pub fn char_majors(proc_root: &Path) -> Result<BTreeMap<String, u32>, DiscoverError> {
    let text = read(&proc_root.join("devices"))?;
    let mut majors = BTreeMap::new();
    for line in text
        .lines()
        .skip_while(|l| !l.starts_with("Character devices:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("Block devices:"))
    {
        let mut parts = line.split_whitespace();
        if let (Some(major), Some(name)) = (parts.next(), parts.next()) {
            if let Ok(major) = major.parse() {
                majors.entry(name.to_owned()).or_insert(major);
            }
        }
    }
    Ok(majors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixture::FakeDriver;

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
