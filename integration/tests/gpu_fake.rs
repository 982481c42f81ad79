//! GPU injection through containerd with a fake driver installation (issue 5's CI tests): real
//! ELF libraries with SONAMEs, mknod'ed nodes, a fake /proc/driver/nvidia tree, pointed at by
//! the shim's config file passed with `--runtime-config-path`.

use std::path::Path;

use anyhow::Result;
use nvidia_shim_core_host::fixture::{compat_libcuda, FakeDriver, Layout};
use nvidia_shim_integration::checks::{assert_clean, run_args, run_script, setup, text};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE};
use nvidia_shim_integration::image::{Entry, ImageSpec};
use nvidia_shim_integration::{leftovers, unique_id};

/// A fake 4-GPU driver and a shim config pointing at it.
struct Gpu {
    fake: FakeDriver,
    config: String,
}

fn gpu(c: &Containerd, gpus: u32) -> Result<Gpu> {
    let fake = FakeDriver::builder()
        .gpus(gpus)
        .layout(Layout::Distro)
        .build();
    gpu_from(c, fake)
}

/// `fake` and a shim config file pointing at it.
fn gpu_from(c: &Containerd, fake: FakeDriver) -> Result<Gpu> {
    let config = c.dir().join(format!("shim-{}.toml", unique_id("cfg")));
    std::fs::write(&config, fake.shim_config())?;
    Ok(Gpu {
        fake,
        config: config.display().to_string(),
    })
}

/// Runs `script` in a fresh container with `env`, returning (exit code, stdout, stderr).
fn run(
    c: &Containerd,
    g: &Gpu,
    image: &str,
    env: &[&str],
    script: &str,
) -> Result<(Option<i32>, String, String)> {
    run_script(c, &g.config, image, env, script)
}

#[test]
fn all_gpus_get_nodes_libraries_binaries_and_void_env() -> Result<()> {
    let Some(c) = setup("all_gpus_get_nodes_libraries_binaries_and_void_env") else {
        return Ok(());
    };
    let g = gpu(&c, 4)?;
    let script =
        "for d in nvidiactl nvidia0 nvidia1 nvidia2 nvidia3 nvidia-uvm nvidia-uvm-tools; do \
                  stat -c \"$d %t:%T\" /dev/$d; done; \
                  test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo libcuda-ok; \
                  test -e /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 && echo nvml-ok; \
                  nvidia-smi; echo \"env=$NVIDIA_VISIBLE_DEVICES\"";
    let (code, out, err) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        script,
    )?;
    assert_eq!(code, Some(0), "stdout {out}\nstderr {err}");
    for line in [
        "nvidiactl c3:ff",
        "nvidia0 c3:0",
        "nvidia3 c3:3",
        "nvidia-uvm ee:0",
        "nvidia-uvm-tools ee:1",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(
        out.contains("libcuda-ok") && out.contains("nvml-ok"),
        "{out}"
    );
    assert!(
        out.contains("GPU 0: NVIDIA H100"),
        "fake nvidia-smi on PATH: {out}"
    );
    assert!(out.contains("env=void"), "{out}");
    drop(g.fake);
    Ok(())
}

#[test]
fn one_gpu_none_void_and_utility_requests() -> Result<()> {
    let Some(c) = setup("one_gpu_none_void_and_utility_requests") else {
        return Ok(());
    };
    let g = gpu(&c, 4)?;
    let list = "ls /dev | grep '^nvidia' | sort | tr '\\n' ' '; echo; test -e /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04 && echo libcuda";
    let (_, out, err) = run(&c, &g, BUSYBOX_IMAGE, &["NVIDIA_VISIBLE_DEVICES=1"], list)?;
    assert_eq!(
        out.lines().next().unwrap_or(""),
        "nvidia-uvm nvidia-uvm-tools nvidia1 nvidiactl ",
        "{err}"
    );
    let (_, out, _) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=none"],
        list,
    )?;
    assert_eq!(
        out.lines().next().unwrap_or(""),
        "nvidia-uvm nvidia-uvm-tools nvidiactl "
    );
    assert!(
        out.contains("libcuda"),
        "none still gets the libraries: {out}"
    );
    for env in [&["NVIDIA_VISIBLE_DEVICES=void"][..], &[][..]] {
        let (code, out, _) = run(&c, &g, BUSYBOX_IMAGE, env, list)?;
        assert_eq!(code, Some(1), "no device and no library: {out}");
        assert_eq!(out.trim(), "");
    }
    let (_, out, _) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        list,
    )?;
    assert_eq!(
        out.lines().next().unwrap_or(""),
        "nvidia0 nvidia1 nvidia2 nvidia3 nvidiactl "
    );
    assert!(
        !out.contains("libcuda"),
        "utility has no compute libraries: {out}"
    );
    Ok(())
}

