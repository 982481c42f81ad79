//! Running containers without runc: libcontainer behind the shim's zygotes, and what the shim
//! does around it in-process.
//!
//! - [`zygote`]: the single-threaded helper (forked before any thread, executed afresh when
//!   it dies) whose workers run [`ops`], libcontainer's create/exec/start; [`driver`]: the
//!   operations (create, exec, start, kill, pause, resume, delete) the task service calls;
//!   [`executor`]: the last step of every process libcontainer starts; [`spec_adapt`]: where
//!   libcontainer would treat a spec otherwise than runc; [`causes`]: why an init failed, for
//!   containerd's error.
//! - [`bundle`]: the OCI bundle (rootfs mounts, spec); [`cgroup`]: cgroup reads and writes;
//!   [`attach_warmup`]: the cgroup migration warm-up.
//! - [`exit`]: the reaper's exits routed to processes; [`oom`]: OOM events.

pub mod attach_warmup;
pub mod bundle;
pub mod causes;
pub mod cgroup;
pub mod driver;
pub mod executor;
pub mod exit;
pub mod idmap;
pub mod oom;
pub mod ops;
pub mod spec_adapt;
pub mod zygote;

/// `/proc/<pid>/cgroup` text as procfs parses it (nothing when it does not parse), for the
/// tests of the modules that read it.
#[cfg(test)]
pub fn parse_proc_cgroup(text: &str) -> Vec<procfs::ProcessCGroup> {
    use procfs::FromBufRead;
    procfs::ProcessCGroups::from_buf_read(text.as_bytes())
        .map(|c| c.0)
        .unwrap_or_default()
}
