//! What GPU access a container asks for, read from its OCI spec with the NVIDIA Container
//! Toolkit's sources, precedence and privilege rules: `cdi.k8s.io/*` style annotations, then
//! (opt-in) `/dev/null` volume mounts under `/var/run/nvidia-container-devices`, then
//! `NVIDIA_VISIBLE_DEVICES`, which unprivileged containers may use only when the policy allows.

mod capabilities;
pub mod cli_hook;
mod devices;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{Capability as OciCapability, Spec};

pub use capabilities::{Capabilities, Capability, UnknownCapability};
pub use devices::{DeviceId, DeviceSelection, InvalidDeviceId};

/// Where device-plugin volume-mount requests live in the container.
pub const VOLUME_MOUNT_ROOT: &str = "/var/run/nvidia-container-devices";

/// How requests are read: the toolkit's config switches, with its defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPolicy {
    /// Annotation key prefixes whose values list CDI devices (default `cdi.k8s.io/`).
    pub annotation_prefixes: Vec<String>,
    /// Honour `/dev/null` mounts under [`VOLUME_MOUNT_ROOT`] (default off).
    pub accept_volume_mounts: bool,
    /// Honour `NVIDIA_VISIBLE_DEVICES` in containers without CAP_SYS_ADMIN (default on).
    pub accept_envvar_when_unprivileged: bool,
    /// Capabilities when `NVIDIA_DRIVER_CAPABILITIES` is unset (default `utility,compute`).
    pub default_capabilities: Capabilities,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            annotation_prefixes: vec!["cdi.k8s.io/".to_owned()],
            accept_volume_mounts: false,
            accept_envvar_when_unprivileged: true,
            default_capabilities: Capabilities::default_set(),
        }
    }
}

/// Which source the devices came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSource {
    /// CDI annotations.
    Annotations,
    /// `/dev/null` volume mounts.
    VolumeMounts,
    /// `NVIDIA_VISIBLE_DEVICES`.
    Env,
    /// No source asked for anything.
    Nothing,
}

/// A container's GPU request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuRequest {
    /// The devices.
    pub devices: DeviceSelection,
    /// Where they came from.
    pub source: RequestSource,
    /// Driver capabilities.
    pub capabilities: Capabilities,
    /// `NVIDIA_REQUIRE_*` predicates by variable name (plus `cuda>=X.Y` for legacy images).
    pub requirements: BTreeMap<String, String>,
    /// `NVIDIA_DISABLE_REQUIRE` is true.
    pub disable_require: bool,
    /// CAP_SYS_ADMIN is in the bounding set.
    pub privileged: bool,
    /// Request variables that were set but ignored because the container is unprivileged and
    /// the policy does not accept env requests from unprivileged containers
    /// (`accept_envvar_when_unprivileged = false`), in the order [`ENV_REQUESTS`] lists them.
    pub env_ignored: Vec<&'static str>,
    /// IMEX channels (`NVIDIA_IMEX_CHANNELS` or `imex/<id>` volume mounts; `all` is ignored).
    pub imex_channels: Vec<u32>,
    /// Gated features set to `enabled` (`NVIDIA_GDS`, `NVIDIA_MOFED`, ...).
    pub gated: Vec<GatedFeature>,
    /// GPUs whose MIG configuration the container may change (`NVIDIA_MIG_CONFIG_DEVICES`,
    /// privileged containers only); `Void` when unset.
    pub mig_config: DeviceSelection,
    /// GPUs whose MIG devices the container may monitor (`NVIDIA_MIG_MONITOR_DEVICES`,
    /// privileged containers only); `Void` when unset.
    pub mig_monitor: DeviceSelection,
}

