//! Idmapped mounts for user-namespace pods (Kubernetes `hostUsers: false` on containerd 2.x):
//! containerd passes the rootfs as an overlay whose options carry `uidmap=` and `gidmap=`, and
//! volumes as spec mounts with `uidMappings`/`gidMappings`. As containerd's runc shim does, the
//! overlay's lower layers are mounted idmapped through a user namespace of those mappings
//! (`mount_setattr(MOUNT_ATTR_IDMAP)`) and the overlay goes over them; a spec mount is made an
//! idmapped bind mount. libcontainer 0.7 parses neither (its `idmap` option is ignored), so the
//! shim does both: the rootfs before create, the spec mounts after it, in a zygote worker (a
//! user namespace is made by forking, which the multi-threaded shim never does).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::runtime::mount_api::{attach, clone_tree, set_tree_attr, TreeAttr};

/// One range of an id mapping: `size` ids from `container` on map to `host` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    /// First id inside.
    pub container: u32,
    /// First id on the host.
    pub host: u32,
    /// How many.
    pub size: u32,
}

impl IdMap {
    /// The line of `/proc/<pid>/uid_map` for it.
    fn line(&self) -> String {
        format!("{} {} {}\n", self.container, self.host, self.size)
    }
}

/// Parses containerd's mapping form `container:host:size`, ranges separated by `,`.
pub fn parse_mappings(value: &str) -> Result<Vec<IdMap>, String> {
    let ranges: Result<Vec<IdMap>, String> = value
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let mut parts = r.split(':').map(str::parse::<u32>);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(Ok(container)), Some(Ok(host)), Some(Ok(size)), None) if size > 0 => {
                    Ok(IdMap {
                        container,
                        host,
                        size,
                    })
                }
                _ => Err(format!(
                    "{}: not container-id:host-id:size",
                    nvidia_shim_core::quote::quoted(r)
                )),
            }
        })
        .collect();
    match ranges {
        Ok(r) if r.is_empty() => Err("an empty id mapping".to_owned()),
        // The kernel takes at most 340 lines per map.
        Ok(r) if r.len() > 340 => Err(format!("{} ranges: at most 340", r.len())),
        other => other,
    }
}

/// An idmapped overlay rootfs as containerd passes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdmappedOverlay {
    /// The overlay's options without `uidmap`/`gidmap`.
    pub options: Vec<String>,
    /// The uid mapping.
    pub uid: Vec<IdMap>,
    /// The gid mapping.
    pub gid: Vec<IdMap>,
}

/// The idmapped overlay of a rootfs mount of type `typ` with `options`, when it is one
/// (`uidmap=` or `gidmap=` among them); an error for mappings that do not parse or an idmap
/// option on a mount this does not support.
pub fn idmapped_overlay(typ: &str, options: &[String]) -> Result<Option<IdmappedOverlay>, String> {
    let (mut uid, mut gid) = (None, None);
    let mut rest = Vec::with_capacity(options.len());
    for o in options {
        if let Some(v) = o.strip_prefix("uidmap=") {
            uid = Some(parse_mappings(v).map_err(|e| format!("uidmap: {e}"))?);
        } else if let Some(v) = o.strip_prefix("gidmap=") {
            gid = Some(parse_mappings(v).map_err(|e| format!("gidmap: {e}"))?);
        } else {
            rest.push(o.clone());
        }
    }
    match (uid, gid) {
        (None, None) => Ok(None),
        _ if typ != "overlay" => Err(format!(
            "uidmap/gidmap on a {typ} rootfs: only overlay rootfs mounts can be idmapped"
        )),
        (Some(uid), Some(gid)) => Ok(Some(IdmappedOverlay {
            options: rest,
            uid,
            gid,
        })),
        _ => Err("uidmap and gidmap must come together".to_owned()),
    }
}

