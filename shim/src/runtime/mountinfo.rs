//! The shim's reads of its mount table (`/proc/self/mountinfo`), kept cheap on hosts with many
//! mounts and safe with any bytes in them.
//!
//! A Kubernetes node mounts a few filesystems per pod (rootfs, `shm`, secrets, volumes), so its
//! mount table runs to hundreds or thousands of lines. The kernel formats the whole table on
//! every read (about 0.6 ms for 1,000 mounts on this project's test host) and `procfs`' parser
//! then builds a map of options for every line. The shim wants:
//!
//! - the cgroup hierarchies ([`cgroup_mounts`]): mounted at boot, they are read again only
//!   when `/proc/self/cgroup` lists other hierarchies than at the last read (a hierarchy
//!   mounted later), and only the `cgroup` and `cgroup2` lines are parsed;
//! - for each create ([`host_mounts`]), read afresh: the superblock devices mounted in the
//!   shim's namespace, from each line's `major:minor` field alone, and the mount points of the
//!   lines that are not UTF-8.
//!
//! The kernel writes paths' bytes as they are (escaping only space, tab, newline and
//! backslash): a mount point, and a bind mount's root, which follows renames of the directory
//! it was made from (kubelet's `subPath` binds are made on the host from directories a pod can
//! rename). So the table is read as bytes. libcontainer 0.7 reads it as UTF-8 text in every
//! create and fails on the first line that is not, so one such line anywhere on the host would
//! fail every create, where runc goes on. A create worker that finds such lines detaches their
//! mounts from a mount namespace of its own before libcontainer runs
//! ([`detach_in_own_namespace`]), unless the container needs one of them
//! ([`needed_on`]).

use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use procfs::process::MountInfo;

/// The calling thread's mount table (a mount namespace is a thread's; `self` is the process's
/// first thread).
const MOUNTINFO: &str = "/proc/thread-self/mountinfo";

/// The cgroup mounts last read, and the hierarchies `/proc/self/cgroup` listed then.
type Kept = (Vec<u8>, Arc<Vec<MountInfo>>);

/// The `cgroup` and `cgroup2` mounts of the shim's mount namespace. They are kept from one call
/// to the next and read again when `/proc/self/cgroup` (a few lines) lists other hierarchies
/// than at the last read. A failed read is returned and tried again next time.
pub fn cgroup_mounts() -> std::io::Result<Arc<Vec<MountInfo>>> {
    static KEPT: Mutex<Option<Kept>> = Mutex::new(None);
    let listed = hierarchies(&std::fs::read("/proc/self/cgroup")?);
    let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((seen, mounts)) = kept.as_ref() {
        if *seen == listed {
            return Ok(Arc::clone(mounts));
        }
    }
    let file = std::fs::File::open(MOUNTINFO)?;
    let mounts = Arc::new(cgroup_lines(std::io::BufReader::new(file))?);
    *kept = Some((listed, Arc::clone(&mounts)));
    Ok(mounts)
}

/// The hierarchies of a `/proc/PID/cgroup` text (each line's id and controllers, not the
/// process's place in them), in order.
fn hierarchies(text: &[u8]) -> Vec<u8> {
    let mut listed = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let mut f = line.splitn(3, |&b| b == b':');
        if let (Some(id), Some(controllers)) = (f.next(), f.next()) {
            listed.extend_from_slice(id);
            listed.push(b':');
            listed.extend_from_slice(controllers);
            listed.push(b'\n');
        }
    }
    listed
}

/// What a create needs of its mount table, from one read ([`host_mounts`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostMounts {
    /// The superblock devices (`st_dev`) of every mount, sorted and without duplicates.
    pub devices: Vec<u64>,
    /// The mount points of the lines that are not UTF-8, deepest first.
    pub not_utf8: Vec<PathBuf>,
}

/// The calling process's mount table as [`HostMounts`], read afresh.
pub fn host_mounts() -> std::io::Result<HostMounts> {
    let file = std::fs::File::open(MOUNTINFO)?;
    scan(std::io::BufReader::new(file))
}

