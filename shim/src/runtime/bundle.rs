//! The OCI bundle containerd prepares: its rootfs mounts, its spec's annotations, and where
//! libcontainer keeps this container's state (inside the bundle, so that every containerd
//! instance has its own and containerd's bundle removal takes it away).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount;
use libcontainer::oci_spec::runtime::Spec;
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

use crate::error::{Result, ShimError};

/// Annotations that put containers into one shim process: ours, then CRI's pod sandbox id.
pub const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.nvidia.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// libcontainer's root directory inside a bundle.
pub const STATE_DIR: &str = "libcontainer";

/// What the shim applies itself once libcontainer has created the container.
#[derive(Debug, Clone, Default)]
pub struct Adapted {
    /// Each mount's propagation: (mount point, `mount(2)` flags).
    pub propagation: Vec<(PathBuf, u64)>,
    /// The spec's pids limit, raised by one for creating (see `spec_adapt`).
    pub pids_limit: Option<i64>,
    /// Mount points whose new superblock is made read-only.
    pub read_only_superblocks: Vec<PathBuf>,
    /// The cgroup mount's flags, for it and every hierarchy below it.
    pub cgroup_flags: Option<crate::runtime::spec_adapt::RecursiveMountAttr>,
    /// The process's terminal size (`process.consoleSize`: width, height), applied when its
    /// terminal is attached, as runc applies it.
    pub console_size: Option<(u32, u32)>,
    /// The spec's idmapped mounts, taken out for the shim to make after create.
    pub idmapped: Vec<crate::runtime::idmap::IdmappedBind>,
}

/// A terminal dimension, saturated to what a `winsize` can hold anyway.
fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An OCI bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    path: PathBuf,
}

impl Bundle {
    /// The bundle at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<bundle>/rootfs`, where containerd mounts the rootfs it passes in Create.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// The rootfs `spec` names: its `root.path`, relative to the bundle unless absolute (as
    /// libcontainer resolves it); `<bundle>/rootfs` when the spec has none.
    pub fn rootfs_of(&self, spec: &nvidia_shim_core::oci_spec::runtime::Spec) -> PathBuf {
        spec.root()
            .as_ref()
            .map_or_else(|| self.rootfs(), |r| self.path.join(r.path()))
    }

    /// libcontainer's root for this bundle.
    pub fn state_root(&self) -> PathBuf {
        self.path.join(STATE_DIR)
    }

