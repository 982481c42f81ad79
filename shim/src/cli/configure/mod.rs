//! `containerd-shim-nvidia-v2 configure containerd|docker|shim`: registers the runtime with
//! containerd (its TOML config, edited keeping comments and layout) or Docker (`daemon.json`),
//! and writes the shim's own config. Idempotent: a second run changes nothing and says so.
//! `--dry-run` prints the change as a diff; a real change keeps the old file as `<file>.bak`
//! and replaces the file atomically.

pub mod annotations;
pub mod containerd;
pub mod diff;
pub mod docker;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::args::Args;

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 configure containerd [--config PATH] [--runtime-name NAME] [--set-as-default] [--config-path-option FILE] [--config-version 2|3] [--dry-run]
       containerd-shim-nvidia-v2 configure docker [--config PATH] [--runtime-name NAME] [--set-as-default] [--config-path-option FILE] [--dry-run]
       containerd-shim-nvidia-v2 configure shim [--output PATH] [--profile default|kubernetes] [--force] [--dry-run]

  containerd: adds the runtime (runtime_type io.containerd.nvidia.v2) to containerd's config
    --config PATH             default /etc/containerd/config.toml (created when absent)
    --runtime-name NAME       the CRI handler (RuntimeClass handler); default nvidia
    --set-as-default          make it the CRI plugin's default runtime
    --config-path-option FILE the shim config sent as ConfigPath; default /etc/containerd-shim-nvidia/config.toml
    --config-version 2|3      the version of a new file; default from `containerd --version`
  docker: adds a runtimes entry with runtimeType to daemon.json (default /etc/docker/daemon.json)
  shim: writes the shim's config (default /etc/containerd-shim-nvidia/config.toml):
    --profile default         every key at its default, documented
    --profile kubernetes      the isolation profile: only device-plugin requests count
    --force                   replace a file that differs
  --dry-run                   print the change as a diff and write nothing

Restart containerd (or Docker) afterwards.";

/// The shim configs `configure shim` writes.
const SHIM_DEFAULT: &str = include_str!("../../../../deploy/shim-config.toml");
const SHIM_KUBERNETES: &str = include_str!("../../../../deploy/kubernetes/shim-config.toml");

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

/// The file's text, empty when it does not exist.
fn read_existing(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
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
    let args = Args::parse(args, &EDIT_FLAGS[..3], &["--set-as-default", "--dry-run"])?;
    no_positional(&args)?;
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
    write_change(&path, old.as_deref(), &new, args.has("--dry-run"), 0o644)?;
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
                "{} exists and differs; --dry-run shows how, --force replaces it (keeping {}.bak)",
                path.display(),
                path.display()
            ));
        }
    }
    write_change(&path, old.as_deref(), text, args.has("--dry-run"), 0o644)
}

/// Writes `new` to `path` unless it holds it already: the old file kept as `<path>.bak`, the
/// new one written beside it and renamed over it (keeping the old file's mode, else `mode`).
/// With `dry_run`, prints the diff instead.
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
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
    let mode = match std::fs::metadata(path) {
        Ok(m) => m.permissions().mode() & 0o7777,
        Err(_) => mode,
    };
    let mut backup = None;
    if old.is_some() {
        let bak = PathBuf::from(format!("{}.bak", path.display()));
        std::fs::copy(path, &bak).map_err(|e| err("back up", e))?;
        backup = Some(bak);
    }
    let tmp = dir.join(format!(
        ".{}.new",
        path.file_name()
            .map_or("config".into(), |n| n.to_string_lossy())
    ));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(new.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err("write", e));
    }
    match backup {
        Some(bak) => println!(
            "{shown}: configured (previous file kept as {})",
            bak.display()
        ),
        None => println!("{shown}: written"),
    }
    Ok(())
}
