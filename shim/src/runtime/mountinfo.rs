//! The shim's reads of its mount table (`/proc/self/mountinfo`), kept cheap on hosts with many
//! mounts.
//!
//! A Kubernetes node mounts a few filesystems per pod (rootfs, `shm`, secrets, volumes), so its
//! mount table runs to hundreds or thousands of lines. The kernel formats the whole table on
//! every read (about 0.6 ms for 1,000 mounts on this project's test host) and `procfs`' parser
//! then builds a map of options for every line. The shim wants two things from it:
//!
//! - the cgroup hierarchies ([`cgroup_mounts`]): they are mounted at boot and stay, so they
//!   are read once per process (runc caches them the same way), and only the `cgroup` and
//!   `cgroup2` lines are parsed;
//! - the superblock devices mounted in the shim's namespace ([`mounted_devices`]), which do
//!   change: read each time, taking only each line's `major:minor` field.

use std::io::BufRead;
use std::sync::OnceLock;

use procfs::process::MountInfo;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// The `cgroup` and `cgroup2` mounts of the shim's mount namespace, read on the first call and
/// kept for the life of the process. A failed read is returned and tried again next time.
pub fn cgroup_mounts() -> std::io::Result<&'static [MountInfo]> {
    static MOUNTS: OnceLock<Vec<MountInfo>> = OnceLock::new();
    if let Some(mounts) = MOUNTS.get() {
        return Ok(mounts);
    }
    let file = std::fs::File::open(MOUNTINFO)?;
    let mounts = cgroup_lines(std::io::BufReader::new(file))?;
    Ok(MOUNTS.get_or_init(|| mounts))
}

/// The superblock devices (`st_dev`) of every mount in the calling process's mount
/// namespace, sorted and without duplicates. Read afresh on each call.
pub fn mounted_devices() -> std::io::Result<Vec<u64>> {
    let file = std::fs::File::open(MOUNTINFO)?;
    devices_of(std::io::BufReader::new(file))
}

/// The filesystem type of a mountinfo line: the first field after the ` - ` that ends the
/// optional fields (no earlier field can hold ` - `: the kernel escapes spaces in paths).
fn fs_type(line: &str) -> Option<&str> {
    let (_, after) = line.split_once(" - ")?;
    after.split(' ').next()
}

/// Each `cgroup` or `cgroup2` line of a mountinfo text, parsed; every other line is skipped
/// unparsed.
fn cgroup_lines(mut text: impl BufRead) -> std::io::Result<Vec<MountInfo>> {
    let mut mounts = Vec::new();
    let mut line = String::new();
    while text.read_line(&mut line)? > 0 {
        let trimmed = line.trim_end_matches('\n');
        if matches!(fs_type(trimmed), Some("cgroup" | "cgroup2")) {
            let mount = MountInfo::from_line(trimmed).map_err(std::io::Error::other)?;
            mounts.push(mount);
        }
        line.clear();
    }
    Ok(mounts)
}

/// The `major:minor` field (the third) of each line of a mountinfo text as a device number,
/// sorted and deduplicated; a line without one is skipped.
fn devices_of(mut text: impl BufRead) -> std::io::Result<Vec<u64>> {
    let mut devices = Vec::new();
    let mut line = String::new();
    while text.read_line(&mut line)? > 0 {
        let device = line.split(' ').nth(2).and_then(|majmin| {
            let (major, minor) = majmin.split_once(':')?;
            Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
        });
        devices.extend(device);
        line.clear();
    }
    devices.sort_unstable();
    devices.dedup();
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_cgroup_hierarchies_are_parsed() {
        let mounts = cgroup_lines(TABLE.as_bytes()).unwrap();
        let points: Vec<_> = mounts.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            [
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/unified",
            ]
            .map(std::path::PathBuf::from)
        );
        assert!(mounts[0].super_options.contains_key("cpuacct"));
        assert_eq!(mounts[2].fs_type, "cgroup2");
    }

    #[test]
    fn the_type_follows_the_separator_not_a_path() {
        assert_eq!(
            fs_type("90 22 0:50 / /run/a\\040b rw - tmpfs x rw"),
            Some("tmpfs")
        );
        assert_eq!(fs_type("no separator"), None);
    }

    #[test]
    fn devices_are_each_lines_superblock_once() {
        let devices = devices_of(TABLE.as_bytes()).unwrap();
        let expected: Vec<u64> = [(0, 28), (0, 29), (0, 37), (0, 38), (0, 50), (0, 51), (8, 1)]
            .iter()
            .map(|&(major, minor)| libc::makedev(major, minor))
            .collect();
        assert_eq!(devices, expected);
    }

    #[test]
    fn this_process_sees_its_proc_device_and_no_foreign_lines() {
        let devices = mounted_devices().unwrap();
        let proc = std::fs::metadata("/proc").map(|m| std::os::unix::fs::MetadataExt::dev(&m));
        assert!(devices.contains(&proc.unwrap()));
        let mounts = cgroup_mounts().unwrap();
        assert!(mounts
            .iter()
            .all(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2"));
    }
}
