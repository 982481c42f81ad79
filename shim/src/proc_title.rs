//! The process's command line as `ps` and `/proc/PID/cmdline` show it. The shim daemon is
//! `start` forked, not executed afresh, so it rewrites the command line it inherited (`start`'s
//! flags) to the daemon's, within the bytes the kernel gave it, as `setproctitle` does.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Rewrites this process's command line to its program name followed by `args`, within its
/// argument area (what does not fit is cut; the rest is zeroed, which `/proc/PID/cmdline`
/// shows as empty arguments at the end and `ps` as trailing blanks). Best effort: nothing changes
/// where `/proc/self` cannot be read. Call it before any thread exists; `std::env::args`
/// reads that area, so read [`current`] afterwards instead.
pub fn set(args: &[&str]) {
    let Some((start, len)) = arg_area() else {
        return;
    };
    let mut title = current()
        .into_iter()
        .next()
        .map(OsString::into_vec)
        .unwrap_or_default();
    for arg in args {
        title.push(0);
        title.extend_from_slice(arg.as_bytes());
    }
    title.resize(len, 0);
    if let Some(last) = title.last_mut() {
        *last = 0;
    }
    // SAFETY: [start, start + len) is this process's argument area on its initial stack, as
    // the kernel reports it (`/proc/self/stat`'s arg_start and arg_end): mapped, writable and
    // no Rust value's (std keeps raw pointers into it for `env::args`, which `main` has
    // already copied; [`current`] serves later readers). Exactly `len` bytes are written.
    unsafe {
        std::ptr::copy_nonoverlapping(
            title.as_ptr(),
            std::ptr::with_exposed_provenance_mut::<u8>(start),
            len,
        );
    }
}

/// This process's command line as the kernel shows it now, one entry an argument.
pub fn current() -> Vec<OsString> {
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    split(&cmdline)
}

/// The arguments of a `/proc/PID/cmdline` text: NUL-separated, empty ones (the padding of a
/// rewritten command line) left out.
fn split(cmdline: &[u8]) -> Vec<OsString> {
    cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect()
}

/// Where the argument area starts and how long it is.
fn arg_area() -> Option<(usize, usize)> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let start = usize::try_from(stat.arg_start?).ok()?;
    let end = usize::try_from(stat.arg_end?).ok()?;
    (end > start).then_some((start, end - start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_command_lines_padding_is_no_argument() {
        let args = split(b"containerd-shim-nvidia-v2\0-id\0c1\0\0\0\0");
        assert_eq!(args, ["containerd-shim-nvidia-v2", "-id", "c1"]);
        assert!(split(b"").is_empty());
    }
}