#[test]
fn requirements_are_enforced_and_can_be_disabled() -> Result<()> {
    let Some(c) = setup("requirements_are_enforced_and_can_be_disabled") else {
        return Ok(());
    };
    let g = gpu(&c, 1)?;
    let (code, _, err) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
        ],
        "true",
    )?;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("unsatisfied condition: cuda>=99.0") && err.contains("cuda=13.0"),
        "{err}"
    );
    let (code, _, err) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_REQUIRE_CUDA=cuda>=99.0",
            "NVIDIA_DISABLE_REQUIRE=1",
        ],
        "true",
    )?;
    assert_eq!(code, Some(0), "{err}");
    Ok(())
}

#[test]
fn unknown_gpu_and_missing_driver_fail_clearly() -> Result<()> {
    let Some(c) = setup("unknown_gpu_and_missing_driver_fail_clearly") else {
        return Ok(());
    };
    let g = gpu(&c, 2)?;
    let (code, _, err) = run(&c, &g, BUSYBOX_IMAGE, &["NVIDIA_VISIBLE_DEVICES=7"], "true")?;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("unknown GPU \"7\"") && err.contains("GPU-00000001"),
        "{err}"
    );
    // A config whose proc root has no driver.
    let nodriver = Gpu {
        fake: FakeDriver::builder().build(),
        config: {
            let p = c.dir().join("nodriver.toml");
            std::fs::write(&p, "proc_root = \"/nonexistent-proc\"\n")?;
            p.display().to_string()
        },
    };
    let (code, _, err) = run(
        &c,
        &nodriver,
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "true",
    )?;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("/nonexistent-proc/driver/nvidia/version")
            && err.contains("NVIDIA_VISIBLE_DEVICES=all"),
        "{err}"
    );
    Ok(())
}

#[test]
fn hostile_library_dir_symlink_stays_inside_the_rootfs() -> Result<()> {
    let Some(c) = setup("hostile_library_dir_symlink_stays_inside_the_rootfs") else {
        return Ok(());
    };
    let g = gpu(&c, 1)?;
    let escape = c.dir().join("host-escape");
    std::fs::create_dir_all(&escape)?;
    let mut image = ImageSpec::busybox()?;
    image.entries.push(Entry::Dir("usr".into()));
    image.entries.push(Entry::Dir("usr/lib".into()));
    image.entries.push(Entry::Symlink(
        "usr/lib/x86_64-linux-gnu".into(),
        escape.display().to_string(),
    ));
    let name = "docker.io/library/nvtest-hostile:latest";
    c.import(&image, name)?;
    let (code, out, err) = run(
        &c,
        &g,
        name,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo inside",
    )?;
    assert_eq!(
        std::fs::read_dir(&escape)?.count(),
        0,
        "nothing written to the host path"
    );
    assert!(
        code == Some(0) && out.contains("inside") || err.contains("container"),
        "code {code:?} out {out} err {err}"
    );
    Ok(())
}

#[test]
fn device_cgroup_allows_only_the_given_gpu() -> Result<()> {
    let Some(c) = setup("device_cgroup_allows_only_the_given_gpu") else {
        return Ok(());
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!(
            "note: cgroup v2 host; the devices.list check applies to v1 only, the open checks run"
        );
    }
    let g = gpu(&c, 2)?;
    let id = unique_id("devcg");
    let out = c.ctr(&run_args(
        &id,
        &[
            "-d",
            "--runtime-config-path",
            &g.config,
            "--env",
            "NVIDIA_VISIBLE_DEVICES=1",
        ],
        &["sleep", "86400"],
    ))?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    if let Some(list) = leftovers::cgroups_of(NAMESPACE, &id)
        .iter()
        .map(|d| d.join("devices.list"))
        .find(|p| p.exists())
    {
        let list = std::fs::read_to_string(list)?;
        assert!(
            list.contains("c 195:1 rwm") && list.contains("c 195:255 rwm"),
            "{list}"
        );
        assert!(!list.contains("c 195:0 "), "{list}");
    }
    // Opening its own node gets past the device cgroup (the fake node has no driver behind it:
    // ENXIO); a node for GPU 0 made by hand is refused by the cgroup (EPERM).
    let probe = "cat /dev/nvidia1 2>&1; mknod /tmp/gpu0 c 195 0 && cat /tmp/gpu0 2>&1; true";
    let out = c.ctr(&["task", "exec", "--exec-id", "probe", &id, "sh", "-c", probe])?;
    let o = text(&out.stdout);
    let lines: Vec<&str> = o.lines().collect();
    assert!(lines.len() >= 2, "{o}");
    assert!(
        !lines[0].contains("Operation not permitted"),
        "own GPU allowed: {o}"
    );
    assert!(
        lines[1].contains("Operation not permitted"),
        "other GPU denied: {o}"
    );
    nvidia_shim_integration::checks::stop_and_remove(&c, &id)
}

