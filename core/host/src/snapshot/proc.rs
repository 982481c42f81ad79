//! What the host's `/proc/driver/nvidia` holds, as far as core's `/proc` overlay needs it
//! ([`ProcFacts`]).

use std::path::Path;

use nvidia_shim_core::inventory::Inventory;
use nvidia_shim_core::proc_overlay::ProcFacts;

use crate::discover::mig_layout;

/// Reads the facts of the driver tree under `proc_root` for the GPUs of `inventory`;
/// `kernel_proc` is the kernel's own `/proc`, which the container's will be.
pub fn proc_facts(proc_root: &Path, kernel_proc: &Path, inventory: &Inventory) -> ProcFacts {
    let mut gpu_caps = mig_layout(proc_root);
    gpu_caps.retain(|minor, _| inventory.gpus.iter().any(|g| g.minor == *minor));
    let mig = proc_root.join("driver/nvidia/capabilities/mig");
    ProcFacts {
        present: kernel_proc.join("driver/nvidia").exists(),
        params: std::fs::read_to_string(proc_root.join("driver/nvidia/params")).ok(),
        gpu_caps,
        mig_files: ["config", "monitor"]
            .into_iter()
            .filter(|f| mig.join(f).is_file())
            .map(str::to_owned)
            .collect(),
    }
}
