//! The host installer (`deploy/installer/install.sh`), run against a temporary host root: what
//! it writes, that a second run changes nothing, and that it refuses what it cannot merge.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use nvidia_shim_integration::command::text;
use nvidia_shim_integration::{repo_dir as repo, shim_binary};
use serde::Deserialize;

fn install(root: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let binary = shim_binary();
    if !binary.exists() {
        anyhow::bail!("{} is not built", binary.display());
    }
    Ok(Command::new("bash")
        .arg(repo().join("deploy/installer/install.sh"))
        .args(["--binary", &binary.display().to_string()])
        .args(["--host-root", &root.display().to_string()])
        .args(extra)
        .output()?)
}

#[test]
fn installs_binary_config_and_the_containerd_runtime_idempotently() -> Result<()> {
    let root = tempfile::tempdir()?;
    let ctr_conf = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(ctr_conf.parent().expect("dir"))?;
    let original = "# kept by the platform team\nversion = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.9\" # pinned\n";
    std::fs::write(&ctr_conf, original)?;
    let first = install(root.path(), &[])?;
    assert!(first.status.success(), "{}", text(&first.stderr));
    let once = std::fs::read_to_string(&ctr_conf)?;
    let second = install(root.path(), &[])?;
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).contains("nothing changed"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&ctr_conf)?,
        once,
        "a second run changed the config"
    );
    // The first run's backup is the original file.
    assert_eq!(
        std::fs::read_to_string(root.path().join("etc/containerd/config.toml.bak"))?,
        original
    );
    let bin = root.path().join("usr/local/bin/containerd-shim-nvidia-v2");
    let v = Command::new(&bin).arg("-v").output()?;
    assert!(text(&v.stdout).contains("io.containerd.nvidia.v2"));
    for kept in [
        "# kept by the platform team",
        "sandbox_image = \"registry.k8s.io/pause:3.9\" # pinned",
    ] {
        assert!(once.contains(kept), "{kept} lost:\n{once}");
    }
    let parsed: toml::Value = toml::from_str(&once)?;
    let runtime =
        &parsed["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nvidia"];
    assert_eq!(
        runtime["runtime_type"].as_str(),
        Some("io.containerd.nvidia.v2")
    );
    assert_eq!(
        runtime["options"]["ConfigPath"].as_str(),
        Some("/etc/containerd-shim-nvidia/config.toml")
    );
    // The Kubernetes profile the binary writes is the shipped one, and it loads.
    let cfg = root.path().join("etc/containerd-shim-nvidia/config.toml");
    assert_eq!(
        std::fs::read_to_string(&cfg)?,
        std::fs::read_to_string(repo().join("deploy/kubernetes/shim-config.toml"))?
    );
    let cfg = nvidia_shim_core_host::config::load(&cfg)?;
    assert!(!cfg.accept_envvar_when_unprivileged && cfg.accept_volume_mount_requests);
    Ok(())
}

#[test]
fn an_existing_shim_config_is_kept_and_an_unparsable_containerd_config_is_refused() -> Result<()> {
    let root = tempfile::tempdir()?;
    let cfg = root.path().join("etc/containerd-shim-nvidia/config.toml");
    std::fs::create_dir_all(cfg.parent().expect("dir"))?;
    std::fs::write(&cfg, "log_level = \"debug\"\n")?;
    let ctr_conf = root.path().join("etc/containerd/config.toml");
    std::fs::create_dir_all(ctr_conf.parent().expect("dir"))?;
    let broken = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"\nx = 1\n";
    std::fs::write(&ctr_conf, broken)?;
    let out = install(root.path(), &[])?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("line 2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&ctr_conf)?,
        broken,
        "a refused file was changed"
    );
    assert_eq!(std::fs::read_to_string(&cfg)?, "log_level = \"debug\"\n");
    // containerd 2.x: a fresh main config gets version 3 and containerd 2's CRI plugin.
    let fresh = tempfile::tempdir()?;
    let out = install(fresh.path(), &["--containerd-version", "2"])?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let main = std::fs::read_to_string(fresh.path().join("etc/containerd/config.toml"))?;
    assert!(main.starts_with("version = 3\n"), "{main}");
    assert!(main.contains("io.containerd.cri.v1.runtime"), "{main}");
    Ok(())
}

#[test]
fn manifests_and_examples_parse() -> Result<()> {
    let deploy = repo().join("deploy");
    for f in [
        "kubernetes/runtimeclass.yaml",
        "kubernetes/installer-daemonset.yaml",
    ] {
        let text = std::fs::read_to_string(deploy.join(f))?;
        let docs: Vec<serde_norway::Value> = serde_norway::Deserializer::from_str(&text)
            .map(serde_norway::Value::deserialize)
            .collect::<Result<_, _>>()?;
        assert!(!docs.is_empty(), "{f}");
        for d in &docs {
            assert!(
                d.get("kind").is_some() && d.get("apiVersion").is_some(),
                "{f}: {d:?}"
            );
        }
    }
    let rc: serde_norway::Value = serde_norway::from_str(&std::fs::read_to_string(
        deploy.join("kubernetes/runtimeclass.yaml"),
    )?)?;
    assert_eq!(rc["handler"].as_str(), Some("nvidia"));
    let daemon: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy.join("docker/daemon.json"))?)?;
    assert_eq!(
        daemon["runtimes"]["nvidia-shim"]["runtimeType"].as_str(),
        Some("io.containerd.nvidia.v2")
    );
    // The DaemonSet's embedded config is the same file the installer ships.
    let ds = std::fs::read_to_string(deploy.join("kubernetes/installer-daemonset.yaml"))?;
    let cm = serde_norway::Deserializer::from_str(&ds)
        .map(serde_norway::Value::deserialize)
        .find_map(|d| d.ok().filter(|d| d["kind"].as_str() == Some("ConfigMap")))
        .expect("a ConfigMap");
    let embedded = nvidia_shim_core::Config::parse(
        cm["data"]["config.toml"].as_str().expect("config.toml"),
        Path::new("configmap"),
    )?;
    let shipped = nvidia_shim_core_host::config::load(&deploy.join("kubernetes/shim-config.toml"))?;
    assert_eq!(embedded, shipped);
    Ok(())
}
