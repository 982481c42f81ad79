//! Where libcontainer 0.7 would treat a spec otherwise than runc: what the shim changes in the
//! spec before libcontainer reads it, and what it applies itself after create.
//!
//! Mount propagation as runc applies it:
//!
//! - `linux.rootfsPropagation` of `rshared`, `rslave`, `rprivate` or `runbindable` (containerd's
//!   CRI sets `rshared`/`rslave` for pods with Bidirectional or HostToContainer volumes) is
//!   refused by libcontainer as unknown; it applies its `shared`, `slave`, `private` (and its
//!   first step of `unbindable`) recursively already, so the recursive names are given to it as
//!   those.
//! - A mount's own propagation option (`rprivate`, CRI's default for volumes, `rslave`,
//!   `rshared`, ...) is parsed but never applied by libcontainer, so a volume stayed a slave of
//!   the host's shared mount and saw mounts the host made later. The shim applies each one in
//!   the container's mount namespace after create, before the container starts.
//!
//! Read-only filesystems: runc mounts a filesystem with `mount(2)` and `MS_RDONLY`, so a new
//! superblock (a container's own sysfs, a read-only tmpfs) is read-only itself; libcontainer
//! creates it read-write and makes only the mount read-only. The shim makes those superblocks
//! read-only after create ([`read_only_superblocks`]).
//!
//! The cgroup filesystem: libcontainer mounts cgroup v1's tmpfs and controller hierarchies
//! read-write whatever the spec's cgroup mount asks (containerd asks `ro,nosuid,nodev,noexec`
//! for an unprivileged container), so a container could rewrite its own limits; runc mounts
//! every one of them with the spec's flags. The shim sets them after create
//! ([`cgroup_mount_flags`]).
//!
//! The pids limit ([`make_room_for_intermediate`]).

use std::path::PathBuf;

use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};
use nix::mount::MsFlags;

use crate::runtime::idmap::{IdMap, ShimBind};

/// Rewrites a recursive `rootfsPropagation` to the name libcontainer knows (with the same
/// recursive effect there); true when the spec changed.
pub fn adapt_rootfs_propagation(spec: &mut Spec) -> bool {
    let Some(mut linux) = spec.linux().clone() else {
        return false;
    };
    let known = match linux.rootfs_propagation().as_deref() {
        Some("rshared") => "shared",
        Some("rslave") => "slave",
        Some("rprivate") => "private",
        Some("runbindable") => "unbindable",
        _ => return false,
    };
    linux.set_rootfs_propagation(Some(known.to_owned()));
    spec.set_linux(Some(linux));
    true
}

/// Raises a spec's pids limit by one for libcontainer's intermediate process, which joins the
/// container's cgroup beside its init while it is created (runc's init is alone there): a
/// spec with `pids.limit = 1` failed to create. Returns the spec's limit, which the shim sets
/// back once the container is created.
pub fn make_room_for_intermediate(spec: &mut Spec) -> Option<i64> {
    let mut linux = spec.linux().clone()?;
    let mut resources = linux.resources().clone()?;
    let mut pids = (*resources.pids())?;
    let limit = pids.limit();
    if limit <= 0 {
        return None;
    }
    pids.set_limit(limit + 1);
    resources.set_pids(Some(pids));
    linux.set_resources(Some(resources));
    spec.set_linux(Some(linux));
    Some(limit)
}

