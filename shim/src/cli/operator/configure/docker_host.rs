//! The Docker daemon a `configure docker` or `doctor` run is about, and what Docker's GPU paths
//! need of the node:
//!
//! - Docker runs containerd shim v2 runtimes (`runtimeType` in `daemon.json`) from 23 on; the
//!   `docker.io` 20.10 of Debian bookworm cannot.
//! - `docker run --gpus` works only when `dockerd` found an executable named
//!   `nvidia-container-runtime-hook` on its `PATH` at start (`exec.LookPath`); it then adds it
//!   as a prestart hook, which this runtime drops (it injects the GPUs itself) and which, run
//!   under any other runtime, fails saying so. This binary answers to that name.
//! - CDI specs written by `nvidia-ctk cdi generate` call `/usr/bin/nvidia-cdi-hook`; this
//!   binary answers to that name too (`hook` subcommands).
//!
//! A link is made only where no program of that name is found: the NVIDIA Container Toolkit's
//! own is never replaced.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::cli::operator::containerd_process::{self, ContainerdProcess};

/// The program `docker run --gpus` needs on dockerd's `PATH`.
pub const LEGACY_HOOK: &str = "nvidia-container-runtime-hook";
/// The program CDI specs of the NVIDIA Container Toolkit call.
pub const CDI_HOOK: &str = "nvidia-cdi-hook";
/// Where the toolkit installs `nvidia-cdi-hook`, which its generated specs name.
pub const CDI_HOOK_PATH: &str = "/usr/bin/nvidia-cdi-hook";
/// Where a missing `nvidia-container-runtime-hook` is linked by default: on every `PATH`.
pub const HOOK_DIR: &str = "/usr/local/bin";
/// Docker's default API socket.
pub const DOCKER_SOCKET: &str = "/run/docker.sock";
/// The oldest Docker that runs shim v2 runtimes by `runtimeType`.
pub const MIN_DOCKER: (u32, u32) = (23, 0);
/// The `PATH` of a service systemd starts, for a Docker that is not running.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Docker daemon: the one listening on its socket, else the `dockerd` on the `PATH` (not
/// running).
#[derive(Debug, Clone)]
pub struct Dockerd {
    /// The running daemon, if one listens on the socket.
    pub process: Option<ContainerdProcess>,
    /// Its binary, reachable from here.
    pub exe: Option<PathBuf>,
}

impl Dockerd {
    /// Finds the daemon listening on `socket`, else the `dockerd` on the `PATH`.
    pub fn find(socket: &Path) -> Self {
        let process = containerd_process::listening_on(socket).ok().flatten();
        let exe = match &process {
            Some(p) => p.exe.as_deref().map(|e| p.reached_from_here(e)),
            None => look_path(&root_process(), "dockerd"),
        };
        Self { process, exe }
    }

    /// How the daemon is named in messages.
    pub fn describe(&self) -> String {
        match (&self.process, &self.exe) {
            (Some(p), _) => format!("dockerd pid {}", p.pid),
            (None, Some(exe)) => format!("{} (not running)", exe.display()),
            (None, None) => "dockerd (none running, none on this PATH)".to_owned(),
        }
    }

    /// Its version (`dockerd --version`), when it can be run.
    pub fn version(&self) -> Option<DockerVersion> {
        let exe = self.exe.as_ref()?;
        let out = std::process::Command::new(exe)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        DockerVersion::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Where `exec.LookPath(name)` in the daemon finds `name` (as it names it), if anywhere.
    pub fn look_path(&self, name: &str) -> Option<PathBuf> {
        let process = self.process.clone().unwrap_or_else(root_process);
        look_path(&process, name).map(|p| {
            // As the daemon names it, not through /proc/<pid>/root.
            p.strip_prefix(&process.root)
                .map_or_else(|_| p.clone(), |rel| Path::new("/").join(rel))
        })
    }

    /// Whether `dir` is on the daemon's `PATH`.
    pub fn has_on_path(&self, dir: &Path) -> bool {
        let process = self.process.clone().unwrap_or_else(root_process);
        let found = path_dirs(&process).any(|d| d == dir);
        found
    }
}

/// A process standing for a daemon that is not running: this root, and the `PATH` the
/// operator runs this command with (the default one without).
fn root_process() -> ContainerdProcess {
    ContainerdProcess {
        pid: 0,
        root: PathBuf::from("/"),
        cwd: None,
        path: Some(std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())),
        exe: None,
    }
}

/// The absolute directories of `process`'s `PATH`, in order (Go's `LookPath` skips relative
/// ones since Go 1.19).
fn path_dirs(process: &ContainerdProcess) -> impl Iterator<Item = &Path> {
    process
        .path
        .iter()
        .flat_map(|p| p.split(':'))
        .map(Path::new)
        .filter(|d| d.is_absolute())
}