    /// The spec (`config.json`).
    pub fn load_spec(&self, id: &str) -> Result<Spec> {
        let path = self.path.join("config.json");
        let bytes = std::fs::read(&path)
            .map_err(|e| ShimError::io(id, format!("read {}", path.display()), e))?;
        serde_json::from_slice(&bytes).map_err(|e| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: format!("cannot parse {}: {e}", path.display()),
        })
    }

    /// Replaces `config.json` atomically (libcontainer reads the spec only from the bundle).
    pub fn write_spec(&self, id: &str, spec: &Spec) -> Result<()> {
        let path = self.path.join("config.json");
        let tmp = path.with_extension("json.nvidia-tmp");
        let json = serde_json::to_vec(spec)
            .map_err(|e| ShimError::io(id, "serialize spec", std::io::Error::other(e)))?;
        std::fs::write(&tmp, json)
            .map_err(|e| ShimError::io(id, format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| ShimError::io(id, format!("replace {}", path.display()), e))
    }

    /// Gives libcontainer the spec as it can take it (see `spec_adapt`) and returns what the
    /// shim applies itself after create.
    pub fn adapt_spec(&self, id: &str) -> Result<Adapted> {
        let mut spec = self.load_spec(id)?;
        let rootfs = crate::runtime::spec_adapt::adapt_rootfs_propagation(&mut spec);
        let pids_limit = crate::runtime::spec_adapt::make_room_for_intermediate(&mut spec);
        let idmapped = crate::runtime::spec_adapt::take_idmapped_mounts(&mut spec);
        if rootfs || pids_limit.is_some() || !idmapped.is_empty() {
            self.write_spec(id, &spec)?;
        }
        Ok(Adapted {
            propagation: crate::runtime::spec_adapt::mount_propagation(&spec),
            pids_limit,
            read_only_superblocks: crate::runtime::spec_adapt::read_only_superblocks(&spec),
            cgroup_flags: crate::runtime::spec_adapt::cgroup_mount_flags(&spec),
            console_size: spec
                .process()
                .as_ref()
                .and_then(|p| p.console_size())
                .map(|b| (clamp(b.width()), clamp(b.height()))),
            idmapped,
        })
    }

    /// The spec's annotations (empty when `config.json` has none or cannot be read).
    pub fn annotations(&self) -> HashMap<String, String> {
        #[derive(serde::Deserialize)]
        struct Partial {
            #[serde(default)]
            annotations: HashMap<String, String>,
        }
        std::fs::read(self.path.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Partial>(&b).ok())
            .map(|p| p.annotations)
            .unwrap_or_default()
    }

    /// Whether the spec gives the container a new pid namespace (one without a `path`).
    pub fn has_private_pid_namespace(&self) -> bool {
        #[derive(serde::Deserialize)]
        struct Ns {
            #[serde(rename = "type")]
            typ: String,
            #[serde(default)]
            path: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Linux {
            #[serde(default)]
            namespaces: Vec<Ns>,
        }
        #[derive(serde::Deserialize)]
        struct Partial {
            linux: Option<Linux>,
        }
        std::fs::read(self.path.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Partial>(&b).ok())
            .and_then(|p| p.linux)
            .map(|l| {
                l.namespaces
                    .iter()
                    .any(|n| n.typ == "pid" && n.path.as_deref().unwrap_or("").is_empty())
            })
            .unwrap_or(false)
    }

    /// The id of the shim that serves this container: the first grouping annotation present,
    /// else the container's own id.
    pub fn group(&self, id: &str) -> String {
        group_of(&self.annotations(), id)
    }

    /// Mounts containerd's rootfs mounts onto `<bundle>/rootfs`, undoing them on failure. An
    /// overlay with `uidmap=`/`gidmap=` options (a user-namespace pod's, from containerd 2.x)
    /// is mounted with its lower layers idmapped, through `driver` (see `idmap`).
    pub async fn mount_rootfs(
        &self,
        id: &str,
        mounts: &[Mount],
        driver: &crate::runtime::driver::Driver,
    ) -> Result<()> {
        let target = self.rootfs();
        for m in mounts {
            let mounted = match crate::runtime::idmap::idmapped_overlay(&m.type_, &m.options) {
                Err(reason) => Err(ShimError::InvalidArgument {
                    id: id.to_owned(),
                    reason: format!("rootfs mount {}: {reason}", m.type_),
                }),
                Ok(Some(overlay)) => {
                    let args = crate::runtime::driver::IdmappedRootfs {
                        overlay,
                        target: target.clone(),
                        scratch: self.path.join(".idmapped-lowers"),
                    };
                    driver.mount_idmapped(id, args).await
                }
                Ok(None) => containerd_shim::util::mount_rootfs(m, &target)
                    .await
                    .map_err(|e| {
                        ShimError::io(
                            id,
                            format!("mount {} {} on {}", m.type_, m.source, target.display()),
                            std::io::Error::other(e.to_string()),
                        )
                    }),
            };
            if let Err(e) = mounted {
                let _ = self.unmount_rootfs(id);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Unmounts everything on `<bundle>/rootfs`. Each lazy unmount detaches the top mount
    /// there together with every mount below it, so no mount table needs reading: unmount
    /// until the directory is no mount point (`EINVAL`) or is gone. A symlink in its place is
    /// not followed.
    pub fn unmount_rootfs(&self, id: &str) -> Result<()> {
        let target = self.rootfs();
        loop {
            match umount2(&target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
                Ok(()) => {}
                Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                Err(e) => {
                    return Err(ShimError::io(
                        id,
                        format!("unmount {}", target.display()),
                        e.into(),
                    ))
                }
            }
        }
    }
}

/// The group id for annotations `annotations` of container `id`.
pub fn group_of(annotations: &HashMap<String, String>, id: &str) -> String {
    GROUP_ANNOTATIONS
        .iter()
        .find_map(|k| annotations.get(*k).filter(|v| !v.is_empty()).cloned())
        .unwrap_or_else(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_annotation_in_order() {
        let mut a = HashMap::new();
        assert_eq!(group_of(&a, "c1"), "c1");
        a.insert("io.kubernetes.cri.sandbox-id".into(), "pod1".into());
        assert_eq!(group_of(&a, "c1"), "pod1");
        a.insert("io.containerd.nvidia.v2.group".into(), "g".into());
        assert_eq!(group_of(&a, "c1"), "g");
    }

    #[test]
    fn reads_annotations_from_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.sandbox-id":"s1"}}"#,
        )
        .unwrap();
        let b = Bundle::new(dir.path());
        assert_eq!(b.group("c"), "s1");
        assert_eq!(b.state_root(), dir.path().join("libcontainer"));
    }

    #[test]
    fn detects_private_pid_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::new(dir.path());
        let write = |ns: &str| {
            std::fs::write(
                dir.path().join("config.json"),
                format!(r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{ns}]}}}}"#),
            )
            .unwrap()
        };
        write(r#"{"type":"mount"},{"type":"pid"}"#);
        assert!(b.has_private_pid_namespace());
        write(r#"{"type":"pid","path":"/proc/1/ns/pid"}"#);
        assert!(!b.has_private_pid_namespace());
        write(r#"{"type":"mount"}"#);
        assert!(!b.has_private_pid_namespace());
    }

    #[test]
    fn unmounts_stacked_rootfs_mounts_and_their_submounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().unwrap();
        let b = Bundle::new(dir.path());
        let rootfs = b.rootfs();
        std::fs::create_dir(&rootfs).unwrap();
        let tmpfs = |target: &Path| {
            mount(
                Some("tmpfs"),
                target,
                Some("tmpfs"),
                MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&rootfs);
        tmpfs(&rootfs);
        std::fs::create_dir(rootfs.join("proc")).unwrap();
        tmpfs(&rootfs.join("proc"));
        std::fs::write(rootfs.join("proc/marker"), "x").unwrap();

        b.unmount_rootfs("c1").unwrap();
        assert!(
            !rootfs.join("proc").exists(),
            "the top mount is still there"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(&*dir.path().to_string_lossy()),
            "mounts left under {}",
            dir.path().display()
        );
        // Nothing mounted, or no rootfs at all: nothing to do.
        b.unmount_rootfs("c1").unwrap();
        std::fs::remove_dir(&rootfs).unwrap();
        b.unmount_rootfs("c1").unwrap();
    }

    #[test]
    fn unreadable_config_groups_by_id() {
        let b = Bundle::new("/nonexistent/bundle");
        assert_eq!(b.group("c9"), "c9");
    }
}