/// A glibc image (the host's loader and libc) with a program that `dlopen`s `libcuda.so.1`,
/// imported.
fn glibc_image(c: &Containerd) -> Result<&'static str> {
    let image = glibc_spec(c)?;
    let name = "docker.io/library/nvtest-glibc:latest";
    c.import(&image, name)?;
    Ok(name)
}

/// [`glibc_image`]'s contents: `dlopen-test` prints `dlopen ok N` with what the library's
/// `nvidia_fake_symbol` returns.
fn glibc_spec(c: &Containerd) -> Result<ImageSpec> {
    let dir = c.dir().join("dlopen-src");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("t.c"),
        "#include <dlfcn.h>\n#include <stdio.h>\nint main(void) {\n  void *h = dlopen(\"libcuda.so.1\", RTLD_NOW);\n  if (!h) { printf(\"dlopen failed: %s\\n\", dlerror()); return 1; }\n  int (*f)(void) = (int (*)(void)) dlsym(h, \"nvidia_fake_symbol\");\n  printf(\"dlopen ok %d\\n\", f ? f() : -1);\n  return 0;\n}\n",
    )?;
    let status = std::process::Command::new("cc")
        .arg("-o")
        .arg(dir.join("dlopen-test"))
        .arg(dir.join("t.c"))
        .status()?;
    anyhow::ensure!(status.success(), "cc dlopen-test");
    ImageSpec::glibc()?.with_program("usr/bin/dlopen-test", &dir.join("dlopen-test"))
}

#[test]
fn injected_libraries_resolve_through_the_generated_ld_cache() -> Result<()> {
    let Some(c) = setup("injected_libraries_resolve_through_the_generated_ld_cache") else {
        return Ok(());
    };
    // /usr/local/nvidia layout: the libraries land in /lib64, which only the cache names.
    let fake = FakeDriver::builder()
        .gpus(1)
        .layout(Layout::UsrLocalNvidia)
        .build();
    let g = gpu_from(&c, fake)?;
    let image = glibc_image(&c)?;
    // The image has no ldconfig at all; the cache is the shim's, and without it dlopen fails.
    let script = "dlopen-test; cat /etc/ld.so.conf.d/000-nvidia-container-shim.conf; \
                  test -e /sbin/ldconfig || echo no-ldconfig; rm /etc/ld.so.cache; dlopen-test";
    let (_, out, err) = run(&c, &g, image, &["NVIDIA_VISIBLE_DEVICES=all"], script)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("dlopen ok 42"),
        "stdout {out}\nstderr {err}"
    );
    assert!(out.contains("/lib64\n"), "drop-in lists /lib64: {out}");
    assert!(out.contains("no-ldconfig"));
    assert!(
        lines.last().is_some_and(|l| l.starts_with("dlopen failed")),
        "control without the cache: {out}"
    );
    Ok(())
}

