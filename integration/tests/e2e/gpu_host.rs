//! On a host with a real NVIDIA GPU and driver (`/dev/nvidiactl` exists; skipped with the reason
//! elsewhere): the shim with its default configuration finds the driver, and containers get
//! the GPU they ask for and nothing more. Run there by `scripts/gpu-host-suite.sh`, which packs
//! this test, the release shim, containerd and the probe for a machine that can install
//! nothing.

use anyhow::{ensure, Result};
use nvidia_shim_integration::checks::{alike, assert_failed, setup};
use nvidia_shim_integration::command::text;
use nvidia_shim_integration::containerd::{Containerd, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, Seen};
use nvidia_shim_integration::debian_packages::{self, or_skip};
use nvidia_shim_integration::docker::Docker;
use nvidia_shim_integration::gpu::{host_has_gpus, host_uuids, write_config};
use nvidia_shim_integration::probe::{self, IMAGE};

/// A private containerd with the probe image, or `None` when this host cannot run the test.
fn env() -> Result<Option<Containerd>> {
    if !host_has_gpus() {
        return Ok(None);
    }
    let Some(c) = setup() else {
        return Ok(None);
    };
    c.import(&probe::image()?, IMAGE)?;
    Ok(Some(c))
}

/// Runs `script` in the probe image through `runtime` with the shim's default configuration.
fn run(c: &Containerd, runtime: &str, env: &[&str], script: &str) -> Result<Seen> {
    let run = CtrRun::new("gpu").runtime(runtime).rm().image(IMAGE);
    run.env(env).sh(script).seen(c)
}

const NVIDIA: &str = RUNTIME;

#[test]
fn nvidia_smi_lists_the_gpu_for_all_and_for_its_uuid() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let uuids = host_uuids();
    assert!(!uuids.is_empty(), "the driver lists GPUs in /proc");
    let (code, out, err) = run(&c, NVIDIA, &["NVIDIA_VISIBLE_DEVICES=all"], "nvidia-smi -L")?;
    eprintln!("nvidia-smi -L with =all:\n{out}");
    assert_eq!(code, Some(0), "{out}{err}");
    for u in &uuids {
        assert!(out.contains(&format!("UUID: {u}")), "{u}: {out}");
    }
    let one = &uuids[0];
    let (code, out, err) = run(
        &c,
        NVIDIA,
        &[&format!("NVIDIA_VISIBLE_DEVICES={one}")],
        "nvidia-smi -L; ls /dev | grep '^nvidia[0-9]' | wc -l",
    )?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("UUID: {one}")), "{out}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("GPU ")).count(),
        1,
        "{out}"
    );
    assert!(out.ends_with("1\n"), "one GPU node: {out}");
    eprintln!(
        "{}",
        c.log()
            .lines()
            .filter(|l| l.contains("NVML") || l.contains("discovered NVIDIA"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

#[test]
fn a_vector_add_runs_on_the_gpu_inside_the_container() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let (code, out, err) = run(
        &c,
        NVIDIA,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "nvprobe cuInit nvmlInit vadd",
    )?;
    eprintln!("probe inside: {out}");
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(probe::code(&out, "cuInit"), Some(0), "{out}");
    assert_eq!(probe::code(&out, "nvmlInit"), Some(0), "{out}");
    assert!(out.contains("vadd ok 1048576"), "{out}");
    Ok(())
}

#[test]
fn none_void_and_no_request_give_no_gpu_as_runc_gives_none() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let nodes = "ls /dev | grep '^nvidia' | sort | tr '\\n' ' '; echo";
    let (_, out, err) = run(
        &c,
        NVIDIA,
        &["NVIDIA_VISIBLE_DEVICES=none"],
        &format!("{nodes}; nvprobe cuInit"),
    )?;
    assert!(
        out.contains("nvidiactl") && !out.contains("nvidia0"),
        "none: {out}{err}"
    );
    // No GPU to initialise: CUDA_ERROR_NO_DEVICE.
    assert_eq!(probe::code(&out, "cuInit"), Some(100), "{out}");
    let (_, out, _) = run(&c, NVIDIA, &["NVIDIA_VISIBLE_DEVICES=void"], nodes)?;
    assert_eq!(out.trim(), "", "void: no node at all");
    // Without a request the container cannot reach the GPU even through a node it makes: the
    // device cgroup (v2: the BPF program) refuses it, as runc's does.
    let sneak = "mknod /tmp/gpu0 c 195 0 && cat /tmp/gpu0 2>&1 | head -1";
    let refused = alike("a GPU node made by hand", [NVIDIA, RUNC], |runtime| {
        let (_, out, _) = run(&c, runtime, &[], sneak)?;
        Ok(out.contains("Operation not permitted"))
    })?;
    assert!(refused, "the node is refused under both");
    Ok(())
}

#[test]
fn nvml_facts_decide_requirements() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let all = "NVIDIA_VISIBLE_DEVICES=all";
    let (code, _, err) = run(&c, NVIDIA, &[all, "NVIDIA_REQUIRE_ARCH=arch>=5.0"], "true")?;
    assert_eq!(code, Some(0), "{err}");
    // The refusals name what NVML read: arch, brand and the CUDA version.
    let require = [all, "NVIDIA_REQUIRE_ARCH=arch>=99.0 brand=nosuchbrand"];
    let err = assert_failed(
        run(&c, NVIDIA, &require, "true")?,
        &["unsatisfied condition: arch>=99.0"],
    );
    eprintln!("refusal: {err}");
    assert!(
        !err.contains("arch=unknown") && !err.contains("cuda=unknown"),
        "NVML answered: {err}"
    );
    Ok(())
}

/// The command every guide starts from, `docker run --gpus all IMAGE nvidia-smi`, through
/// Docker 26 (Debian trixie's; on the GPU host the suite's packed copy) whose default runtime
/// `configure docker --set-as-default` made this shim, with no NVIDIA Container Toolkit:
/// `nvidia-smi -L` lists every GPU of the host, and `--gpus '"device=UUID"'` that one alone.
#[test]
fn docker_run_gpus_all_runs_nvidia_smi() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let what = "Docker 26 (NVIDIA_TEST_DOCKER_ROOT on the GPU host)";
    let Some(release) = or_skip(what, debian_packages::docker) else {
        return Ok(());
    };
    let config = write_config(c.dir(), "")?;
    let runtime = ("nvidia", config.as_str());
    let mut d = Docker::with_runtime(release, &c, "", runtime, &["--set-as-default"])?;
    d.import(&probe::image()?, IMAGE)?;
    let smi = |gpus: &str| -> Result<String> {
        let (out, id) = d.run(&["--rm", "--gpus", gpus, IMAGE, "nvidia-smi", "-L"])?;
        ensure!(out.status.success(), "--gpus {gpus}: {}", text(&out.stderr));
        d.assert_clean(&id);
        Ok(text(&out.stdout))
    };
    let uuids = host_uuids();
    let all = smi("all")?;
    eprintln!("docker run --rm --gpus all {IMAGE} nvidia-smi -L:\n{all}");
    for u in &uuids {
        assert!(all.contains(&format!("UUID: {u}")), "{u}: {all}");
    }
    let first = uuids.first().map(String::as_str).unwrap_or_default();
    let one = smi(&format!("\"device={first}\""))?;
    let listed = one.lines().filter(|l| l.starts_with("GPU ")).count();
    assert!(listed == 1 && one.contains(first), "{first} alone: {one}");
    let left = d.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    d.shutdown();
    Ok(())
}
