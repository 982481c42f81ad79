//! `--compare REV`: the shim as it was at a git revision, built beside the working tree, so a
//! change's effect is measured against its parent in the same containerd, interleaved.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// The runtime type the revision's shim is registered under: containerd finds it as
/// `containerd-shim-nvidiarev-v2` on its PATH.
pub const RUNTIME_REV: &str = "io.containerd.nvidiarev.v2";
/// The binary name containerd looks up for [`RUNTIME_REV`].
pub const BINARY_REV: &str = "containerd-shim-nvidiarev-v2";

/// Builds the release shim of `rev` (a commit, tag or branch of the repository at `repo`) in a
/// detached worktree under `repo/target/nvbench-compare`, with a target directory of its own
/// kept between runs (so a second comparison builds incrementally); returns the binary.
pub fn build_revision(repo: &Path, rev: &str) -> Result<PathBuf> {
    let git = |args: &[&str]| -> Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .context("run git")?;
        ensure!(
            out.status.success(),
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--verify", &format!("{rev}^{{commit}}")])?;
    let base = repo.join("target/nvbench-compare");
    let tree = base.join(format!("tree-{}", &commit[..12]));
    if !tree.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&base)?;
        // A worktree left by an interrupted run is pruned first.
        git(&["worktree", "prune"])?;
        git(&[
            "worktree",
            "add",
            "--detach",
            "--force",
            &tree.display().to_string(),
            &commit,
        ])?;
    }
    eprintln!(
        "nvbench: building {rev} ({}) in {}",
        &commit[..12],
        tree.display()
    );
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "containerd-shim-nvidia-v2",
        ])
        .current_dir(&tree)
        .env("CARGO_TARGET_DIR", base.join("target"))
        .status()
        .context("run cargo")?;
    ensure!(status.success(), "building {rev} failed");
    let built = base.join("target/release/containerd-shim-nvidia-v2");
    // A copy per revision: the next comparison's build must not change this one's binary.
    let binary = base.join(format!("containerd-shim-nvidia-v2-{}", &commit[..12]));
    std::fs::copy(&built, &binary).with_context(|| format!("copy {}", built.display()))?;
    Ok(binary)
}

/// Puts the revision's binary on containerd's PATH (its shim directory) as [`BINARY_REV`].
pub fn install(binary: &Path, shim_dir: &Path) -> Result<PathBuf> {
    let at = shim_dir.join(BINARY_REV);
    std::fs::copy(binary, &at).with_context(|| format!("copy to {}", at.display()))?;
    Ok(at)
}