/// Go's `exec.LookPath(name)` in `process`, reached from here.
fn look_path(process: &ContainerdProcess, name: &str) -> Option<PathBuf> {
    path_dirs(process)
        .map(|d| process.reached_from_here(&d.join(name)))
        .find(|p| executable(p))
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A Docker version (`Docker version 26.1.5+dfsg1, build a72d7cd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DockerVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
}

impl DockerVersion {
    /// Reads `dockerd --version`'s line.
    pub fn parse(text: &str) -> Option<Self> {
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "version")
            .nth(1)?;
        let mut parts = word.trim_end_matches(',').split(['.', '+', '-']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(Self { major, minor })
    }

    /// Whether it runs containerd shim v2 runtimes by `runtimeType`.
    pub fn runs_shim_runtimes(self) -> bool {
        (self.major, self.minor) >= MIN_DOCKER
    }
}

impl std::fmt::Display for DockerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What [`ensure_link`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookLink {
    /// A link to this binary was made there.
    Made(PathBuf),
    /// It would be made there (dry run).
    WouldMake(PathBuf),
    /// A program of that name is there already: this binary (`true`) or another (the
    /// toolkit's), which is left alone.
    Present(PathBuf, bool),
}

/// Makes `at` a symbolic link to `binary` unless `existing` (a program of that name already
/// found) or a file at `at` is there. The link is relative (`../local/bin/...`), so it holds
/// when the host's root is mounted elsewhere (the installer's `--host-root`).
pub fn ensure_link(
    existing: Option<PathBuf>,
    at: &Path,
    binary: &Path,
    dry_run: bool,
) -> std::io::Result<HookLink> {
    let found = existing.or_else(|| std::fs::symlink_metadata(at).is_ok().then(|| at.to_owned()));
    if let Some(found) = found {
        let ours = match (std::fs::canonicalize(&found), std::fs::canonicalize(binary)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        return Ok(HookLink::Present(found, ours));
    }
    if dry_run {
        return Ok(HookLink::WouldMake(at.to_owned()));
    }
    let dir = at.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let target = relative_to(
        &std::fs::canonicalize(dir)?,
        &std::fs::canonicalize(binary)?,
    );
    std::os::unix::fs::symlink(target, at)?;
    Ok(HookLink::Made(at.to_owned()))
}

/// The path of `target` seen from directory `dir`, both absolute and canonical.
fn relative_to(dir: &Path, target: &Path) -> PathBuf {
    let (mut d, mut t) = (dir.components().peekable(), target.components().peekable());
    while let (Some(a), Some(b)) = (d.peek(), t.peek()) {
        if a != b {
            break;
        }
        d.next();
        t.next();
    }
    d.map(|_| std::path::Component::ParentDir)
        .chain(t)
        .collect()
}

impl HookLink {
    /// One line for the operator: `name` and what it is for.
    pub fn describe(&self, name: &str, binary: &Path, purpose: &str) -> String {
        match self {
            Self::Made(at) => format!(
                "{name}: linked {} -> {} ({purpose})",
                at.display(),
                binary.display()
            ),
            Self::WouldMake(at) => format!(
                "{name}: would link {} -> {} ({purpose})",
                at.display(),
                binary.display()
            ),
            Self::Present(at, true) => format!("{name}: {} is this runtime already", at.display()),
            Self::Present(at, false) => format!(
                "{name}: {} is another program (the NVIDIA Container Toolkit's?); left as it is",
                at.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_versions_are_read_from_dockerd() {
        let v = DockerVersion::parse("Docker version 26.1.5+dfsg1, build a72d7cd\n").unwrap();
        assert_eq!((v.major, v.minor), (26, 1));
        assert!(v.runs_shim_runtimes());
        let old = DockerVersion::parse("Docker version 20.10.24+dfsg1, build 297e128").unwrap();
        assert!(!old.runs_shim_runtimes());
        assert_eq!(old.to_string(), "20.10");
        assert!(DockerVersion::parse("dockerd: command not found").is_none());
    }

    #[test]
    fn a_link_is_made_only_where_no_program_of_that_name_is() {
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("containerd-shim-nvidia-v2");
        std::fs::write(&binary, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        let at = dir.path().join("bin").join(LEGACY_HOOK);
        assert_eq!(
            ensure_link(None, &at, &binary, true).unwrap(),
            HookLink::WouldMake(at.clone())
        );
        assert!(!at.exists());
        assert_eq!(
            ensure_link(None, &at, &binary, false).unwrap(),
            HookLink::Made(at.clone())
        );
        assert_eq!(
            std::fs::read_link(&at).unwrap(),
            Path::new("../containerd-shim-nvidia-v2")
        );
        assert_eq!(
            std::fs::canonicalize(&at).unwrap(),
            binary.canonicalize().unwrap()
        );
        assert_eq!(
            ensure_link(None, &at, &binary, false).unwrap(),
            HookLink::Present(at.clone(), true)
        );
        // The toolkit's program, found elsewhere on the PATH, is left alone.
        let toolkit = dir.path().join("toolkit-hook");
        std::fs::write(&toolkit, "#!/bin/sh\n").unwrap();
        let other = dir.path().join("other").join(LEGACY_HOOK);
        assert_eq!(
            ensure_link(Some(toolkit.clone()), &other, &binary, false).unwrap(),
            HookLink::Present(toolkit, false)
        );
        assert!(!other.exists());
    }

    #[test]
    fn links_are_relative_to_their_directory() {
        for (dir, target, rel) in [
            ("/usr/local/bin", "/usr/local/bin/shim", "shim"),
            ("/usr/bin", "/usr/local/bin/shim", "../local/bin/shim"),
            (
                "/host/usr/bin",
                "/host/usr/local/bin/shim",
                "../local/bin/shim",
            ),
            ("/a/b", "/c", "../../c"),
        ] {
            assert_eq!(
                relative_to(Path::new(dir), Path::new(target)),
                Path::new(rel)
            );
        }
    }

    #[test]
    fn programs_are_looked_up_as_go_looks_them_up() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let hook = bin.join(LEGACY_HOOK);
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        let process = ContainerdProcess {
            pid: 0,
            root: PathBuf::from("/"),
            cwd: Some(dir.path().to_owned()),
            path: Some(format!("bin:{}", bin.display())),
            exe: None,
        };
        // Not executable yet; a relative PATH entry is never searched.
        assert_eq!(look_path(&process, LEGACY_HOOK), None);
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(look_path(&process, LEGACY_HOOK), Some(hook));
    }
}