#[test]
fn cuda_forward_compat_libraries_are_used_only_when_newer_and_made_for_the_host() -> Result<()> {
    let Some(c) =
        setup("cuda_forward_compat_libraries_are_used_only_when_newer_and_made_for_the_host")
    else {
        return Ok(());
    };
    let g = gpu(&c, 1)?;
    let base = glibc_image(&c)?;
    // The fake host driver is 580.159.04; the image carries a 590 compat libcuda.
    let with_compat = |name: &str, note: &str| -> Result<String> {
        let dir = c.dir().join(name);
        compat_libcuda(&dir, "590.10.01", Some(note));
        let mut image = glibc_spec(&c)?;
        for d in ["usr/local", "usr/local/cuda", "usr/local/cuda/compat"] {
            image.entries.push(Entry::Dir(d.into()));
        }
        image.entries.push(Entry::File(
            "usr/local/cuda/compat/libcuda.so.590.10.01".into(),
            0o755,
            std::fs::read(dir.join("usr/local/cuda/compat/libcuda.so.590.10.01"))?,
        ));
        image.entries.push(Entry::Symlink(
            "usr/local/cuda/compat/libcuda.so.1".into(),
            "libcuda.so.590.10.01".into(),
        ));
        let reference = format!("docker.io/library/nvtest-{name}:latest");
        c.import(&image, &reference)?;
        Ok(reference)
    };
    let for_580 = with_compat(
        "compat580",
        r#"{"format":1,"CUDA version":"13.1","driver":[570,580]}"#,
    )?;
    let for_550 = with_compat(
        "compat550",
        r#"{"format":1,"CUDA version":"13.1","driver":[550]}"#,
    )?;
    let script = "dlopen-test; head -1 /etc/ld.so.conf.d/000-nvidia-container-shim.conf";
    let all = ["NVIDIA_VISIBLE_DEVICES=all"];
    let (_, out, err) = run(&c, &g, &for_580, &all, script)?;
    assert_eq!(
        out, "dlopen ok 99\n/usr/local/cuda/compat\n",
        "compat used: {err}"
    );
    let (_, out, err) = run(&c, &g, &for_550, &all, script)?;
    assert!(
        out.starts_with("dlopen ok 42\n"),
        "not made for 580: host's libcuda: {out}{err}"
    );
    let (_, out, _) = run(&c, &g, base, &all, "dlopen-test")?;
    assert_eq!(out, "dlopen ok 42\n", "no compat dir: host's libcuda");
    // Without compute, neither libcuda is in the cache.
    let utility = [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=utility",
    ];
    let (_, out, _) = run(&c, &g, &for_580, &utility, "dlopen-test")?;
    assert!(out.starts_with("dlopen failed"), "{out}");
    Ok(())
}

#[test]
fn daemon_sockets_and_the_mps_pipe_dir_are_mounted_by_capability() -> Result<()> {
    let Some(c) = setup("daemon_sockets_and_the_mps_pipe_dir_are_mounted_by_capability") else {
        return Ok(());
    };
    let g = gpu(&c, 1)?;
    let root = g.fake.host_root();
    std::fs::create_dir_all(root.join("run/nvidia-persistenced"))?;
    let _persistenced =
        std::os::unix::net::UnixListener::bind(root.join("run/nvidia-persistenced/socket"))?;
    std::fs::create_dir_all(root.join("tmp/nvidia-mps"))?;
    std::fs::write(root.join("tmp/nvidia-mps/control"), "")?;
    let script = "test -S /run/nvidia-persistenced/socket && echo socket; \
                  ls /tmp/nvidia-mps 2>/dev/null; \
                  grep -E ' /(run/nvidia-persistenced/socket|tmp/nvidia-mps) ' /proc/self/mountinfo \
                  | grep -c 'rw,nosuid,nodev,noexec'";
    let (_, out, err) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        script,
    )?;
    assert_eq!(out, "socket\ncontrol\n2\n", "utility+compute: {err}");
    let utility = [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=utility",
    ];
    let (_, out, _) = run(&c, &g, BUSYBOX_IMAGE, &utility, script)?;
    assert_eq!(out, "socket\n1\n", "utility only: no MPS dir");
    let compute = [
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute",
    ];
    let (_, out, _) = run(&c, &g, BUSYBOX_IMAGE, &compute, script)?;
    assert_eq!(out, "control\n1\n", "compute only: no persistenced socket");
    Ok(())
}

#[test]
fn mig_devices_by_index_get_their_access_nodes_and_mig_config_needs_privilege() -> Result<()> {
    let Some(c) =
        setup("mig_devices_by_index_get_their_access_nodes_and_mig_config_needs_privilege")
    else {
        return Ok(());
    };
    let fake = FakeDriver::builder()
        .gpus(2)
        .mig(0, &[(1, &[0, 1])])
        .build();
    let g = gpu_from(&c, fake)?;
    // 0:1 is GI 1 / CI 1: mig-minors numbers gi1 3, gi1/ci0 4, gi1/ci1 5.
    let list = "ls /dev | grep '^nvidia[0-9]'; \
                stat -c '%n %t:%T' /dev/nvidia-caps/* | sed 's/ f1:/ 241:/'";
    let (code, out, err) = run(&c, &g, BUSYBOX_IMAGE, &["NVIDIA_VISIBLE_DEVICES=0:1"], list)?;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "nvidia0\n/dev/nvidia-caps/nvidia-cap3 241:3\n/dev/nvidia-caps/nvidia-cap5 241:5\n"
    );
    let (code, _, err) = run(
        &c,
        &g,
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"],
        "true",
    )?;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("cannot set NVIDIA_MIG_CONFIG_DEVICES in a non-privileged container"),
        "{err}"
    );
    Ok(())
}