/// Every variable through which a container's environment asks for host devices or access:
/// under `accept_envvar_when_unprivileged = false` an unprivileged container's are all ignored,
/// as `NVIDIA_VISIBLE_DEVICES` is. (`NVIDIA_DRIVER_CAPABILITIES` and `NVIDIA_REQUIRE_*` are not
/// requests: they choose what a granted request brings, or refuse it, and are always read.)
pub const ENV_REQUESTS: [&str; 9] = [
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VERSION",
    "NVIDIA_IMEX_CHANNELS",
    "NVIDIA_MIG_CONFIG_DEVICES",
    "NVIDIA_MIG_MONITOR_DEVICES",
    "NVIDIA_GDS",
    "NVIDIA_MOFED",
    "NVIDIA_NVSWITCH",
    "NVIDIA_GDRCOPY",
];

/// The highest IMEX channel number the driver allows.
pub const MAX_IMEX_CHANNEL: u32 = (1 << 20) - 1;

/// Host device families a container may ask for next to its GPUs, each by an
/// `NVIDIA_<NAME>=enabled` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GatedFeature {
    /// GPUDirect Storage (`NVIDIA_GDS`): `/dev/nvidia-fs*`, `/run/udev`, `/etc/cufile.json`.
    Gds,
    /// Mellanox OFED (`NVIDIA_MOFED`): `/dev/infiniband/uverbs*`, `/dev/infiniband/rdma_cm`.
    Mofed,
    /// NVSwitch (`NVIDIA_NVSWITCH`): `/dev/nvidia-nvswitchctl`, `/dev/nvidia-nvswitch*`.
    NvSwitch,
    /// GDRCopy (`NVIDIA_GDRCOPY`): `/dev/gdrdrv`.
    GdrCopy,
}

impl GatedFeature {
    /// Every feature with the variable that turns it on.
    pub const ALL: [(Self, &'static str); 4] = [
        (Self::Gds, "NVIDIA_GDS"),
        (Self::Mofed, "NVIDIA_MOFED"),
        (Self::NvSwitch, "NVIDIA_NVSWITCH"),
        (Self::GdrCopy, "NVIDIA_GDRCOPY"),
    ];
}

/// Parses one IMEX channel id: `N` or `channelN`, at most [`MAX_IMEX_CHANNEL`].
fn imex_channel(value: &str) -> Result<u32, RequestError> {
    let digits = value.strip_prefix("channel").unwrap_or(value);
    digits
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= MAX_IMEX_CHANNEL && !digits.starts_with('+'))
        .ok_or_else(|| RequestError::ImexChannel {
            value: value.to_owned(),
        })
}

/// IMEX channels from a comma-separated list; `all` means none (the toolkit ignores it).
fn imex_channels(list: &str) -> Result<Vec<u32>, RequestError> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" {
            return Ok(Vec::new());
        }
        let n = imex_channel(item)?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    Ok(out)
}

/// Why a request could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A device identifier is malformed.
    #[error("{source}")]
    Device {
        /// The parser's error, naming the identifier.
        #[from]
        source: InvalidDeviceId,
    },
    /// A capability is unknown.
    #[error("{source}")]
    Capability {
        /// The parser's error, naming the capability.
        #[from]
        source: UnknownCapability,
    },
    /// A CDI annotation's value is not a list of fully qualified names.
    #[error(
        "annotation {}: {} is not a fully qualified CDI device name (vendor/class=name)",
        crate::quote::bounded(.key, crate::quote::MAX_QUOTED),
        crate::quote::quoted(.value)
    )]
    Annotation {
        /// The annotation key.
        key: String,
        /// The offending name.
        value: String,
    },
    /// An IMEX channel id is not a number up to 2^20-1 (or `channelN`).
    #[error("invalid IMEX channel {} (want N or channelN, N <= 1048575)", crate::quote::quoted(.value))]
    ImexChannel {
        /// The value.
        value: String,
    },
    /// A MIG config/monitor request in an unprivileged container.
    #[error("cannot set {variable} in a non-privileged container (it needs CAP_SYS_ADMIN)")]
    MigUnprivileged {
        /// The variable.
        variable: &'static str,
    },
    /// A legacy image's `CUDA_VERSION` is not a version.
    #[error(
        "CUDA_VERSION {} is not a version (legacy image without NVIDIA_REQUIRE_CUDA)",
        crate::quote::quoted(.value)
    )]
    CudaVersion {
        /// The value.
        value: String,
    },
}

