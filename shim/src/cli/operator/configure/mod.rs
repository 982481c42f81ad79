//! `containerd-shim-nvidia-v2 configure containerd|docker|shim`: registers the runtime with
//! containerd (its TOML config, edited keeping comments and layout) or Docker (`daemon.json`),
//! and writes the shim's own config. Idempotent: a second run changes nothing and says so.
//! `--dry-run` prints the change as a diff; a real change keeps the original file as
//! `<file>.bak` (the first one: a later change never overwrites it) and replaces the file
//! atomically. A config that is a symlink is followed: its target is edited, the link kept.
//! Every file read is a regular file of at most 1 MiB, opened without blocking.

pub mod annotations;
pub mod containerd;
pub mod diff;
pub mod docker;
pub mod docker_host;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nvidia_shim_core::config::MAX_CONFIG_SIZE;
use nvidia_shim_core_host::regular_file;

use super::args::Args;

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 configure containerd [--config PATH] [--runtime-name NAME] [--set-as-default] [--config-path-option FILE] [--config-version 2|3] [--dry-run]
       containerd-shim-nvidia-v2 configure docker [--config PATH] [--runtime-name NAME] [--set-as-default] [--config-path-option FILE] [--docker-socket PATH] [--hook-dir DIR] [--cdi-hook-path PATH] [--dry-run]
       containerd-shim-nvidia-v2 configure shim [--output PATH] [--profile default|kubernetes] [--force] [--dry-run]

  containerd: adds the runtime (runtime_type io.containerd.nvidia.v2) to containerd's config
    --config PATH             default /etc/containerd/config.toml (created when absent)
    --runtime-name NAME       the CRI handler (RuntimeClass handler); default nvidia
    --set-as-default          make it the CRI plugin's default runtime
    --config-path-option FILE the shim config sent as ConfigPath; default /etc/containerd-shim-nvidia/config.toml;
                              none: no options (the shim reads that default; containerd 2.x's
                              hostUsers: false pods need a handler without options)
    --config-version 2|3      the version of a new file; default from `containerd --version`
  docker: adds a runtimes entry with runtimeType to daemon.json (default /etc/docker/daemon.json);
    refuses a Docker older than 23 (it cannot run shim v2 runtimes), and links this binary as
    nvidia-container-runtime-hook (what `docker run --gpus` needs on dockerd's PATH) and as
    nvidia-cdi-hook (what the toolkit's CDI specs call) where no program of that name is
    --docker-socket PATH      the dockerd to check; default /run/docker.sock
    --hook-dir DIR            where nvidia-container-runtime-hook is linked; default /usr/local/bin
    --cdi-hook-path PATH      where nvidia-cdi-hook is linked; default /usr/bin/nvidia-cdi-hook
  shim: writes the shim's config (default /etc/containerd-shim-nvidia/config.toml):
    --profile default         every key at its default, documented
    --profile kubernetes      the isolation profile: only device-plugin requests count
    --force                   replace a file that differs
  --dry-run                   print the change as a diff and write nothing

Restart containerd (or Docker) afterwards.";

/// The shim configs `configure shim` writes.
const SHIM_DEFAULT: &str = include_str!("../../../../../deploy/shim-config.toml");
const SHIM_KUBERNETES: &str = include_str!("../../../../../deploy/kubernetes/shim-config.toml");

/// Runs `configure` with `args` (after the command word).
pub fn run(args: &[String]) -> Result<(), String> {
    let (target, rest) = args
        .split_first()
        .ok_or_else(|| "containerd, docker or shim?".to_owned())?;
    match target.as_str() {
        "containerd" => configure_containerd(rest),
        "docker" => configure_docker(rest),
        "shim" => configure_shim(rest),
        other => Err(format!(
            "unknown target {other:?}: containerd, docker or shim"
        )),
    }
}

const EDIT_FLAGS: [&str; 4] = [
    "--config",
    "--runtime-name",
    "--config-path-option",
    "--config-version",
];

fn no_positional(args: &Args) -> Result<(), String> {
    match args.positional.first() {
        Some(extra) => Err(format!("unexpected argument {extra:?}")),
        None => Ok(()),
    }
}

/// The file's text, `None` when it does not exist; a file that is not a regular file of at
/// most [`MAX_CONFIG_SIZE`] bytes is refused, naming it and the cause.
fn read_existing(path: &Path) -> Result<Option<String>, String> {
    match regular_file::read_to_string(path, MAX_CONFIG_SIZE) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// The config version of a new containerd config: 3 when the installed containerd is 2.x.
fn installed_containerd_version() -> i64 {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "containerd github.com/containerd/containerd v1.6.20 ..." or "... 2.1.4 ..."
    let major = text
        .split_whitespace()
        .filter_map(|w| {
            w.trim_start_matches('v')
                .split('.')
                .next()?
                .parse::<u32>()
                .ok()
        })
        .next();
    if major.is_some_and(|m| m >= 2) {
        3
    } else {
        2
    }
}

fn configure_containerd(args: &[String]) -> Result<(), String> {
    let args = Args::parse(args, &EDIT_FLAGS, &["--set-as-default", "--dry-run"])?;
    no_positional(&args)?;
    let path = PathBuf::from(
        args.value("--config")
            .unwrap_or("/etc/containerd/config.toml"),
    );
    let version_for_new = match args.value("--config-version") {
        Some("2") => 2,
        Some("3") => 3,
        Some(other) => return Err(format!("--config-version {other:?}: 2 or 3")),
        None => installed_containerd_version(),
    };
    let opts = containerd::Options {
        runtime_name: args.value("--runtime-name").unwrap_or("nvidia").to_owned(),
        set_as_default: args.has("--set-as-default"),
        config_path_option: args
            .value("--config-path-option")
            .unwrap_or(containerd::DEFAULT_SHIM_CONFIG)
            .to_owned(),
        version_for_new,
    };
    let old = read_existing(&path)?;
    let new = containerd::configure(old.as_deref().unwrap_or(""), &opts)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for note in &new.notes {
        println!("{}: {note}", path.display());
    }
    write_change(
        &path,
        old.as_deref(),
        &new.text,
        args.has("--dry-run"),
        0o644,
    )?;
    Ok(())
}

fn configure_docker(args: &[String]) -> Result<(), String> {
    let args = Args::parse(
        args,
        &[
            EDIT_FLAGS[0],
            EDIT_FLAGS[1],
            EDIT_FLAGS[2],
            "--docker-socket",
            "--hook-dir",
            "--cdi-hook-path",
        ],
        &["--set-as-default", "--dry-run"],
    )?;
    no_positional(&args)?;
    let dry_run = args.has("--dry-run");
    let dockerd = docker_host::Dockerd::find(Path::new(
        args.value("--docker-socket")
            .unwrap_or(docker_host::DOCKER_SOCKET),
    ));
    match dockerd.version() {
        Some(v) if !v.runs_shim_runtimes() => {
            return Err(format!(
                "{} is Docker {v}, which cannot run containerd shim v2 runtimes (runtimeType needs Docker {}.{} or later): upgrade Docker, or use containerd directly",
                dockerd.describe(),
                docker_host::MIN_DOCKER.0,
                docker_host::MIN_DOCKER.1
            ))
        }
        Some(_) => {}
        None => println!(
            "note: no dockerd version found ({}); Docker 23 or later is needed",
            dockerd.describe()
        ),
    }
    let path = PathBuf::from(args.value("--config").unwrap_or("/etc/docker/daemon.json"));
    let old = read_existing(&path)?;
    let new = docker::configure(
        old.as_deref().unwrap_or(""),
        args.value("--runtime-name").unwrap_or("nvidia"),
        args.value("--config-path-option")
            .unwrap_or(containerd::DEFAULT_SHIM_CONFIG),
        args.has("--set-as-default"),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    write_change(&path, old.as_deref(), &new, dry_run, 0o644)?;
    link_docker_hooks(&args, &dockerd, dry_run)
}

/// Links this binary as the programs Docker's GPU paths call, where none is (see
/// [`docker_host`]).
fn link_docker_hooks(
    args: &Args,
    dockerd: &docker_host::Dockerd,
    dry_run: bool,
) -> Result<(), String> {
    let binary = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find this binary: {e}"))?;
    let hook_dir = Path::new(args.value("--hook-dir").unwrap_or(docker_host::HOOK_DIR));
    let legacy = docker_host::ensure_link(
        dockerd.look_path(docker_host::LEGACY_HOOK),
        &hook_dir.join(docker_host::LEGACY_HOOK),
        &binary,
        dry_run,
    )
    .map_err(|e| format!("cannot link {}: {e}", docker_host::LEGACY_HOOK))?;
    println!(
        "{}",
        legacy.describe(
            docker_host::LEGACY_HOOK,
            &binary,
            "`docker run --gpus`; restart Docker so that it finds it"
        )
    );
    if matches!(
        legacy,
        docker_host::HookLink::Made(_) | docker_host::HookLink::WouldMake(_)
    ) && !dockerd.has_on_path(hook_dir)
    {
        println!(
            "warning: {} is not on the PATH of {}: `docker run --gpus` will not find {}",
            hook_dir.display(),
            dockerd.describe(),
            docker_host::LEGACY_HOOK
        );
    }
    let cdi = docker_host::ensure_link(
        None,
        Path::new(
            args.value("--cdi-hook-path")
                .unwrap_or(docker_host::CDI_HOOK_PATH),
        ),
        &binary,
        dry_run,
    )
    .map_err(|e| format!("cannot link {}: {e}", docker_host::CDI_HOOK))?;
    println!(
        "{}",
        cdi.describe(
            docker_host::CDI_HOOK,
            &binary,
            "the hooks of the NVIDIA Container Toolkit's CDI specs"
        )
    );
    Ok(())
}

fn configure_shim(args: &[String]) -> Result<(), String> {
    let args = Args::parse(args, &["--output", "--profile"], &["--force", "--dry-run"])?;
    no_positional(&args)?;
    let path = PathBuf::from(
        args.value("--output")
            .unwrap_or(containerd::DEFAULT_SHIM_CONFIG),
    );
    let text = match args.value("--profile").unwrap_or("default") {
        "default" => SHIM_DEFAULT,
        "kubernetes" => SHIM_KUBERNETES,
        other => return Err(format!("--profile {other:?}: default or kubernetes")),
    };
    // What is written must load.
    nvidia_shim_core::Config::parse(text, &path).map_err(|e| e.to_string())?;
    let old = read_existing(&path)?;
    if let Some(old) = &old {
        if old != text && !args.has("--force") && !args.has("--dry-run") {
            return Err(format!(
                "{} exists and differs; --dry-run shows how, --force replaces it (keeping the original as .bak)",
                path.display()
            ));
        }
    }
    write_change(&path, old.as_deref(), text, args.has("--dry-run"), 0o644)
}

/// The file a write to `path` must replace: `path` itself, or the file its symlinks lead to
/// (relative links resolved from the link's directory), existing or not.
fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut file = path.to_owned();
    // As the kernel's limit on links followed in one lookup.
    for _ in 0..40 {
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&file)?;
                file = match file.parent() {
                    Some(dir) if to.is_relative() => dir.join(to),
                    _ => to,
                };
            }
            _ => return Ok(file),
        }
    }
    Err(std::io::Error::from_raw_os_error(libc::ELOOP))
}