/// Gives the calling process a mount namespace of its own, a slave of the one it was in (so
/// nothing done in it reaches the host), and detaches `points` and what is mounted below them
/// there. For a zygote worker about to create a container, whose mount namespace the
/// container's is then copied from. A point already gone with an outer one is skipped.
pub fn detach_in_own_namespace(points: &[PathBuf]) -> std::io::Result<()> {
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )?;
    for point in points {
        match nix::mount::umount2(point.as_path(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The first of the paths a create `needed` (its bundle, root, mount sources) that lies at or
/// below one of the mount points `not_utf8` (of [`HostMounts`]), with that mount point. A
/// create detaches those mount points only when there is none: libcontainer could not create
/// the container with such a mount in its way, nor without it.
pub fn needed_on(not_utf8: &[PathBuf], needed: &[&Path]) -> Option<(PathBuf, PathBuf)> {
    not_utf8.iter().find_map(|point| {
        let path = needed.iter().find(|p| p.starts_with(point))?;
        Some((path.to_path_buf(), point.clone()))
    })
}

/// Splits a mountinfo line into its space-separated fields (without the newline).
fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.strip_suffix(b"\n")
        .unwrap_or(line)
        .split(|&b| b == b' ')
}

/// The filesystem type of a mountinfo line: the first field after the `-` that ends the
/// optional fields (no earlier field can be `-` alone: the kernel escapes spaces in paths).
fn fs_type(line: &[u8]) -> Option<&[u8]> {
    let mut rest = fields(line).skip_while(|f| *f != b"-");
    rest.next()?;
    rest.next()
}

/// A mountinfo path field with the kernel's octal escapes (`\040` and the like) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(u8::MAX));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// A `major:minor` field as a device number.
fn device(majmin: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(majmin).ok()?;
    let (major, minor) = text.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Each `cgroup` or `cgroup2` line of a mountinfo text, parsed; every other line is skipped
/// unparsed, and so is a cgroup line that is not UTF-8 (not a hierarchy anything names).
fn cgroup_lines(mut text: impl BufRead) -> std::io::Result<Vec<MountInfo>> {
    let mut mounts = Vec::new();
    let mut line = Vec::new();
    while text.read_until(b'\n', &mut line)? > 0 {
        let is_cgroup = matches!(fs_type(&line), Some(b"cgroup" | b"cgroup2"));
        if let (true, Ok(text)) = (is_cgroup, std::str::from_utf8(&line)) {
            let mount =
                MountInfo::from_line(text.trim_end_matches('\n')).map_err(std::io::Error::other)?;
            mounts.push(mount);
        }
        line.clear();
    }
    Ok(mounts)
}

/// A mountinfo text's superblock devices (the third field) and the mount points (the fifth)
/// of its lines that are not UTF-8; a line without those fields is skipped.
fn scan(mut text: impl BufRead) -> std::io::Result<HostMounts> {
    let mut table = HostMounts::default();
    let mut line = Vec::new();
    while text.read_until(b'\n', &mut line)? > 0 {
        {
            let mut f = fields(&line).skip(2);
            table.devices.extend(f.next().and_then(device));
            let point = f.nth(1).map(unescape);
            if let (Some(point), Err(_)) = (point, std::str::from_utf8(&line)) {
                table
                    .not_utf8
                    .push(PathBuf::from(OsString::from_vec(point)));
            }
        }
        line.clear();
    }
    table.devices.sort_unstable();
    table.devices.dedup();
    table
        .not_utf8
        .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `path` is a mount point in the calling thread's mount namespace.
    fn is_mount_point(path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (Ok(own), Some(Ok(parent))) = (
            std::fs::symlink_metadata(path),
            path.parent().map(std::fs::symlink_metadata),
        ) else {
            return false;
        };
        own.dev() != parent.dev()
    }

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
90 22 0:50 / /run/a\\040-\\040b rw - tmpfs x rw
91 22 0:51 / /run/cgroup-like rw - tmpfs cgroup rw
92 22 8:1 /srv /mnt/srv rw - ext4 /dev/sda1 rw
";

    /// [`TABLE`] with two mounts whose paths are not UTF-8, one below the other, and a cgroup
    /// hierarchy mounted at such a path.
    fn with_latin1() -> Vec<u8> {
        let mut text = TABLE.as_bytes().to_vec();
        text.extend_from_slice(b"93 22 0:52 / /tmp/caf\xe9 rw - tmpfs none rw\n");
        text.extend_from_slice(b"94 93 0:53 / /tmp/caf\xe9/x\\040\xff rw - tmpfs none rw\n");
        text.extend_from_slice(b"95 22 0:54 / /tmp/\xff rw - cgroup cgroup rw,pids\n");
        text.extend_from_slice(b"97 22 8:1 /srv/\xfe /var/sub rw - ext4 /dev/sda1 rw\n");
        text.extend_from_slice(b"96 22 0:55 / /tmp/last rw - tmpfs none rw");
        text
    }

    #[test]
    fn only_cgroup_hierarchies_are_parsed() {
        let mounts = cgroup_lines(with_latin1().as_slice()).unwrap();
        let points: Vec<_> = mounts.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
            .map(PathBuf::from)
        );
        assert!(mounts[0].super_options.contains_key("cpuacct"));
        assert_eq!(mounts[2].fs_type, "cgroup2");
    }

    #[test]
    fn the_type_follows_the_separator_not_a_path() {
        let line = b"90 22 0:50 / /run/a\\040-\\040b rw - tmpfs x rw";
        assert_eq!(fs_type(line), Some(&b"tmpfs"[..]));
        assert_eq!(fs_type(b"no separator"), None);
    }

    #[test]
    fn paths_are_unescaped_as_the_kernel_escaped_them() {
        assert_eq!(
            unescape(br"/run/a\040b\011c\012d\134e"),
            b"/run/a b\tc\nd\\e"
        );
        assert_eq!(unescape(br"/x\09"), br"/x\09");
        assert_eq!(unescape(br"/x\"), br"/x\");
    }

    #[test]
    fn a_table_gives_its_devices_once_and_its_paths_that_are_not_utf8_deepest_first() {
        let table = scan(with_latin1().as_slice()).unwrap();
        let expected: Vec<u64> = [
            (0, 28),
            (0, 29),
            (0, 37),
            (0, 38),
            (0, 50),
            (0, 51),
            (0, 52),
            (0, 53),
            (0, 54),
            (0, 55),
            (8, 1),
        ]
        .iter()
        .map(|&(major, minor)| libc::makedev(major, minor))
        .collect();
        assert_eq!(table.devices, expected);
        let path = |b: &[u8]| PathBuf::from(OsString::from_vec(b.to_vec()));
        assert_eq!(
            table.not_utf8,
            [
                path(b"/tmp/caf\xe9/x \xff"),
                path(b"/tmp/caf\xe9"),
                path(b"/tmp/\xff"),
                path(b"/var/sub"),
            ]
        );
        assert_eq!(
            scan(TABLE.as_bytes()).unwrap().not_utf8,
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn hierarchies_are_told_apart_by_id_and_controllers_not_by_the_place_in_them() {
        let a = hierarchies(b"12:pids:/user.slice\n4:cpu,cpuacct:/user.slice\n0::/user.slice\n");
        let moved = hierarchies(b"12:pids:/kubepods/x\n4:cpu,cpuacct:/kubepods\n0::/kubepods\n");
        let added = hierarchies(b"12:pids:/\n4:cpu,cpuacct:/\n5:net_cls:/\n0::/\n");
        assert_eq!(a, b"12:pids\n4:cpu,cpuacct\n0:\n");
        assert_eq!(a, moved);
        assert_ne!(a, added);
    }

    #[test]
    fn a_mount_the_container_needs_is_not_detached() {
        let points = [PathBuf::from("/var/sub"), PathBuf::from("/tmp/x")];
        let bundle = Path::new("/run/containerd/k8s.io/c1");
        assert_eq!(needed_on(&points, &[bundle]), None);
        // Its own directory is not below `/var/sub`.
        let beside = Path::new("/var/subway");
        assert_eq!(needed_on(&points, &[bundle, beside]), None);
        let source = Path::new("/var/sub/data");
        assert_eq!(
            needed_on(&points, &[bundle, source]),
            Some((source.to_path_buf(), points[0].clone()))
        );
    }

    #[test]
    fn this_process_sees_its_proc_device_and_only_cgroup_lines() {
        let table = host_mounts().unwrap();
        let proc = std::fs::metadata("/proc").map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        assert!(table.devices.contains(&proc.unwrap()));
        let mounts = cgroup_mounts().unwrap();
        assert!(mounts
            .iter()
            .all(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2"));
    }

    /// Detaching in a namespace of its own (on a thread: a mount namespace is a thread's)
    /// leaves the mount where it was for everyone else. Needs root (to mount); skipped
    /// otherwise.
    #[test]
    fn a_detached_mount_stays_mounted_outside_the_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join(OsString::from_vec(b"caf\xe9".to_vec()));
        std::fs::create_dir(&point).unwrap();
        if let Err(e) = nix::mount::mount(
            Some("none"),
            &point,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=4k"),
        ) {
            nvidia_shim_integration::skip(&format!("cannot mount a tmpfs here ({e})"));
            return;
        }
        let inside = point.clone();
        let seen = std::thread::spawn(move || {
            let listed = host_mounts().unwrap().not_utf8.contains(&inside);
            detach_in_own_namespace(std::slice::from_ref(&inside)).unwrap();
            let listed_after = host_mounts().unwrap().not_utf8.contains(&inside);
            (listed, listed_after, is_mount_point(&inside))
        })
        .join()
        .unwrap();
        let still_mounted = is_mount_point(&point);
        nix::mount::umount2(&point, MntFlags::MNT_DETACH).unwrap();
        assert_eq!(seen, (true, false, false));
        assert!(still_mounted, "the detach reached the test's own namespace");
    }
}
