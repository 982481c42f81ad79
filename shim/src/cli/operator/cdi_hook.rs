//! `containerd-shim-nvidia-v2 hook SUBCOMMAND` (also run as `nvidia-cdi-hook SUBCOMMAND`): an
//! OCI hook doing the NVIDIA Container Toolkit's CDI hook steps, for runtimes that run the
//! hooks of a CDI spec (runc under Docker or containerd's CDI, crun under podman). This runtime
//! does the same steps natively in its own Create and never runs the hook.
//!
//! The forms are `nvidia-cdi-hook`'s: `create-symlinks --link TARGET::LINK`, `update-ldcache
//! --folder DIR`, `enable-cuda-compat --host-driver-version V`,
//! `disable-device-node-modification`, `chmod --mode M --path P`. The container's state comes
//! on stdin (its `bundle`); the rootfs is the one the bundle's `config.json` names. Every write
//! goes through the confined rootfs writer Create uses (never outside the rootfs, never through
//! a symlink the image planted), and nothing is taken from the container's environment or run
//! from its image: what an image sets (`LD_PRELOAD`, a library directory that is a symlink)
//! cannot steer it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nvidia_shim_core::cdi::{toolkit_step, HookPlan};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::proc_overlay::params_without_device_modification;
use nvidia_shim_core_host::root::Root;
use nvidia_shim_core_host::snapshot::rootfs_plan_in_place;
use nvidia_shim_core_host::untrusted::{self, FinalLink};

/// The name the toolkit's CDI specs call it by.
pub const NAME: &str = super::configure::docker_host::CDI_HOOK;

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 hook SUBCOMMAND [FLAGS] (also run as nvidia-cdi-hook SUBCOMMAND)

An OCI hook (the container's state on stdin) doing what CDI specs ask of nvidia-cdi-hook, inside
the container's rootfs only:
  create-symlinks --link TARGET::LINK ...     symlinks in the container
  update-ldcache --folder DIR ...             the driver libraries there into its ld cache
  enable-cuda-compat --host-driver-version V  the image's CUDA forward-compat libraries first,
                                              when newer than the host driver
  disable-device-node-modification           /proc/driver/nvidia/params with ModifyDeviceFiles: 0
  chmod --mode M --path P ...                 permission bits of paths in the container";

/// The most the container state on stdin may take.
const MAX_STATE: u64 = 1 << 20;
/// The most a bundle's `config.json` may take.
const MAX_SPEC: u64 = 64 << 20;

/// What the runtime says of the container (OCI `state`), as far as the hook needs it.
#[derive(Debug, serde::Deserialize)]
struct State {
    #[serde(default)]
    id: String,
    bundle: PathBuf,
}

/// Runs the hook with `args` (the subcommand and its flags) and the state on stdin.
pub fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut plan = HookPlan::default();
    let mut hook_args = vec![NAME.to_owned()];
    hook_args.extend_from_slice(args);
    if !toolkit_step(NAME, &hook_args, &mut plan) {
        return Err(format!(
            "{}: not a hook this binary knows, or its flags are incomplete (--help lists them)",
            nvidia_shim_core::quote::quoted(&args.join(" "))
        ));
    }
    let mut state = Vec::new();
    std::io::stdin()
        .take(MAX_STATE + 1)
        .read_to_end(&mut state)
        .map_err(|e| format!("cannot read the container state on stdin: {e}"))?;
    if state.len() as u64 > MAX_STATE {
        return Err(format!(
            "the container state on stdin is over {MAX_STATE} bytes"
        ));
    }
    let state: State = serde_json::from_slice(&state)
        .map_err(|e| format!("the container state on stdin is not OCI state JSON: {e}"))?;
    let config = state.bundle.join("config.json");
    let spec: Spec = untrusted::read(&config, FinalLink::Follow, MAX_SPEC)
        .map_err(|e| format!("{}: {e}", config.display()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", config.display()))
        })?;
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
    let root = state.bundle.join(root);
    let rootfs = Root::open(&root).map_err(|e| e.to_string())?;
    let id = if state.id.is_empty() {
        "(unnamed)".to_owned()
    } else {
        state.id.clone()
    };
    let shim_config = super::load_config(None)?;
    let rootfs_plan = rootfs_plan_in_place(&plan, &rootfs, shim_config.cuda_compat);
    crate::gpu::apply_rootfs_plan(&id, &rootfs, &rootfs_plan).map_err(|e| e.to_string())?;
    for (path, mode) in &plan.chmods {
        rootfs.chmod(path, *mode).map_err(|e| e.to_string())?;
    }
    if plan.disable_device_node_modification {
        hide_device_modification(&state.bundle, &rootfs)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Mounts, over the container's `/proc/driver/nvidia/params`, a copy of the host's with
/// `ModifyDeviceFiles: 0`, so that the driver's library in the container does not create or
/// change device nodes; nothing when the host has no such file (no driver loaded) or it says
/// so already. The copy lives in the bundle, removed with the container; the mount holds it.
fn hide_device_modification(bundle: &Path, rootfs: &Root) -> Result<(), String> {
    let host = Path::new("/proc/driver/nvidia/params");
    let Ok(params) = std::fs::read_to_string(host) else {
        return Ok(());
    };
    let Some(changed) = params_without_device_modification(&params) else {
        return Ok(());
    };
    let source = bundle.join(".nvidia-cdi-hook-params");
    std::fs::write(&source, changed).map_err(|e| format!("{}: {e}", source.display()))?;
    let target = rootfs
        .open_path(host)
        .map_err(|e| format!("the container's {}: {e}", host.display()))?;
    crate::runtime::after_create::bind_read_only(&source, &target)
        .map_err(|e| format!("mount over the container's {}: {e}", host.display()))
}