/// Writes `bytes` to a new file in `dir`, with `mode` and `owner`, flushed to disk; renamed into
/// place by the caller.
fn staged(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> std::io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".new")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    let file = tmp.as_file();
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(file, Some(uid), Some(gid))?;
    }
    // After the chown, which clears set-id bits.
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    Ok(tmp)
}

/// Writes `new` to `path` unless it holds it already. A symlink at `path` is followed and its
/// target written (the link stays). The new text is written beside the target and renamed over
/// it, keeping the old file's mode and owner (else `mode`, ours). The original file is kept as
/// `<target>.bak` the first time; a later change leaves that backup alone. With `dry_run`,
/// prints the diff instead.
fn write_change(
    path: &Path,
    old: Option<&str>,
    new: &str,
    dry_run: bool,
    mode: u32,
) -> Result<(), String> {
    let shown = path.display();
    if old == Some(new) {
        println!("{shown}: already configured; nothing changed");
        return Ok(());
    }
    if dry_run {
        print!(
            "{}",
            diff::unified(&shown.to_string(), old.unwrap_or(""), new)
        );
        return Ok(());
    }
    let err = |what: &str, e: std::io::Error| format!("cannot {what} {shown}: {e}");
    let target = follow_links(path).map_err(|e| err("follow the link", e))?;
    let linked = target != path;
    let name = target
        .file_name()
        .map_or("config".into(), |n| n.to_string_lossy().into_owned());
    let dir = target
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| err("create the directory of", e))?;
    // Named without the `..` a relative link leaves, in the output.
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let target = dir.join(&name);
    let (mode, owner) = match std::fs::metadata(&target) {
        Ok(m) => (m.permissions().mode() & 0o7777, Some((m.uid(), m.gid()))),
        Err(_) => (mode, None),
    };
    let backup = match old {
        Some(old) => {
            let bak = dir.join(format!("{name}.bak"));
            // Only when there is none: an earlier run's backup holds the original.
            let kept = staged(&dir, &name, old.as_bytes(), mode, owner)
                .and_then(|t| t.persist_noclobber(&bak).map_err(|e| e.error));
            match kept {
                Ok(_) => Some((bak, true)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Some((bak, false)),
                Err(e) => return Err(err("back up", e)),
            }
        }
        None => None,
    };
    staged(&dir, &name, new.as_bytes(), mode, owner)
        .and_then(|t| t.persist(&target).map_err(|e| e.error))
        .map_err(|e| err("write", e))?;
    // The rename itself on disk.
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync the directory of", e))?;
    let what = if linked {
        format!("{shown} (a link to {})", target.display())
    } else {
        format!("{shown}")
    };
    match backup {
        Some((bak, true)) => println!(
            "{what}: configured; the original is kept as {}",
            bak.display()
        ),
        Some((bak, false)) => println!(
            "{what}: configured; the original stays in {} (kept by the first change)",
            bak.display()
        ),
        None => println!("{what}: written"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Runs one change as `configure` does: the file read, then written.
    fn change(path: &Path, new: &str) {
        let old = read_existing(path).unwrap();
        write_change(path, old.as_deref(), new, false, 0o644).unwrap();
    }

    #[test]
    fn a_symlinked_config_is_edited_through_its_link_and_the_first_backup_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (etc, real_dir) = (dir.path().join("etc"), dir.path().join("real"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&real_dir).unwrap();
        let real = real_dir.join("config.toml");
        std::fs::write(&real, "original\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&real, Some(4321), Some(4322)).unwrap();
        }
        let link = etc.join("config.toml");
        symlink("../real/config.toml", &link).unwrap();

        change(&link, "first\n");
        change(&link, "second\n");
        // The link stays a link to the same target, which holds the change.
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../real/config.toml")
        );
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "second\n");
        assert_eq!(
            std::fs::metadata(&real).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        if root {
            let m = std::fs::metadata(&real).unwrap();
            assert_eq!((m.uid(), m.gid()), (4321, 4322), "owner kept");
        }
        // The backup beside the target is the original, not the first change.
        let bak = real_dir.join("config.toml.bak");
        assert_eq!(std::fs::read_to_string(&bak).unwrap(), "original\n");
        assert_eq!(
            std::fs::metadata(&bak).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        // Nothing else was left: no staged file, nothing beside the link.
        assert_eq!(names_in(&real_dir), ["config.toml", "config.toml.bak"]);
        assert_eq!(names_in(&etc), ["config.toml"]);
    }

    #[test]
    fn a_dangling_link_gets_its_target_and_a_new_file_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("daemon.json");
        symlink(dir.path().join("sub/real.json"), &link).unwrap();
        change(&link, "{}\n");
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/real.json")).unwrap(),
            "{}\n"
        );
        assert_eq!(names_in(&dir.path().join("sub")), ["real.json"]);
        // A loop of links is refused, naming the file.
        let a = dir.path().join("a.toml");
        symlink(dir.path().join("b.toml"), &a).unwrap();
        symlink(&a, dir.path().join("b.toml")).unwrap();
        let err = write_change(&a, None, "x", false, 0o644).unwrap_err();
        assert!(err.contains("a.toml") && err.contains("link"), "{err}");
    }

    #[test]
    fn only_small_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_existing(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(err, "/dev/zero is a device, not a regular file");
        let err = read_existing(dir.path()).unwrap_err();
        assert!(err.ends_with("is a directory, not a regular file"), "{err}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; (MAX_CONFIG_SIZE + 1) as usize]).unwrap();
        let err = read_existing(&big).unwrap_err();
        assert!(
            err.ends_with("big.toml is 1048577 bytes, more than the 1048576 it may have"),
            "{err}"
        );
        assert_eq!(read_existing(&dir.path().join("none.toml")).unwrap(), None);
    }
}