#[test]
fn cdi_annotations_and_the_isolation_profile() -> Result<()> {
    let Some(c) = setup("cdi_annotations_and_the_isolation_profile") else {
        return Ok(());
    };
    let g = gpu(&c, 4)?;
    // The Kubernetes profile: env requests only count for privileged containers.
    let strict = c.dir().join("strict.toml");
    std::fs::write(
        &strict,
        format!(
            "{}accept_envvar_when_unprivileged = false\n",
            g.fake.shim_config()
        ),
    )?;
    let strict = Gpu {
        fake: FakeDriver::builder().build(),
        config: strict.display().to_string(),
    };
    let list = "ls /dev | grep '^nvidia[0-9]' | tr '\\n' ' '; echo";
    let with = |config: &Gpu, extra: &[&str]| -> Result<String> {
        let id = unique_id("cdi");
        let mut args = vec!["--rm", "--runtime-config-path", config.config.as_str()];
        args.extend_from_slice(extra);
        let out = c.ctr(&run_args(&id, &args, &["sh", "-c", list]))?;
        assert_clean(&c, &id, &id);
        Ok(text(&out.stdout).trim().to_owned())
    };
    // A device-plugin CDI annotation, resolved against the built-in inventory.
    let ann = "cdi.k8s.io/nvidia-device-plugin_1234=k8s.device-plugin.nvidia.com/gpu=2";
    assert_eq!(with(&g, &["--annotation", ann])?, "nvidia2");
    // The annotation wins over an image's NVIDIA_VISIBLE_DEVICES=all.
    assert_eq!(
        with(
            &g,
            &["--annotation", ann, "--env", "NVIDIA_VISIBLE_DEVICES=all"]
        )?,
        "nvidia2"
    );
    // Under the strict profile an unprivileged CUDA image's `all` gets nothing...
    assert_eq!(with(&strict, &["--env", "NVIDIA_VISIBLE_DEVICES=all"])?, "");
    // ...but its allocation (the annotation) is honoured, and a privileged container's env too.
    assert_eq!(
        with(
            &strict,
            &["--annotation", ann, "--env", "NVIDIA_VISIBLE_DEVICES=all"]
        )?,
        "nvidia2"
    );
    assert_eq!(
        with(
            &strict,
            &["--privileged", "--env", "NVIDIA_VISIBLE_DEVICES=all"]
        )?,
        "nvidia0 nvidia1 nvidia2 nvidia3"
    );
    Ok(())
}

