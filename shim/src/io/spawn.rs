//! Starting a program from the multi-threaded shim with descriptors at fixed numbers (a
//! logging binary's fds 3, 4 and 5; a zygote started afresh, its socket and the shim log on 3
//! and 4) and its standard descriptors on `/dev/null`, with a failed exec reported for sure.
//!
//! `std::process::Command` reports a failed exec through a pipe of its own whose number is
//! wherever the descriptor table had room; when another thread had just closed one of the
//! numbers a `pre_exec` placement then takes, the placement overwrote that pipe, and a program
//! that could not be executed was taken as started. Here the report goes through a pipe moved
//! above every placed number before anything is placed. Everything the child needs is made
//! before the fork; the child makes only async-signal-safe calls.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::unistd::Pid;

use crate::io::fds;

/// A program to start: its path, arguments and whole environment, as the C strings `execve`
/// takes.
#[derive(Debug)]
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Program {
    /// `path` with `args` (its own name first, as `argv[0]`), this process's environment
    /// plus `env` (which wins over a variable of the same name). A NUL byte in any of them is
    /// an error.
    pub fn new<A: AsRef<OsStr>>(
        path: &str,
        args: &[A],
        env: &[(&str, &str)],
    ) -> std::io::Result<Self> {
        let c = |s: Vec<u8>| c_string(s, "a NUL byte in the command");
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !env.iter().any(|(name, _)| k.as_os_str() == *name))
            .collect();
        vars.extend(env.iter().map(|(k, v)| (k.into(), v.into())));
        Ok(Self {
            path: c(path.as_bytes().to_vec())?,
            argv: std::iter::once(OsStr::new(path))
                .chain(args.iter().map(AsRef::as_ref))
                .map(|a| c(a.as_bytes().to_vec()))
                .collect::<std::io::Result<_>>()?,
            envp: vars
                .into_iter()
                .map(|(k, v)| {
                    let mut kv = k.into_vec();
                    kv.push(b'=');
                    kv.extend(v.into_vec());
                    c(kv)
                })
                .collect::<std::io::Result<_>>()?,
        })
    }

    /// The same program with `name` as its `argv[0]` (what `ps` shows) instead of its path.
    pub fn named(mut self, name: &str) -> std::io::Result<Self> {
        let name = c_string(name.as_bytes().to_vec(), "a NUL byte in the name")?;
        if let Some(first) = self.argv.first_mut() {
            *first = name;
        }
        Ok(self)
    }
}

/// `bytes` as a C string; `nul` is the error when they hold a NUL byte.
fn c_string(bytes: Vec<u8>, nul: &'static str) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, nul))
}

/// Starts `program` with `placed` on `first`, `first + 1`, ... (at most [`fds::MAX_PLACED`]),
/// standard input, output and error on `/dev/null`, no signal blocked and SIGPIPE at its
/// default. Returns its pid once it has been executed; a failed exec is its error. The
/// caller's reaper reaps the child, whether it ran or not.
pub fn spawn(program: &Program, placed: &[RawFd], first: RawFd) -> std::io::Result<Pid> {
    if placed.len() > fds::MAX_PLACED || first < 3 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let (report_r, report_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let argv = pointers(&program.argv);
    let envp = pointers(&program.envp);
    // SAFETY: the child makes only async-signal-safe calls (fcntl, dup2, sigprocmask, signal,
    // execve, write, _exit) on memory made before the fork, and never returns.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: see the fork above; every pointer is into `program`, `argv` and `envp`,
            // which live until the child execs or exits.
            unsafe {
                exec_child(
                    &program.path,
                    &argv,
                    &envp,
                    null.as_raw_fd(),
                    report_w.as_raw_fd(),
                    placed,
                    first,
                )
            }
        }
        -1 => Err(std::io::Error::last_os_error()),
        pid => {
            drop(report_w);
            // Until the pipe closes: at the exec, or when the child exits after its report.
            let mut report = Vec::with_capacity(4);
            std::fs::File::from(report_r)
                .take(5)
                .read_to_end(&mut report)?;
            match <[u8; 4]>::try_from(report.as_slice()) {
                Ok(errno) => Err(std::io::Error::from_raw_os_error(i32::from_ne_bytes(errno))),
                // The report pipe closed at the exec: the program runs.
                Err(_) if report.is_empty() => Ok(Pid::from_raw(pid)),
                Err(_) => Err(std::io::Error::other("a cut exec report from the child")),
            }
        }
    }
}

