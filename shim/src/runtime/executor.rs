//! The last step of every container process libcontainer starts: apply what libcontainer 0.7
//! leaves out, then exec the payload as runc does.
//!
//! - **seccomp for exec'd processes**: libcontainer's tenant builder rebuilds the spec's Linux
//!   section for an exec and drops its seccomp profile, so `ctr task exec` and `kubectl exec`
//!   escaped the container's filter. The executor installs the container's profile itself.
//!   Loading a filter needs `no_new_privileges` or `CAP_SYS_ADMIN`; without the former, the
//!   process is given `CAP_SYS_ADMIN` in its effective and permitted sets until the filter is
//!   loaded, then its capability sets are set to exactly what its spec asks, as runc does
//!   (runc, too, loads the filter before its final `capset` when `noNewPrivileges` is off).
//! - **the program's path**: libcontainer's default executor requires `PATH` in the process's
//!   environment even for an absolute `args[0]`. As runc does, an `args[0]` with a `/` is run
//!   as it is, and another is looked up in the process's `PATH` or, without one, runc's default.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Spec};
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// runc's `PATH` for a process whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to apply before the payload runs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ShimExecutor {
    /// The container's seccomp profile, for a process libcontainer does not give it to.
    pub seccomp: Option<LinuxSeccomp>,
    /// The capability sets the process must end with, when it was given `CAP_SYS_ADMIN` to
    /// load the filter.
    pub restore_caps: Option<LinuxCapabilities>,
}

/// The process's environment value of `key`.
fn env_value<'a>(spec: &'a Spec, key: &str) -> Option<&'a str> {
    spec.process()
        .as_ref()?
        .env()
        .as_ref()?
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix(key)?.strip_prefix('='))
}

/// Where `program` is run from: itself when it has a `/`, else the first executable regular
/// file of that name in `path`'s directories (relative ones skipped, as Go's `LookPath`).
pub fn resolve(program: &str, path: &str) -> Result<PathBuf, String> {
    if program.is_empty() {
        return Err("empty program name".to_owned());
    }
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| format!("exec: {program:?}: executable file not found in $PATH"))
}

fn program_of(spec: &Spec) -> Result<(PathBuf, Vec<CString>), String> {
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().as_ref())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| "the process has no args".to_owned())?;
    let path = env_value(spec, "PATH").unwrap_or(DEFAULT_PATH);
    let program = resolve(&args[0], path)?;
    let argv = args
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| format!("argument {a:?} holds a NUL")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((program, argv))
}

impl Executor for ShimExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let fail = |what: String| ExecutorError::Execution(what.into());
        if let Some(seccomp) = &self.seccomp {
            let notify = libcontainer::seccomp::initialize_seccomp(seccomp)
                .map_err(|e| fail(format!("load the container's seccomp profile: {e}")))?;
            if notify.is_some() {
                return Err(fail(
                    "the container's seccomp profile notifies a listener, which exec does not support"
                        .to_owned(),
                ));
            }
        }
        if let Some(caps) = &self.restore_caps {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .map_err(|e| fail(format!("set the process's capabilities: {e}")))?;
        }
        let (program, argv) = program_of(spec).map_err(fail)?;
        let c_program = CString::new(program.as_os_str().as_encoded_bytes())
            .map_err(|_| fail(format!("program {} holds a NUL", program.display())))?;
        // execv: the environment is already the process's (set by `setup_envs`).
        let err = nix::unistd::execv(&c_program, &argv).unwrap_err();
        // As runc's init does when its final exec fails (too big an environment, a script
        // without an interpreter): the reason on the process's own stderr, exit status 1.
        let message = format!("exec {}: {}\n", program.display(), go_words(err));
        let _ = nix::unistd::write(std::io::stderr(), message.as_bytes());
        // SAFETY: ends this forked, single-threaded process at once, as an exec would have
        // replaced it; nothing of it needs to run any more.
        unsafe { libc::_exit(1) }
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        let (program, _) = program_of(spec).map_err(ExecutorValidationError::ArgValidationError)?;
        // As runc's `runc init` does before it reports the container created: a program that
        // cannot be run fails create with the reason, not the start with exit status 255.
        check_runnable(&program).map_err(ExecutorValidationError::ArgValidationError)
    }
}

/// An exec error as Go's `syscall.Errno` words it (runc's messages): the C library's text
/// with a lower-case first letter.
fn go_words(err: nix::errno::Errno) -> String {
    let desc = err.desc();
    let mut chars = desc.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_lowercase().chain(chars).collect()
    })
}

/// Whether `program` (already resolved) can be executed, with runc's words when not: Go's
/// `exec.LookPath` says `permission denied` for a directory, a file without an execute bit
/// and one on a `noexec` mount alike.
fn check_runnable(program: &Path) -> Result<(), String> {
    let name = program.display().to_string();
    let meta = program
        .metadata()
        .map_err(|e| format!("exec: {name:?}: stat {name}: {e}"))?;
    let executable = !meta.is_dir()
        && meta.permissions().mode() & 0o111 != 0
        && rustix::fs::accessat(
            rustix::fs::CWD,
            program,
            rustix::fs::Access::EXEC_OK,
            rustix::fs::AtFlags::EACCESS,
        )
        .is_ok();
    if executable {
        Ok(())
    } else {
        Err(format!("exec: {name:?}: permission denied"))
    }
}