#[test]
fn cdi_specs_on_disk_are_applied() -> Result<()> {
    let Some(c) = setup("cdi_specs_on_disk_are_applied") else {
        return Ok(());
    };
    let g = gpu(&c, 2)?;
    // The toolkit's way: a spec generated from the driver (`nvidia-ctk cdi generate`), here
    // by `containerd-shim-nvidia-v2 cdi generate`, stored as YAML; its create-symlinks and
    // update-ldcache hooks are then done by the shim.
    let out = std::process::Command::new(nvidia_shim_integration::shim_binary())
        .args(["cdi", "generate", "--config", &g.config])
        .output()?;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let spec =
        nvidia_shim_core::cdi::CdiSpec::parse(Path::new("generated.json"), &text(&out.stdout))?;
    assert_eq!(
        spec.devices.len(),
        2 * 2 + 1,
        "index and UUID per GPU, and all"
    );
    std::fs::write(
        g.fake.cdi_dir().join("nvidia.yaml"),
        serde_norway::to_string(&spec)?,
    )?;
    // A non-NVIDIA device: a node of its own, a file mount and env.
    let host_file = c.dir().join("fpga-firmware.bin");
    std::fs::write(&host_file, "bitstream")?;
    std::fs::write(
        g.fake.cdi_dir().join("fpga.json"),
        format!(
            r#"{{"cdiVersion":"0.5.0","kind":"vendor.example/fpga","devices":[{{"name":"f0","containerEdits":{{
                "env":["FPGA=f0"],
                "deviceNodes":[{{"path":"/dev/fpga0","hostPath":"/dev/zero"}}],
                "mounts":[{{"hostPath":"{}","containerPath":"/opt/fpga/firmware.bin","options":["ro","bind"]}}]}}}}]}}"#,
            host_file.display()
        ),
    )?;
    let script = "ls /dev | grep -E '^(nvidia[0-9]|fpga)' | tr '\\n' ' '; echo; \
                  echo FPGA=$FPGA NVD=$NVIDIA_VISIBLE_DEVICES; cat /opt/fpga/firmware.bin; echo; \
                  head -c 4 /dev/fpga0 | wc -c; echo \"$(readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1)\"; \
                  grep -c libcuda.so.1 /etc/ld.so.cache 2>/dev/null || echo 0";
    // Runs a container with the fake driver's config and `extra` flags; checks it left nothing.
    let run_cdi = |extra: &[&str], cmd: &[&str]| -> Result<(String, std::process::Output)> {
        let id = unique_id("cdi");
        let mut args = vec!["--rm", "--runtime-config-path", g.config.as_str()];
        args.extend_from_slice(extra);
        let out = c.ctr(&run_args(&id, &args, cmd))?;
        assert_clean(&c, &id, &id);
        Ok((id, out))
    };
    let ann = "--annotation=cdi.k8s.io/test=vendor.example/fpga=f0";
    let env = "NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1";
    let (_, out) = run_cdi(&[ann, "--env", env], &["sh", "-c", script])?;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0].trim(),
        "fpga0",
        "the annotation wins over the env request"
    );
    assert_eq!(lines[1], "FPGA=f0 NVD=void");
    assert_eq!(lines[2], "bitstream");
    assert_eq!(lines[3].trim(), "4");
    assert!(
        lines[4].is_empty(),
        "no NVIDIA libraries for the FPGA: {stdout}"
    );

    // The env request alone resolves nvidia.com/gpu=1 through the spec on disk.
    let (_, out) = run_cdi(&["--env", env], &["sh", "-c", script])?;
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].trim(), "nvidia1", "{stdout}{}", text(&out.stderr));
    assert_eq!(lines[1], "FPGA= NVD=void");
    assert!(lines[4].starts_with("libcuda.so.580"), "{stdout}");
    assert_eq!(lines[5], "1", "libcuda.so.1 is in the ld cache: {stdout}");

    // An unknown CDI device fails Create, naming it, and leaves nothing behind.
    let (id, out) = run_cdi(
        &["--annotation=cdi.k8s.io/x=vendor.example/fpga=f9"],
        &["true"],
    )?;
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(
        err.contains("unresolvable CDI devices vendor.example/fpga=f9") && err.contains(&id),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_new_shim_uses_the_on_disk_inventory_cache_and_discards_a_corrupt_one() -> Result<()> {
    let Some(c) = setup("a_new_shim_uses_the_on_disk_inventory_cache") else {
        return Ok(());
    };
    let g = gpu(&c, 2)?;
    let list = "ls /dev | grep '^nvidia[0-9]' | tr '\\n' ' '";
    let gpus = |c: &Containerd| -> Result<String> {
        let (code, out, err) = run(c, &g, BUSYBOX_IMAGE, &["NVIDIA_VISIBLE_DEVICES=all"], list)?;
        assert_eq!(code, Some(0), "{out}{err}");
        Ok(out.trim().to_owned())
    };
    assert_eq!(gpus(&c)?, "nvidia0 nvidia1");
    let entries: Vec<_> = std::fs::read_dir(g.fake.cache_dir())?
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(entries.len(), 1, "one cache entry: {entries:?}");
    let file = &entries[0];
    // Each `ctr run` starts a new shim. Had it rediscovered, it would see both GPUs; with the
    // entry edited to hold one, seeing one proves the entry was used.
    let mut cached: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
    cached["inventory"]["gpus"]
        .as_array_mut()
        .expect("gpus")
        .truncate(1);
    std::fs::write(file, serde_json::to_vec(&cached)?)?;
    assert_eq!(gpus(&c)?, "nvidia0");
    // A corrupt entry is discarded and rebuilt.
    std::fs::write(file, b"{\"format\": 1, \"key\": [")?;
    assert_eq!(gpus(&c)?, "nvidia0 nvidia1");
    let rebuilt: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
    assert_eq!(
        rebuilt["inventory"]["gpus"].as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}
