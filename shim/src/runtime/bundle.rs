//! The OCI bundle containerd prepares: its rootfs mounts; its spec, read once, adapted to
//! libcontainer (`spec_adapt`), edited by a [`SpecEditor`] (GPU injection) and written once,
//! with the facts of it later steps need ([`PreparedBundle`]); its annotations; and where
//! libcontainer keeps this container's state (inside the bundle, so that every containerd
//! instance has its own and containerd's bundle removal takes it away).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Spec};
use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};
use nvidia_shim_core::Config;

use crate::error::{Result, ShimError};
use crate::runtime::after_create::AfterCreate;
use crate::runtime::idmap::ShimBind;
use crate::runtime::mount_api::FsIds;
use crate::runtime::ops::IdmappedRootfs;
use crate::runtime::{spec_adapt, RootfsMount};

/// Annotations that put containers into one shim process: ours, then CRI's pod sandbox id.
pub const GROUP_ANNOTATIONS: [&str; 2] = [
    "io.containerd.nvidia.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// libcontainer's root directory inside a bundle.
pub const STATE_DIR: &str = "libcontainer";

/// What edits a container's spec in memory before libcontainer reads it: the GPU injection
/// (`gpu::GpuInjector`). It may write files of its own into the bundle (sources to mount) and
/// the rootfs; the spec itself is written by [`Bundle::prepare`], once, after every edit.
pub trait SpecEditor: Send + Sync {
    /// Edits `spec` of the container `target` names; `Ok(None)` when the container asks for
    /// nothing of it.
    fn edit(&self, target: &EditTarget<'_>, spec: &mut Spec) -> Result<Option<Edits>>;
}

/// The container a spec edit is for.
#[derive(Debug, Clone, Copy)]
pub struct EditTarget<'a> {
    /// Container id.
    pub id: &'a str,
    /// Its bundle.
    pub bundle: &'a Bundle,
    /// The shim's configuration for it.
    pub config: &'a Config,
}

/// What a [`SpecEditor`] did: for the log, and what to apply once the container exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// GPUs given, by UUID, and CDI devices, by name.
    pub gpus: Vec<String>,
    /// Device nodes the container now has.
    pub devices: usize,
    /// Driver files and IPC endpoints mounted from the inventory.
    pub mounts: usize,
    /// Read-only bind mounts to attach once the container exists (the `/proc/driver/nvidia`
    /// overlay): (host source in the bundle, container target).
    pub proc_mounts: Vec<(PathBuf, PathBuf)>,
    /// Permission bits to set in the container once it exists: (path, mode).
    pub chmods: Vec<(PathBuf, u32)>,
}

impl Edits {
    /// Logs what was done for container `id`, in `took`.
    pub fn log(&self, id: &str, took: Duration) {
        let ms = took.as_secs_f64() * 1e3;
        if self.gpus.is_empty() && self.mounts == 0 {
            log::info!(
                "container {id}: its spec's GPU edits completed ({} device nodes) in {ms:.1} ms",
                self.devices
            );
        } else {
            log::info!(
                "container {id}: injected GPUs {:?} ({} device nodes, {} mounts) in {ms:.1} ms",
                self.gpus,
                self.devices,
                self.mounts
            );
        }
    }
}

/// A bundle ready for libcontainer, and the facts of its spec the later steps of the create,
/// and the container's execs, need.
#[derive(Debug, Clone, Default)]
pub struct PreparedBundle {
    /// What the create worker applies in the container once libcontainer has created it.
    pub after: AfterCreate,
    /// The spec's pids limit, raised by one for creating (see `spec_adapt`), set back after.
    pub pids_limit: Option<i64>,
    /// The process's terminal size (`process.consoleSize`: width, height), applied when its
    /// terminal is attached, as runc applies it.
    pub console_size: Option<(u32, u32)>,
    /// Whether the container gets a pid namespace of its own.
    pub private_pid_ns: bool,
    /// The container's seccomp profile, which its execs are given (see `executor`).
    pub seccomp: Option<LinuxSeccomp>,
    /// Whether the container has a user namespace (made or joined).
    pub user_ns: bool,
    /// The spec's `linux.cgroupsPath`, as libcontainer takes it.
    pub cgroups_path: Option<PathBuf>,
    /// What the spec editor did.
    pub edits: Option<Edits>,
    /// The spec's root and mount sources that are absolute host paths, which the create
    /// must find where they are (see `mountinfo::needed_on`).
    pub host_paths: Vec<PathBuf>,
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