/// The NULL-terminated pointer array `execve` takes, made before the fork.
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The forked child: the report pipe above everything, the placement, stdio on `null`, the
/// signal state reset, the exec; a failure's errno goes to the report pipe.
///
/// # Safety
/// Only in a child just forked, with `argv` and `envp` NULL-terminated arrays of pointers
/// into live C strings. Never returns.
unsafe fn exec_child(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    null: RawFd,
    report: RawFd,
    placed: &[RawFd],
    first: RawFd,
) -> ! {
    // Above every number `place` writes to, and above its own temporary copies' floor.
    let above = first + fds::MAX_PLACED as RawFd + 8;
    let fail = |report: RawFd| -> ! {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        let bytes = errno.to_ne_bytes();
        // SAFETY: write of a local buffer to a descriptor this process holds, then _exit.
        unsafe {
            libc::write(report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    };
    // SAFETY: fcntl on descriptors this process holds.
    let report_high = unsafe { libc::fcntl(report, libc::F_DUPFD_CLOEXEC, above) };
    if report_high < 0 {
        fail(report);
    }
    // SAFETY: as above.
    let null_high = unsafe { libc::fcntl(null, libc::F_DUPFD_CLOEXEC, above) };
    if null_high < 0 {
        fail(report_high);
    }
    if fds::place(placed, first).is_err() {
        fail(report_high);
    }
    for target in 0..=2 {
        // SAFETY: dup2 of a descriptor this process holds onto a standard one.
        if unsafe { libc::dup2(null_high, target) } < 0 {
            fail(report_high);
        }
    }
    // SAFETY: resetting this process's own signal mask and SIGPIPE's disposition (the shim
    // ignores SIGPIPE; an ignored signal stays ignored across exec).
    unsafe {
        let mut none = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
    }
    fail(report_high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reap(pid: Pid) -> i32 {
        match nix::sys::wait::waitpid(pid, None).unwrap() {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_error_even_with_low_numbers_free() {
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("not-a-program");
        std::fs::write(&bogus, "neither ELF nor script\n").unwrap();
        std::fs::set_permissions(&bogus, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let third = std::fs::File::open("/dev/null").unwrap();
        let placed = [r.as_raw_fd(), w.as_raw_fd(), third.as_raw_fd()];
        let program = Program::new::<&str>(bogus.to_str().unwrap(), &[], &[]).unwrap();
        for _ in 0..20 {
            // The lowest free numbers now, which `spawn`'s own `/dev/null` and report pipe
            // take next: placing onto exactly those must not hide the failure.
            let probe: Vec<_> = (0..3)
                .map(|_| std::fs::File::open("/dev/null").unwrap())
                .collect();
            let first = probe.iter().map(AsRawFd::as_raw_fd).min().unwrap();
            drop(probe);
            let err = spawn(&program, &placed, first).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOEXEC), "{err}");
        }
        let missing = Program::new::<&str>("/nonexistent/program", &[], &[]).unwrap();
        let err = spawn(&missing, &[], 3).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    }

    #[test]
    fn the_program_gets_its_descriptors_arguments_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let file = std::fs::File::create(&out).unwrap();
        let script = r#"echo "$0 $1 $X $(readlink /proc/$$/fd/0) $(readlink /proc/$$/fd/2)" >&3"#;
        let program = Program::new(
            "/bin/sh",
            &["-c", script, "arg-zero", "one"],
            &[("X", "from-env")],
        )
        .unwrap();
        let pid = spawn(&program, &[file.as_raw_fd()], 3).unwrap();
        assert_eq!(reap(pid), 0);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "arg-zero one from-env /dev/null /dev/null\n"
        );
    }

    #[test]
    fn a_nul_byte_is_refused() {
        assert!(Program::new("/bin/true", &["a\0b"], &[]).is_err());
        let named = Program::new::<&str>("/bin/true", &[], &[]).unwrap();
        assert!(named.named("x\0y").is_err());
    }
}
