//! The MIG layout the driver lists under `capabilities/gpu<minor>/mig/gi<N>/ci<M>`, read for
//! core's [`MigLayout`] (MIG devices, and what a container's `/proc/driver/nvidia` shows).

use std::path::Path;

use nvidia_shim_core::inventory::MigLayout;

/// `driver/nvidia/capabilities`, relative to the proc root.
pub const CAPABILITIES_DIR: &str = "driver/nvidia/capabilities";

/// Numbered subdirectories `<prefix><N>` of `dir`, by number.
fn numbered(dir: &Path, prefix: &str) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str()?.strip_prefix(prefix)?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out
}

/// The GPU and compute instances under `proc_root`'s `driver/nvidia/capabilities`, for every
/// GPU that has a `gpu<minor>` directory there.
pub fn mig_layout(proc_root: &Path) -> MigLayout {
    let caps = proc_root.join(CAPABILITIES_DIR);
    numbered(&caps, "gpu")
        .into_iter()
        .map(|minor| {
            let mig = caps.join(format!("gpu{minor}/mig"));
            let gis = numbered(&mig, "gi")
                .into_iter()
                .map(|gi| (gi, numbered(&mig.join(format!("gi{gi}")), "ci")))
                .collect();
            (minor, gis)
        })
        .collect()
}