/// The process environment as the toolkit reads it: later entries win.
fn env_map(spec: &Spec) -> BTreeMap<String, String> {
    spec.process()
        .as_ref()
        .and_then(|p| p.env().as_ref())
        .map(|env| {
            env.iter()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn is_privileged(spec: &Spec) -> bool {
    spec.process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&OciCapability::SysAdmin))
}

/// Go's `strconv.ParseBool` true values.
fn go_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

fn from_annotations(spec: &Spec, policy: &RequestPolicy) -> Result<Vec<DeviceId>, RequestError> {
    let Some(annotations) = spec.annotations().as_ref() else {
        return Ok(Vec::new());
    };
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| {
            policy
                .annotation_prefixes
                .iter()
                .any(|p| k.starts_with(p.as_str()))
        })
        .collect();
    keys.sort();
    let mut ids = Vec::new();
    for key in keys {
        for name in annotations[key]
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match DeviceId::parse(name) {
                Ok(id @ DeviceId::Cdi { .. }) => ids.push(id),
                _ => {
                    return Err(RequestError::Annotation {
                        key: key.clone(),
                        value: name.to_owned(),
                    })
                }
            }
        }
    }
    Ok(ids)
}

/// Lexically cleans a path as Go's `filepath.Clean` does for absolute paths.
fn clean(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The request paths of `/dev/null` mounts under [`VOLUME_MOUNT_ROOT`], deduplicated.
fn volume_mount_requests(spec: &Spec) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if m.source().as_deref().map(|s| clean(&s.to_string_lossy()))
            != Some(PathBuf::from("/dev/null"))
        {
            continue;
        }
        let dest = clean(&m.destination().to_string_lossy());
        let Ok(rest) = dest.strip_prefix(VOLUME_MOUNT_ROOT) else {
            continue;
        };
        let rest = rest.to_string_lossy().into_owned();
        if !rest.is_empty() && !out.contains(&rest) {
            out.push(rest);
        }
    }
    out
}

