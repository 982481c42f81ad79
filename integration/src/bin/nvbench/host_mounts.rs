//! `--host-mounts N`: the benchmark on a host with a long mount table, as a Kubernetes node with
//! many pods has (a rootfs, `shm`, secrets and volumes per pod), without touching the host.
//!
//! nvbench moves itself into a mount namespace of its own (private, so nothing propagates
//! either way) and mounts N small tmpfs there before it starts containerd; containerd, both
//! shims and their containers inherit that namespace, so each runtime reads the same longer
//! `/proc/self/mountinfo`. nvbench unmounts them when it ends; a run cut short by a signal
//! leaves their empty directories behind. They are private, where a node's mounts are often
//! shared, so propagation costs are not measured.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The extra mounts; dropping it unmounts them and removes their directories.
pub struct HostMounts {
    dir: tempfile::TempDir,
    count: usize,
}

impl Drop for HostMounts {
    fn drop(&mut self) {
        for i in 0..self.count {
            if let Ok(target) =
                CString::new(self.dir.path().join(format!("m{i}")).as_os_str().as_bytes())
            {
                // SAFETY: a NUL-terminated path alive for the call.
                unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Enters a private mount namespace and mounts `count` tmpfs below a new temporary directory.
/// Call it before any thread is started: a mount namespace is the calling thread's, and
/// children inherit it from the thread that forks.
pub fn add(count: usize) -> Result<HostMounts> {
    // SAFETY: plain system call, no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
    }
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .context("making / private in nvbench's mount namespace")?;
    let mut mounts = HostMounts {
        dir: tempfile::Builder::new()
            .prefix("nvbench-mounts-")
            .tempdir()?,
        count: 0,
    };
    for i in 0..count {
        let target = mounts.dir.path().join(format!("m{i}"));
        std::fs::create_dir(&target)?;
        mount(
            Some("nvbench"),
            &target,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("size=4k"),
        )
        .with_context(|| format!("mounting tmpfs on {}", target.display()))?;
        mounts.count += 1;
    }
    Ok(mounts)
}

/// The number of lines of this process's mount table.
pub fn table_lines() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |t| t.lines().count())
}

/// `mount(2)`.
fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let c = |s: Option<&str>| s.map(CString::new).transpose();
    let (source, fstype, data) = (c(source)?, c(fstype)?, c(data)?);
    let target = CString::new(target.as_os_str().as_bytes())?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string alive for the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        bail!("{}", std::io::Error::last_os_error());
    }
    Ok(())
}
