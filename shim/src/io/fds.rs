//! Placing descriptors at fixed numbers in a child between its fork and its exec (a logging
//! binary's fds 3, 4, 5; a zygote's socket and log): async-signal-safe, so it may run in a
//! child forked from the multi-threaded shim.

use std::os::fd::RawFd;

/// The most descriptors [`place`] moves at once.
pub const MAX_PLACED: usize = 8;

/// Moves `fds` (at most [`MAX_PLACED`]) onto `first`, `first + 1`, ... in this process,
/// without `FD_CLOEXEC`. All are first duplicated above every target, then moved, so that
/// moving one never overwrites another still to move. Only `fcntl` and `dup2`, and no
/// allocation: safe between a fork and an exec.
pub fn place(fds: &[RawFd], first: RawFd) -> std::io::Result<()> {
    if fds.len() > MAX_PLACED {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let above = (first + MAX_PLACED as RawFd).max(10);
    let mut high = [0 as RawFd; MAX_PLACED];
    for (h, fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl on a descriptor the caller holds; async-signal-safe.
        *h = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above) };
        if *h < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (target, h) in (first..).zip(&high[..fds.len()]) {
        // SAFETY: dup2 of a descriptor just made; it clears FD_CLOEXEC on the target.
        if unsafe { libc::dup2(*h, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn descriptors_land_on_their_targets_even_when_swapped() {
        let null = std::fs::File::open("/dev/null").unwrap();
        let status = std::fs::File::open("/proc/self/status").unwrap();
        let (null, status) = (null.as_raw_fd(), status.as_raw_fd());
        // SAFETY: the child only calls dup2, place, fcntl, readlink and _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: dup2 of descriptors this process holds: out of the way first (either
            // may be 3 or 4 already), then onto 3 and 4.
            unsafe {
                libc::dup2(status, 20);
                libc::dup2(null, 21);
                libc::dup2(20, 3);
                libc::dup2(21, 4);
            }
            // Swap them: 3 gets what 4 is, 4 what 3 is.
            let ok = place(&[4, 3], 3).is_ok()
                && std::fs::read_link("/proc/self/fd/3").is_ok_and(|p| p.ends_with("null"))
                && std::fs::read_link("/proc/self/fd/4").is_ok_and(|p| p.ends_with("status"))
                // SAFETY: F_GETFD on a descriptor this process holds.
                && unsafe { libc::fcntl(3, libc::F_GETFD) } & libc::FD_CLOEXEC == 0;
            // SAFETY: ends the forked child at once.
            unsafe { libc::_exit(i32::from(!ok)) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