    /// Prepares the bundle for libcontainer: reads the spec once, adapts it to libcontainer
    /// (see `spec_adapt`), lets `editor` edit it, and writes it once when anything changed
    /// (a spec nobody changed is left byte for byte); returns what the later steps need.
    pub fn prepare(
        &self,
        id: &str,
        config: &Config,
        editor: &dyn SpecEditor,
    ) -> Result<PreparedBundle> {
        let original = self.load_spec(id)?;
        let mut spec = original.clone();
        spec_adapt::adapt_rootfs_propagation(&mut spec);
        let pids_limit = spec_adapt::make_room_for_intermediate(&mut spec);
        let binds = spec_adapt::take_shim_binds(&mut spec);
        self.make_mount_points(id, &spec, &binds)?;
        // What the shim applies itself, from the spec's own mounts (before the editor's).
        let mut after = AfterCreate {
            propagation: spec_adapt::mount_propagation(&spec),
            read_only_superblocks: spec_adapt::read_only_superblocks(&spec),
            cgroup_flags: spec_adapt::cgroup_mount_flags(&spec),
            binds,
            ..AfterCreate::default()
        };
        let console_size = spec
            .process()
            .as_ref()
            .and_then(|p| p.console_size())
            .map(|b| (clamp(b.width()), clamp(b.height())));
        let target = EditTarget {
            id,
            bundle: self,
            config,
        };
        let edits = editor.edit(&target, &mut spec)?;
        if let Some(edits) = &edits {
            after.mounts.clone_from(&edits.proc_mounts);
            after.chmods.clone_from(&edits.chmods);
        }
        if spec != original {
            self.write_spec(id, &spec)?;
        }
        Ok(PreparedBundle {
            after,
            pids_limit,
            console_size,
            private_pid_ns: has_private_pid_namespace(&spec),
            seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
            user_ns: spec_adapt::has_user_namespace(&spec),
            cgroups_path: spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()),
            edits,
            host_paths: spec
                .root()
                .iter()
                .map(|r| r.path().clone())
                .chain(
                    spec.mounts()
                        .iter()
                        .flatten()
                        .filter_map(|m| m.source().clone()),
                )
                .filter(|p| p.is_absolute())
                .collect(),
        })
    }

    /// Makes the mount points of `binds` in a read-only rootfs while it can still be written
    /// (libcontainer makes it read-only before the shim attaches them), as runc makes every
    /// mount point first; a writable rootfs gets them made after create, where they are
    /// missing. In a user namespace they are made as its root, which an idmapped rootfs
    /// requires (the host's root is no id of it).
    fn make_mount_points(&self, id: &str, spec: &Spec, binds: &[ShimBind]) -> Result<()> {
        let read_only = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
        if binds.is_empty() || !read_only {
            return Ok(());
        }
        let root =
            nvidia_shim_core_host::root::Root::open(&self.rootfs_of(spec)).map_err(|source| {
                ShimError::Rootfs {
                    id: id.to_owned(),
                    source,
                }
            })?;
        let kinds = binds
            .iter()
            .map(|b| {
                std::fs::metadata(&b.source)
                    .map(|m| m.is_dir())
                    .map_err(|e| {
                        ShimError::io(id, format!("mount source {}", b.source.display()), e)
                    })
            })
            .collect::<Result<Vec<bool>>>()?;
        let _as = spec_adapt::root_ids(spec).map(|(uid, gid)| FsIds::assume(uid, gid));
        for (b, is_dir) in binds.iter().zip(kinds) {
            root.create_mount_point(&b.destination, is_dir)
                .map_err(|source| ShimError::Rootfs {
                    id: id.to_owned(),
                    source,
                })?;
        }
        Ok(())
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

    /// The id of the shim that serves this container: the first grouping annotation present,
    /// else the container's own id.
    pub fn group(&self, id: &str) -> String {
        group_of(&self.annotations(), id)
    }

    /// Mounts containerd's rootfs mounts onto `<bundle>/rootfs`, undoing them on failure. An
    /// overlay with `uidmap=`/`gidmap=` options (a user-namespace pod's, from containerd 2.x)
    /// is mounted with its lower layers idmapped, by `mount_idmapped` (in a worker: see
    /// `idmap`).
    pub fn mount_rootfs(
        &self,
        id: &str,
        mounts: &[RootfsMount],
        mount_idmapped: impl Fn(IdmappedRootfs) -> Result<()>,
    ) -> Result<()> {
        let target = self.rootfs();
        for m in mounts {
            let mounted = match crate::runtime::idmap::idmapped_overlay(&m.typ, &m.options) {
                Err(reason) => Err(ShimError::InvalidArgument {
                    id: id.to_owned(),
                    reason: format!("rootfs mount {}: {reason}", m.typ),
                }),
                Ok(Some(overlay)) => mount_idmapped(IdmappedRootfs {
                    overlay,
                    target: target.clone(),
                    scratch: self.path.join(".idmapped-lowers"),
                }),
                Ok(None) => {
                    let given = |s: &str| (!s.is_empty()).then(|| s.to_owned());
                    containerd_shim::mount::mount_rootfs(
                        given(&m.typ).as_deref(),
                        given(&m.source).as_deref(),
                        &m.options,
                        &target,
                    )
                    .map_err(|e| {
                        ShimError::io(
                            id,
                            format!("mount {} {} on {}", m.typ, m.source, target.display()),
                            std::io::Error::other(e.to_string()),
                        )
                    })
                }
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

/// Whether `spec` gives the container a new pid namespace (one without a `path`).
pub fn has_private_pid_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|namespaces| {
            namespaces.iter().any(|n| {
                n.typ() == libcontainer::oci_spec::runtime::LinuxNamespaceType::Pid
                    && n.path().as_ref().is_none_or(|p| p.as_os_str().is_empty())
            })
        })
}

/// A spec from its JSON, for tests.
#[cfg(test)]
pub fn spec_from_json(json: &str) -> Spec {
    serde_json::from_str(json).expect("a spec")
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
        let with = |ns: &str| {
            spec_from_json(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{ns}]}}}}"#
            ))
        };
        assert!(has_private_pid_namespace(&with(
            r#"{"type":"mount"},{"type":"pid"}"#
        )));
        assert!(!has_private_pid_namespace(&with(
            r#"{"type":"pid","path":"/proc/1/ns/pid"}"#
        )));
        assert!(!has_private_pid_namespace(&with(r#"{"type":"mount"}"#)));
    }

    /// An editor that adds an env variable and a `/proc` overlay mount when asked.
    struct AddsEnv(bool);

    impl SpecEditor for AddsEnv {
        fn edit(&self, _target: &EditTarget<'_>, spec: &mut Spec) -> Result<Option<Edits>> {
            if !self.0 {
                return Ok(None);
            }
            let mut process = spec.process().clone().unwrap_or_default();
            let mut env = process.env().clone().unwrap_or_default();
            env.push("EDITED=1".to_owned());
            process.set_env(Some(env));
            spec.set_process(Some(process));
            Ok(Some(Edits {
                proc_mounts: vec![(PathBuf::from("/b/p"), PathBuf::from("/proc/x"))],
                ..Edits::default()
            }))
        }
    }

    #[test]
    fn a_bundle_nobody_changes_is_left_byte_for_byte_and_its_facts_come_back() {
        let dir = tempfile::tempdir().unwrap();
        // Odd formatting on purpose: a rewrite would normalise it.
        let original = r#"{"ociVersion":"1.0.2",  "process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["sh"],"consoleSize":{"height":24,"width":80}},"root":{"path":"rootfs"},
            "mounts":[{"destination":"/v","type":"bind","source":"/x","options":["rbind","rprivate"]}],
            "linux":{"namespaces":[{"type":"pid"}],"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}}}"#;
        std::fs::write(dir.path().join("config.json"), original).unwrap();
        let b = Bundle::new(dir.path());
        let prepared = b
            .prepare("c1", &Config::default(), &AddsEnv(false))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("config.json")).unwrap(),
            original
        );
        assert_eq!(prepared.console_size, Some((80, 24)));
        assert!(prepared.private_pid_ns);
        assert!(prepared.seccomp.is_some());
        assert_eq!(prepared.after.propagation.len(), 1);
        assert_eq!(prepared.edits, None);
    }

    #[test]
    fn adapted_and_edited_specs_are_written_once_with_both_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":["sh"]},"root":{"path":"rootfs"},"linux":{"resources":{"pids":{"limit":3}}}}"#,
        )
        .unwrap();
        let b = Bundle::new(dir.path());
        let prepared = b.prepare("c1", &Config::default(), &AddsEnv(true)).unwrap();
        let written = b.load_spec("c1").unwrap();
        let linux = written.linux().clone().unwrap();
        assert_eq!(
            linux.resources().as_ref().unwrap().pids().unwrap().limit(),
            4
        );
        assert_eq!(
            written.process().as_ref().unwrap().env().as_deref(),
            Some(&["EDITED=1".to_owned()][..])
        );
        assert_eq!(prepared.pids_limit, Some(3));
        assert_eq!(
            prepared.after.mounts.len(),
            1,
            "the editor's mounts are applied after"
        );
        assert!(!prepared.private_pid_ns);
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