/// How an exec'd process of a container whose seccomp profile is `seccomp` is run: the
/// process to give libcontainer and the executor that loads the profile.
pub fn for_exec(
    seccomp: Option<LinuxSeccomp>,
    process: libcontainer::oci_spec::runtime::Process,
) -> (libcontainer::oci_spec::runtime::Process, ShimExecutor) {
    let (process, restore_caps) = with_filter_privilege(process, seccomp.as_ref());
    (
        process,
        ShimExecutor {
            seccomp,
            restore_caps,
        },
    )
}

/// The process `process` (an exec's OCI process) with `CAP_SYS_ADMIN` added to its effective
/// and permitted sets when loading `seccomp` needs it (no `no_new_privileges`, and the process
/// lacks it); returns the process to run and the capability sets to restore afterwards.
pub fn with_filter_privilege(
    mut process: libcontainer::oci_spec::runtime::Process,
    seccomp: Option<&LinuxSeccomp>,
) -> (
    libcontainer::oci_spec::runtime::Process,
    Option<LinuxCapabilities>,
) {
    if seccomp.is_none() || process.no_new_privileges() == Some(true) {
        return (process, None);
    }
    let Some(caps) = process.capabilities().clone() else {
        return (process, None);
    };
    let has = |set: &Option<std::collections::HashSet<Capability>>| {
        set.as_ref()
            .is_some_and(|s| s.contains(&Capability::SysAdmin))
    };
    if has(caps.effective()) && has(caps.permitted()) {
        return (process, None);
    }
    let mut raised = caps.clone();
    let add = |set: Option<std::collections::HashSet<Capability>>| {
        let mut s = set.unwrap_or_default();
        s.insert(Capability::SysAdmin);
        Some(s)
    };
    raised.set_effective(add(caps.effective().clone()));
    raised.set_permitted(add(caps.permitted().clone()));
    process.set_capabilities(Some(raised));
    (process, Some(caps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_resolve_as_runc_resolves_them() {
        assert_eq!(resolve("/pause", "").unwrap(), Path::new("/pause"));
        assert_eq!(resolve("./run.sh", "").unwrap(), Path::new("./run.sh"));
        assert_eq!(
            resolve("sh", "/nonexistent:/bin").unwrap(),
            Path::new("/bin/sh")
        );
        let err = resolve("no-such-program", DEFAULT_PATH).unwrap_err();
        assert!(err.contains("executable file not found in $PATH"), "{err}");
        assert!(resolve("", DEFAULT_PATH).is_err());
        // Relative PATH entries are not searched.
        assert!(resolve("sh", "bin").is_err());
    }

    #[test]
    fn programs_that_cannot_run_are_refused_in_runc_words() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("data");
        std::fs::write(&plain, "x").unwrap();
        let err = check_runnable(&plain).unwrap_err();
        assert_eq!(
            err,
            format!("exec: {:?}: permission denied", plain.display().to_string())
        );
        assert!(check_runnable(dir.path())
            .unwrap_err()
            .ends_with("permission denied"));
        let missing = dir.path().join("missing");
        assert!(check_runnable(&missing)
            .unwrap_err()
            .contains("No such file or directory"));
        assert!(check_runnable(Path::new("/bin/sh")).is_ok());
    }

    #[test]
    fn exec_errors_are_worded_as_runc_words_them() {
        assert_eq!(go_words(nix::errno::Errno::E2BIG), "argument list too long");
        assert_eq!(go_words(nix::errno::Errno::ENOEXEC), "exec format error");
    }

    #[test]
    fn the_filter_privilege_is_added_only_when_needed() {
        use libcontainer::oci_spec::runtime::{LinuxCapabilitiesBuilder, ProcessBuilder};
        let caps: std::collections::HashSet<Capability> =
            [Capability::Chown, Capability::Kill].into_iter().collect();
        let lc = LinuxCapabilitiesBuilder::default()
            .bounding(caps.clone())
            .effective(caps.clone())
            .permitted(caps.clone())
            .build()
            .unwrap();
        // oci-spec's default process sets noNewPrivileges; a filter needs no privilege then.
        let p = ProcessBuilder::default()
            .capabilities(lc.clone())
            .no_new_privileges(false)
            .build()
            .unwrap();
        let seccomp = LinuxSeccomp::default();
        let (raised, restore) = with_filter_privilege(p.clone(), Some(&seccomp));
        assert_eq!(restore.as_ref(), Some(&lc));
        let rc = raised.capabilities().clone().unwrap();
        assert!(rc
            .effective()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(rc
            .permitted()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        assert!(!rc
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::SysAdmin));
        // No filter, or no_new_privileges: nothing changes.
        assert!(with_filter_privilege(p.clone(), None).1.is_none());
        let mut nnp = p;
        nnp.set_no_new_privileges(Some(true));
        assert!(with_filter_privilege(nnp, Some(&seccomp)).1.is_none());
    }
}