/// The propagation flags of mount option `option`, if it is one.
fn flags_of(option: &str) -> Option<MsFlags> {
    Some(match option {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Each spec mount's propagation, in order, as (destination, `mount(2)` flags bits): the
/// last propagation option of a mount wins, as in runc.
pub fn mount_propagation(spec: &Spec) -> Vec<(PathBuf, u64)> {
    spec.mounts()
        .as_ref()
        .map(|mounts| {
            mounts
                .iter()
                .filter_map(|m| {
                    let flags = m
                        .options()
                        .as_ref()?
                        .iter()
                        .rev()
                        .find_map(|o| flags_of(o))?;
                    Some((m.destination().clone(), flags.bits()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Mount attributes to set and clear on a mount and every mount below it
/// (`mount_setattr(2)` with `AT_RECURSIVE`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecursiveMountAttr {
    /// The mount point in the container.
    pub target: PathBuf,
    /// `MOUNT_ATTR_*` bits to set.
    pub set: u64,
    /// `MOUNT_ATTR_*` bits to clear.
    pub clear: u64,
}

/// The flags the spec's cgroup mount asks for, for that mount and every controller hierarchy
/// below it, as runc mounts them: `ro`/`rw` (the last wins), `nosuid`, `nodev`, `noexec`.
pub fn cgroup_mount_flags(spec: &Spec) -> Option<RecursiveMountAttr> {
    let mount = spec
        .mounts()
        .as_ref()?
        .iter()
        .rev()
        .find(|m| matches!(m.typ().as_deref(), Some("cgroup" | "cgroup2")))?;
    let (set, clear) = mount_attr(mount.options().as_deref().unwrap_or_default());
    (set | clear != 0).then(|| RecursiveMountAttr {
        target: mount.destination().clone(),
        set,
        clear,
    })
}

/// Takes out of the spec the bind mounts the shim attaches itself after create (see
/// [`ShimBind`]): those with `uidMappings`/`gidMappings`; and in a container with a user
/// namespace, every bind of a host path, unless a later mount lies below it (attached last,
/// it would cover that one).
pub fn take_shim_binds(spec: &mut Spec) -> Vec<ShimBind> {
    let userns = has_user_namespace(spec);
    let Some(mounts) = spec.mounts_mut().as_mut() else {
        return Vec::new();
    };
    let maps = |m: &Option<Vec<libcontainer::oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|r| IdMap {
                container: r.container_id(),
                host: r.host_id(),
                size: r.size(),
            })
            .collect::<Vec<_>>()
    };
    let destinations: Vec<PathBuf> = mounts.iter().map(|m| m.destination().clone()).collect();
    let mut taken = Vec::new();
    let mut index = 0;
    mounts.retain(|m| {
        index += 1;
        let options = m.options().as_deref().unwrap_or_default();
        let is_bind = m
            .typ()
            .as_deref()
            .is_none_or(|t| t == "bind" || t == "none")
            && options.iter().any(|o| o == "bind" || o == "rbind")
            || m.typ().as_deref() == Some("bind");
        let (uid, gid) = (maps(m.uid_mappings()), maps(m.gid_mappings()));
        let idmap = (!uid.is_empty() || !gid.is_empty()).then(|| {
            // As runc: one mapping given stands for the other too.
            if uid.is_empty() {
                (gid.clone(), gid)
            } else if gid.is_empty() {
                (uid.clone(), uid)
            } else {
                (uid, gid)
            }
        });
        let covers_a_later_one = destinations[index..]
            .iter()
            .any(|d| d != m.destination() && d.starts_with(m.destination()));
        let from_the_host = userns
            && is_bind
            && m.source().as_ref().is_some_and(|s| s.is_absolute())
            && !covers_a_later_one;
        if idmap.is_none() && !from_the_host {
            return true;
        }
        taken.push(ShimBind {
            source: m.source().clone().unwrap_or_default(),
            destination: m.destination().clone(),
            idmap,
            recursive: options.iter().any(|o| o == "rbind"),
            attr: mount_attr(options).0,
        });
        false
    });
    taken
}

/// Whether the container has a user namespace, made for it or joined.
pub fn has_user_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::User))
}

/// The host uid and gid of the container's root, when the spec maps its ids (a user
/// namespace).
pub fn root_ids(spec: &Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let host_of_root = |maps: &Option<Vec<libcontainer::oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find(|m| m.container_id() == 0)
            .map(|m| m.host_id())
    };
    host_of_root(linux.uid_mappings()).zip(host_of_root(linux.gid_mappings()))
}

/// The `MOUNT_ATTR_*` bits mount options set and clear (`ro`/`rw`, `nosuid`/`suid`,
/// `nodev`/`dev`, `noexec`/`exec`; for each pair the last given wins).
fn mount_attr(options: &[String]) -> (u64, u64) {
    let mut set = 0;
    let mut clear = 0;
    for option in options {
        let (bit, on) = match option.as_str() {
            "ro" => (libc::MOUNT_ATTR_RDONLY, true),
            "rw" => (libc::MOUNT_ATTR_RDONLY, false),
            "nosuid" => (libc::MOUNT_ATTR_NOSUID, true),
            "suid" => (libc::MOUNT_ATTR_NOSUID, false),
            "nodev" => (libc::MOUNT_ATTR_NODEV, true),
            "dev" => (libc::MOUNT_ATTR_NODEV, false),
            "noexec" => (libc::MOUNT_ATTR_NOEXEC, true),
            "exec" => (libc::MOUNT_ATTR_NOEXEC, false),
            _ => continue,
        };
        if on {
            set |= bit;
            clear &= !bit;
        } else {
            clear |= bit;
            set &= !bit;
        }
    }
    (set, clear)
}

/// The destinations of the spec's new (not bind) read-only filesystems, whose superblock runc
/// leaves read-only: the last of a mount's `ro`/`rw` options wins. cgroup filesystems are left
/// out: libcontainer mounts those its own way.
pub fn read_only_superblocks(spec: &Spec) -> Vec<PathBuf> {
    let Some(mounts) = spec.mounts().as_ref() else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| {
            let typ = m.typ().as_deref().unwrap_or("bind");
            let options = m.options().as_deref().unwrap_or_default();
            !matches!(typ, "bind" | "cgroup" | "cgroup2" | "none")
                && !options.iter().any(|o| o == "bind" || o == "rbind")
                && options
                    .iter()
                    .rev()
                    .find(|o| *o == "ro" || *o == "rw")
                    .map(String::as_str)
                    == Some("ro")
        })
        .map(|m| m.destination().clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::bundle::spec_from_json as spec;

    /// A spec with `mounts` (their JSON objects, comma-separated).
    fn with_mounts(mounts: &str) -> Spec {
        spec(&format!(
            r#"{{"ociVersion":"1.0.2","root":{{"path":"rootfs"}},"mounts":[{mounts}]}}"#
        ))
    }

    #[test]
    fn idmapped_mounts_are_taken_out_for_the_shim() {
        let mut s = with_mounts(
            r#"
                {"destination":"/proc","type":"proc"},
                {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro","idmap"],
                 "uidMappings":[{"containerID":0,"hostID":200000,"size":65536}],
                 "gidMappings":[{"containerID":0,"hostID":300000,"size":65536}]},
                {"destination":"/etc/hosts","type":"bind","source":"/srv/hosts","options":["rbind","rw"]}"#,
        );
        let taken = take_shim_binds(&mut s);
        assert_eq!(
            s.mounts().as_ref().unwrap().len(),
            2,
            "the idmapped one is out; without a user namespace the plain bind stays"
        );
        assert_eq!(taken.len(), 1);
        let m = &taken[0];
        assert_eq!(
            (m.source.to_str(), m.destination.to_str()),
            (Some("/srv/data"), Some("/data"))
        );
        let (uid, gid) = m.idmap.as_ref().unwrap();
        assert_eq!((uid[0].host, gid[0].host), (200_000, 300_000));
        assert!(m.recursive);
        assert_eq!(m.attr, libc::MOUNT_ATTR_RDONLY);
    }

    #[test]
    fn in_a_user_namespace_host_binds_are_taken_out_unless_a_later_mount_is_below() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"mount"},{"type":"user"}]},"mounts":[
                {"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/dev/shm","type":"bind","source":"/run/sandbox/shm","options":["rbind","ro","nosuid","nodev","noexec"]},
                {"destination":"/etc/hosts","source":"/run/sandbox/hosts","options":["bind","rw"]},
                {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind"]},
                {"destination":"/data/cache","type":"tmpfs","source":"tmpfs"}]}"#,
        );
        let taken = take_shim_binds(&mut s);
        let left: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        assert_eq!(
            left,
            [
                PathBuf::from("/proc"),
                PathBuf::from("/data"),
                PathBuf::from("/data/cache")
            ],
            "/data stays: the tmpfs below it comes later"
        );
        let binds: Vec<_> = taken
            .iter()
            .map(|b| {
                (
                    b.destination.clone(),
                    b.idmap.is_none(),
                    b.recursive,
                    b.attr,
                )
            })
            .collect();
        let all = libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC;
        assert_eq!(
            binds,
            [
                (PathBuf::from("/dev/shm"), true, true, all),
                (PathBuf::from("/etc/hosts"), true, false, 0),
            ]
        );
    }

    #[test]
    fn the_cgroup_mount_keeps_the_flags_the_spec_asks() {
        let unprivileged = with_mounts(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["nosuid","noexec","nodev","relatime","ro"]}"#,
        );
        let attr = cgroup_mount_flags(&unprivileged).unwrap();
        assert_eq!(attr.target, PathBuf::from("/sys/fs/cgroup"));
        let all = libc::MOUNT_ATTR_RDONLY
            | libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | libc::MOUNT_ATTR_NOEXEC;
        assert_eq!((attr.set, attr.clear), (all, 0));
        let privileged = with_mounts(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup2","source":"cgroup","options":["ro","nosuid","noexec","nodev","rw"]}"#,
        );
        let attr = cgroup_mount_flags(&privileged).unwrap();
        assert_eq!(attr.clear, libc::MOUNT_ATTR_RDONLY);
        assert_eq!(attr.set & libc::MOUNT_ATTR_RDONLY, 0);
        let none = with_mounts(r#"{"destination":"/proc","type":"proc"}"#);
        assert!(cgroup_mount_flags(&none).is_none());
    }

    #[test]
    fn recursive_rootfs_propagation_becomes_what_libcontainer_knows() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"rootfsPropagation":"rslave"}}"#,
        );
        assert!(adapt_rootfs_propagation(&mut s));
        assert_eq!(
            s.linux().as_ref().unwrap().rootfs_propagation().as_deref(),
            Some("slave")
        );
        assert!(
            !adapt_rootfs_propagation(&mut s),
            "already known: unchanged"
        );
    }

    #[test]
    fn a_pids_limit_gets_room_for_the_intermediate_process() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"linux":{"resources":{"pids":{"limit":1}}}}"#,
        );
        assert_eq!(make_room_for_intermediate(&mut s), Some(1));
        let resources = s.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(resources.pids().unwrap().limit(), 2);
        let mut none = spec(r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#);
        assert_eq!(make_room_for_intermediate(&mut none), None);
    }

    #[test]
    fn new_read_only_filesystems_are_listed_bind_mounts_are_not() {
        let s = with_mounts(
            r#"
              {"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","ro"]},
              {"destination":"/a","type":"tmpfs","source":"tmpfs","options":["ro","rw"]},
              {"destination":"/b","type":"bind","source":"/x","options":["rbind","ro"]},
              {"destination":"/c","type":"none","source":"/x","options":["bind","ro"]},
              {"destination":"/d","source":"/x","options":["ro"]},
              {"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro"]},
              {"destination":"/e","type":"tmpfs","source":"tmpfs","options":["rw","ro"]}
            "#,
        );
        assert_eq!(
            read_only_superblocks(&s),
            vec![PathBuf::from("/sys"), PathBuf::from("/e")]
        );
    }

    #[test]
    fn each_mounts_last_propagation_option_is_taken() {
        let s = with_mounts(
            r#"
                {"destination":"/a","type":"bind","source":"/x","options":["rbind","rprivate"]},
                {"destination":"/b","type":"bind","source":"/x","options":["rbind","ro"]},
                {"destination":"/c","type":"bind","source":"/x","options":["rslave","rshared"]}"#,
        );
        assert_eq!(
            mount_propagation(&s),
            vec![
                (
                    PathBuf::from("/a"),
                    (MsFlags::MS_PRIVATE | MsFlags::MS_REC).bits()
                ),
                (
                    PathBuf::from("/c"),
                    (MsFlags::MS_SHARED | MsFlags::MS_REC).bits()
                ),
            ]
        );
    }
}