fn from_volume_mounts(spec: &Spec) -> Result<Vec<DeviceId>, RequestError> {
    let mut ids = Vec::new();
    for rest in volume_mount_requests(spec) {
        if rest.starts_with("imex/") {
            continue; // IMEX channels are not GPUs
        }
        let id = match rest.strip_prefix("cdi/") {
            // cdi/<vendor>/<class>/<name> or cdi/<vendor>/<class>=<name>
            Some(cdi) => match cdi.split_once('=') {
                Some(_) => DeviceId::parse(cdi)?,
                None => match cdi.rsplit_once('/') {
                    Some((kind, name)) => DeviceId::parse(&format!("{kind}={name}"))?,
                    None => DeviceId::parse(cdi)?,
                },
            },
            None => DeviceId::parse(&rest)?,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// `cuda>=major.minor` from a legacy image's `CUDA_VERSION` (`12.2.0` gives `cuda>=12.2`).
fn legacy_cuda_requirement(version: &str) -> Result<String, RequestError> {
    let err = || RequestError::CudaVersion {
        value: version.to_owned(),
    };
    let mut parts = version.trim().split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(err)?;
    let minor: u32 = match parts.next() {
        Some(p) => p.parse().map_err(|_| err())?,
        None => 0,
    };
    Ok(format!("cuda>={major}.{minor}"))
}

impl GpuRequest {
    /// Reads the request from `spec` under `policy`.
    pub fn from_spec(spec: &Spec, policy: &RequestPolicy) -> Result<Self, RequestError> {
        let env = env_map(spec);
        let get = |k: &str| env.get(k).map(String::as_str);
        let legacy = get("CUDA_VERSION").is_some_and(|v| !v.is_empty())
            && get("NVIDIA_REQUIRE_CUDA").is_none_or(str::is_empty);
        let privileged = is_privileged(spec);
        // Whether this container's environment may ask for anything (see [`ENV_REQUESTS`]).
        let env_requests = privileged || policy.accept_envvar_when_unprivileged;

        let annotated = from_annotations(spec, policy)?;
        let mounted = if policy.accept_volume_mounts {
            from_volume_mounts(spec)?
        } else {
            Vec::new()
        };
        let (devices, source) = if !annotated.is_empty() {
            (DeviceSelection::List(annotated), RequestSource::Annotations)
        } else if !mounted.is_empty() {
            (DeviceSelection::List(mounted), RequestSource::VolumeMounts)
        } else if env_requests {
            // The volume-mount strategy's sentinel value never names a device.
            let value = get("NVIDIA_VISIBLE_DEVICES").filter(|v| *v != VOLUME_MOUNT_ROOT);
            let sel = DeviceSelection::parse(value, legacy)?;
            let source = if sel.is_void() {
                RequestSource::Nothing
            } else {
                RequestSource::Env
            };
            (sel, source)
        } else {
            (DeviceSelection::Void, RequestSource::Nothing)
        };

        let imex_channels = if policy.accept_volume_mounts
            && volume_mount_requests(spec)
                .iter()
                .any(|r| r.starts_with("imex/"))
        {
            let mut ids = Vec::new();
            for r in volume_mount_requests(spec) {
                if let Some(id) = r.strip_prefix("imex/") {
                    let n = imex_channel(id)?;
                    if !ids.contains(&n) {
                        ids.push(n);
                    }
                }
            }
            ids
        } else if env_requests {
            imex_channels(get("NVIDIA_IMEX_CHANNELS").unwrap_or_default())?
        } else {
            Vec::new()
        };
        let mig = |variable: &'static str| -> Result<DeviceSelection, RequestError> {
            let value = get(variable).filter(|v| !v.trim().is_empty());
            if !env_requests {
                return Ok(DeviceSelection::Void);
            }
            if value.is_some() && !privileged {
                return Err(RequestError::MigUnprivileged { variable });
            }
            Ok(DeviceSelection::parse(value, false)?)
        };
        let mig_config = mig("NVIDIA_MIG_CONFIG_DEVICES")?;
        let mig_monitor = mig("NVIDIA_MIG_MONITOR_DEVICES")?;
        let gated = GatedFeature::ALL
            .iter()
            .filter(|(_, var)| env_requests && get(var) == Some("enabled"))
            .map(|(f, _)| *f)
            .collect();
        let env_ignored = if env_requests {
            Vec::new()
        } else {
            ENV_REQUESTS
                .iter()
                .copied()
                .filter(|var| match *var {
                    "NVIDIA_VISIBLE_DEVICES" => {
                        get(var).is_some_and(|v| !v.trim().is_empty() && v != VOLUME_MOUNT_ROOT)
                    }
                    "CUDA_VERSION" => legacy,
                    gated if GatedFeature::ALL.iter().any(|(_, v)| *v == gated) => {
                        get(var) == Some("enabled")
                    }
                    _ => get(var).is_some_and(|v| !v.trim().is_empty()),
                })
                .collect()
        };
        let capabilities = Capabilities::parse(
            get("NVIDIA_DRIVER_CAPABILITIES"),
            &policy.default_capabilities,
            legacy,
        )?;
        let mut requirements: BTreeMap<String, String> = env
            .iter()
            .filter(|(k, v)| {
                k.starts_with("NVIDIA_REQUIRE_") && *k != "NVIDIA_REQUIRE_JETPACK" && !v.is_empty()
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if legacy {
            let cuda = get("CUDA_VERSION").unwrap_or_default();
            requirements.insert("CUDA_VERSION".to_owned(), legacy_cuda_requirement(cuda)?);
        }
        Ok(Self {
            devices,
            source,
            capabilities,
            requirements,
            disable_require: get("NVIDIA_DISABLE_REQUIRE").is_some_and(go_true),
            privileged,
            env_ignored,
            imex_channels,
            gated,
            mig_config,
            mig_monitor,
        })
    }
}

#[cfg(test)]
mod tests;