/// A user namespace with mappings `uid` and `gid`, held by its fd: a child is cloned into a new
/// user namespace, its maps are written from here, its namespace opened, and it is killed.
/// Forks: for single-threaded callers (a zygote worker).
pub fn userns(uid: &[IdMap], gid: &[IdMap]) -> std::io::Result<OwnedFd> {
    let mut stack = vec![0u8; 64 * 1024];
    // SAFETY: the child only calls pause(2) until it is killed; the caller is single-threaded,
    // so the clone inherits no lock held by another thread.
    let child = unsafe {
        nix::sched::clone(
            Box::new(|| loop {
                libc::pause();
            }),
            &mut stack,
            nix::sched::CloneFlags::CLONE_NEWUSER,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(std::io::Error::from)?;
    let pid = child.as_raw();
    let result = (|| {
        let lines = |m: &[IdMap]| m.iter().map(IdMap::line).collect::<String>();
        std::fs::write(format!("/proc/{pid}/uid_map"), lines(uid))?;
        std::fs::write(format!("/proc/{pid}/gid_map"), lines(gid))?;
        std::fs::File::open(format!("/proc/{pid}/ns/user")).map(OwnedFd::from)
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    result
}

/// A detached bind mount of `source` (with what is mounted below it when `recursive`),
/// idmapped through the user namespace `userns`.
pub fn idmapped_tree(
    source: &Path,
    userns: BorrowedFd<'_>,
    recursive: bool,
) -> std::io::Result<OwnedFd> {
    let tree = clone_tree(source, recursive)?;
    let attr = TreeAttr {
        set: libc::MOUNT_ATTR_IDMAP,
        userns: Some(userns),
        recursive,
        ..TreeAttr::default()
    };
    set_tree_attr(&tree, attr, source)?;
    Ok(tree)
}

/// Mounts `overlay` on `target`: each lower layer idmapped onto a directory under `scratch`
/// (made for it, removed afterwards: the overlay keeps its own references), the overlay over
/// those. Forks (see [`userns`]).
pub fn mount_idmapped_overlay(
    overlay: &IdmappedOverlay,
    target: &Path,
    scratch: &Path,
) -> std::io::Result<()> {
    let userns = userns(&overlay.uid, &overlay.gid)?;
    let lowers: Vec<PathBuf> = overlay
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').map(PathBuf::from).collect())
        .unwrap_or_default();
    std::fs::create_dir_all(scratch)?;
    let mut mapped = Vec::with_capacity(lowers.len());
    let result = (|| {
        for (i, lower) in lowers.iter().enumerate() {
            let dir = scratch.join(format!("lower{i}"));
            std::fs::create_dir_all(&dir)?;
            mapped.push(dir.clone());
            let tree = idmapped_tree(lower, userns.as_fd(), false)?;
            attach(&tree, &dir)?;
        }
        let lowerdir = mapped
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let data: Vec<String> = overlay
            .options
            .iter()
            .map(|o| {
                if o.starts_with("lowerdir=") {
                    format!("lowerdir={lowerdir}")
                } else {
                    o.clone()
                }
            })
            .collect();
        mount(
            Some("overlay"),
            target,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.join(",").as_str()),
        )
        .map_err(|e| std::io::Error::other(format!("mount overlay on {}: {e}", target.display())))
    })();
    for dir in mapped.iter().rev() {
        let _ = umount2(dir, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir(scratch);
    result
}

/// A spec bind mount the shim attaches itself once the container exists, from the host's side
/// (libcontainer would mount it from inside the container's user namespace, or without its
/// mapping): one with `uidMappings`/`gidMappings` (libcontainer 0.7 ignores them), or, in a
/// container with a user namespace, any bind of a host path, whose source the container's
/// root often may not even reach (containerd's sandbox files), as runc opens such sources
/// before it enters the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimBind {
    /// The host source.
    pub source: PathBuf,
    /// The container destination.
    pub destination: PathBuf,
    /// The uid and gid mappings of an idmapped bind.
    pub idmap: Option<(Vec<IdMap>, Vec<IdMap>)>,
    /// Bind what is mounted below the source too (`rbind`).
    pub recursive: bool,
    /// The `MOUNT_ATTR_*` bits its options ask (`ro`, `nosuid`, `nodev`, `noexec`).
    pub attr: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerds_mapping_options_are_read() {
        let options: Vec<String> = [
            "index=off",
            "lowerdir=/a:/b",
            "uidmap=0:200000:65536",
            "gidmap=0:300000:65536,65536:1000:1",
        ]
        .map(String::from)
        .to_vec();
        let o = idmapped_overlay("overlay", &options).unwrap().unwrap();
        assert_eq!(o.options, ["index=off", "lowerdir=/a:/b"]);
        assert_eq!(
            o.uid,
            [IdMap {
                container: 0,
                host: 200_000,
                size: 65536
            }]
        );
        assert_eq!(o.gid.len(), 2);
        assert_eq!(o.gid[1].line(), "65536 1000 1\n");
        assert_eq!(idmapped_overlay("overlay", &options[..2]).unwrap(), None);
        let bind = [
            "rbind".to_owned(),
            "uidmap=0:1:1".to_owned(),
            "gidmap=0:1:1".to_owned(),
        ];
        assert!(idmapped_overlay("bind", &bind)
            .unwrap_err()
            .contains("only overlay"));
        assert!(idmapped_overlay("overlay", &options[..3])
            .unwrap_err()
            .contains("together"));
        for bad in ["0:1", "a:b:c", "0:1:0", "0:1:2:3", ""] {
            assert!(parse_mappings(bad).is_err(), "{bad:?}");
        }
    }
}
