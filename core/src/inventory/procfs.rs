//! The NVML-free view of the driver, parsed from the texts the kernel module writes:
//! `/proc/driver/nvidia/version`, `/proc/driver/nvidia/gpus/*/information` and `/proc/devices`
//! (the host reads them; `path` only names the file in errors).

use std::collections::BTreeMap;
use std::path::Path;

use super::{DiscoverError, GpuDevice};

/// `driver/nvidia/version`, relative to the proc root.
pub const VERSION_FILE: &str = "driver/nvidia/version";
/// `driver/nvidia/gpus`, relative to the proc root: one directory per GPU.
pub const GPUS_DIR: &str = "driver/nvidia/gpus";
/// `devices`, relative to the proc root.
pub const DEVICES_FILE: &str = "devices";

/// The kernel module version in the text of `driver/nvidia/version` (at `path`)
/// (`NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu ...`).
pub fn driver_version(text: &str, path: &Path) -> Result<String, DiscoverError> {
    text.lines()
        .find(|l| l.starts_with("NVRM version:"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
        })
        .map(str::to_owned)
        .ok_or_else(|| DiscoverError::Parse {
            path: path.to_owned(),
            reason: "no NVRM version line".into(),
        })
}

fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix(':'))
        .map(str::trim)
}

/// The GPU whose `gpus/<dir>/information` (at `path`) says `info`; `None` when the driver
/// lists it as excluded. Its index is set by [`in_bus_order`].
pub fn gpu(dir: &str, info: &str, path: &Path) -> Result<Option<GpuDevice>, DiscoverError> {
    let parse_err = |reason: &str| DiscoverError::Parse {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let bus_id = normalize_bus(
        &field(info, "Bus Location")
            .unwrap_or(dir)
            .to_ascii_lowercase(),
    );
    if field(info, "GPU Excluded").is_some_and(|v| v.eq_ignore_ascii_case("yes")) {
        return Ok(None);
    }
    let minor = field(info, "Device Minor")
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| parse_err("no Device Minor"))?;
    let uuid = field(info, "GPU UUID")
        .filter(|u| u.starts_with("GPU-"))
        .ok_or_else(|| parse_err("no GPU UUID"))?
        .to_owned();
    Ok(Some(GpuDevice {
        index: 0,
        uuid,
        minor,
        bus_id,
        proc_dir: dir.to_owned(),
        model: field(info, "Model").unwrap_or("unknown").to_owned(),
        arch: None,
        brand: None,
    }))
}

/// `gpus` indexed in PCI bus order (NVML's default order), one per bus id.
pub fn in_bus_order(gpus: impl IntoIterator<Item = GpuDevice>) -> Vec<GpuDevice> {
    let by_bus: BTreeMap<String, GpuDevice> =
        gpus.into_iter().map(|g| (g.bus_id.clone(), g)).collect();
    by_bus
        .into_values()
        .enumerate()
        .map(|(i, mut g)| {
            g.index = u32::try_from(i).unwrap_or(u32::MAX);
            g
        })
        .collect()
}

/// `0000:00:06.0` as `00000000:00:06.0` (the toolkit's 8-digit domain form).
fn normalize_bus(bus: &str) -> String {
    match bus.split_once(':') {
        Some((domain, rest)) if domain.len() < 8 => format!("{:0>8}:{rest}", domain),
        _ => bus.to_owned(),
    }
}

/// Character device majors by name from the text of `devices` (`195 nvidia`,
/// `238 nvidia-uvm`, ...).
pub fn char_majors(text: &str) -> BTreeMap<String, u32> {
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
    majors
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "Model: \t\t NVIDIA A100-SXM4-80GB\nIRQ:   \t\t 42\nGPU UUID: \t\t GPU-11111111-2222-3333-4444-555555555555\nDevice Minor: \t\t 3\nBus Location: \t\t 0000:00:07.0\nGPU Excluded: \t\t No\n";

    #[test]
    fn parses_the_texts_the_driver_writes() {
        let version = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  Thu Jan 1\nGCC version:  gcc version 12.2.0\n";
        let path = Path::new("/proc/driver/nvidia/version");
        assert_eq!(driver_version(version, path).unwrap(), "580.159.04");
        let err = driver_version("garbage", path).unwrap_err().to_string();
        assert!(err.contains("/proc/driver/nvidia/version"), "{err}");
        let g = gpu("0000:00:07.0", INFO, Path::new("info"))
            .unwrap()
            .unwrap();
        assert_eq!(g.minor, 3);
        assert_eq!(g.bus_id, "00000000:00:07.0");
        assert!(g.uuid.starts_with("GPU-"));
        assert_eq!(g.model, "NVIDIA A100-SXM4-80GB");
        let excluded = INFO.replace("Excluded: \t\t No", "Excluded: \t\t Yes");
        assert_eq!(gpu("x", &excluded, Path::new("info")).unwrap(), None);
        let err = gpu("x", "Model: x\n", Path::new("info")).unwrap_err();
        assert!(err.to_string().contains("no Device Minor"), "{err}");
        let majors = char_majors(
            "Character devices:\n  1 mem\n195 nvidia\n238 nvidia-uvm\n\nBlock devices:\n  8 sd\n",
        );
        assert_eq!(majors.get("nvidia"), Some(&195));
        assert_eq!(majors.get("nvidia-uvm"), Some(&238));
        assert_eq!(majors.get("sd"), None);
    }

    #[test]
    fn index_follows_bus_order_not_listing_order() {
        let at = |bus: &str, minor: u32| {
            let info = INFO
                .replace("0000:00:07.0", bus)
                .replace("Minor: \t\t 3", &format!("Minor: \t\t {minor}"));
            gpu(bus, &info, Path::new("info")).unwrap().unwrap()
        };
        let gpus = in_bus_order([at("0000:00:07.0", 0), at("0000:00:06.0", 1)]);
        assert_eq!((gpus[0].index, gpus[0].minor), (0, 1));
        assert_eq!((gpus[1].index, gpus[1].minor), (1, 0));
    }
}
