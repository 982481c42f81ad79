//! On a host with a real NVIDIA GPU and driver (`/dev/nvidiactl` exists; skipped with the reason
//! elsewhere): the shim with its default configuration finds the driver, and containers get
//! the GPU they ask for and nothing more. Run there by `scripts/gpu-host-suite.sh`, which packs
//! this test, the release shim, containerd and the probe for a machine that can install
//! nothing.

use anyhow::Result;
use nvidia_shim_integration::checks::setup;
use nvidia_shim_integration::containerd::{Containerd, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, Seen};
use nvidia_shim_integration::gpu::{host_has_gpus, host_uuids};
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
    for runtime in [NVIDIA, RUNC] {
        let (_, out, err) = run(&c, runtime, &[], sneak)?;
        assert!(
            out.contains("Operation not permitted"),
            "{runtime}: {out}{err}"
        );
    }
    Ok(())
}

#[test]
fn nvml_facts_decide_requirements() -> Result<()> {
    let Some(c) = env()? else { return Ok(()) };
    let all = "NVIDIA_VISIBLE_DEVICES=all";
    let (code, _, err) = run(&c, NVIDIA, &[all, "NVIDIA_REQUIRE_ARCH=arch>=5.0"], "true")?;
    assert_eq!(code, Some(0), "{err}");
    // The refusals name what NVML read: arch, brand and the CUDA version.
    let (code, _, err) = run(
        &c,
        NVIDIA,
        &[all, "NVIDIA_REQUIRE_ARCH=arch>=99.0 brand=nosuchbrand"],
        "true",
    )?;
    eprintln!("refusal: {err}");
    assert_ne!(code, Some(0));
    assert!(err.contains("unsatisfied condition: arch>=99.0"), "{err}");
    assert!(
        !err.contains("arch=unknown") && !err.contains("cuda=unknown"),
        "NVML answered: {err}"
    );
    Ok(())
}
