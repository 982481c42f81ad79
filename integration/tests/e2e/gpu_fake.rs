//! GPU injection through containerd with a fake driver installation (issue 5's CI tests): real
//! ELF libraries with SONAMEs, mknod'ed nodes, a fake /proc/driver/nvidia tree, pointed at by
//! the shim's config file passed with `--runtime-config-path`.

use std::path::Path;

use anyhow::Result;
use nvidia_shim_core_host::fixture::{compat_libcuda, FakeDriver, Layout};
use nvidia_shim_integration::checks::{assert_failed, assert_holds, stop_and_remove, text};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE};
use nvidia_shim_integration::ctr_run::{CtrRun, Seen};
use nvidia_shim_integration::gpu::{setup_with, write_config, Gpus};
use nvidia_shim_integration::image::{Entry, ImageSpec};
use nvidia_shim_integration::leftovers;

/// A private containerd with the busybox image and `n` fake GPUs, or `None` where the test
/// cannot run.
fn fake(n: u32) -> Result<Option<(Containerd, Gpus)>> {
    setup_with(|dir| Gpus::fake(dir, n))
}

/// Runs `script` with `env` in a fresh busybox container given `g`.
fn run(c: &Containerd, g: &Gpus, env: &[&str], script: &str) -> Result<Seen> {
    g.run(c, BUSYBOX_IMAGE, env, script)
}

const ALL: &str = "NVIDIA_VISIBLE_DEVICES=all";
const UTILITY: &str = "NVIDIA_DRIVER_CAPABILITIES=utility";
const COMPUTE: &str = "NVIDIA_DRIVER_CAPABILITIES=compute";

#[test]
fn all_gpus_get_nodes_libraries_binaries_and_void_env() -> Result<()> {
    let Some((c, g)) = fake(4)? else {
        return Ok(());
    };
    let script =
        "for d in nvidiactl nvidia0 nvidia1 nvidia2 nvidia3 nvidia-uvm nvidia-uvm-tools; do \
                  stat -c \"$d %t:%T\" /dev/$d; done; \
                  test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo libcuda-ok; \
                  test -e /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 && echo nvml-ok; \
                  nvidia-smi; echo \"env=$NVIDIA_VISIBLE_DEVICES\"";
    let (code, out, err) = run(&c, &g, &[ALL], script)?;
    assert_eq!(code, Some(0), "stdout {out}\nstderr {err}");
    assert_holds(
        &out,
        &[
            ("nvidiactl c3:ff", "the control node"),
            ("nvidia0 c3:0", "GPU 0's node"),
            ("nvidia3 c3:3", "GPU 3's node"),
            ("nvidia-uvm ee:0", "the UVM node"),
            ("nvidia-uvm-tools ee:1", "the UVM tools node"),
            ("libcuda-ok", "libcuda"),
            ("nvml-ok", "libnvidia-ml"),
            ("GPU 0: NVIDIA H100", "fake nvidia-smi on PATH"),
            ("env=void", "the request consumed"),
        ],
    );
    Ok(())
}

#[test]
fn one_gpu_none_void_and_utility_requests() -> Result<()> {
    let Some((c, g)) = fake(4)? else {
        return Ok(());
    };
    let list = "ls /dev | grep '^nvidia' | sort | tr '\\n' ' '; echo; test -e /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.04 && echo libcuda";
    let first = |out: &str| out.lines().next().unwrap_or("").to_owned();
    let (_, out, err) = run(&c, &g, &["NVIDIA_VISIBLE_DEVICES=1"], list)?;
    let want = "nvidia-uvm nvidia-uvm-tools nvidia1 nvidiactl ";
    assert_eq!(first(&out), want, "{err}");
    let (_, out, _) = run(&c, &g, &["NVIDIA_VISIBLE_DEVICES=none"], list)?;
    assert_eq!(first(&out), "nvidia-uvm nvidia-uvm-tools nvidiactl ");
    assert!(
        out.contains("libcuda"),
        "none still gets the libraries: {out}"
    );
    for env in [&["NVIDIA_VISIBLE_DEVICES=void"][..], &[][..]] {
        let (code, out, _) = run(&c, &g, env, list)?;
        assert_eq!(code, Some(1), "no device and no library: {out}");
        assert_eq!(out.trim(), "");
    }
    let (_, out, _) = run(&c, &g, &[ALL, UTILITY], list)?;
    assert_eq!(first(&out), "nvidia0 nvidia1 nvidia2 nvidia3 nvidiactl ");
    assert!(
        !out.contains("libcuda"),
        "utility has no compute libraries: {out}"
    );
    Ok(())
}

#[test]
fn requirements_are_enforced_and_can_be_disabled() -> Result<()> {
    let Some((c, g)) = fake(1)? else {
        return Ok(());
    };
    let require = "NVIDIA_REQUIRE_CUDA=cuda>=99.0";
    let unmet = ["unsatisfied condition: cuda>=99.0", "cuda=13.0"];
    assert_failed(run(&c, &g, &[ALL, require], "true")?, &unmet);
    let (code, _, err) = run(&c, &g, &[ALL, require, "NVIDIA_DISABLE_REQUIRE=1"], "true")?;
    assert_eq!(code, Some(0), "{err}");
    Ok(())
}

#[test]
fn unknown_gpu_and_missing_driver_fail_clearly() -> Result<()> {
    let Some((c, g)) = fake(2)? else {
        return Ok(());
    };
    let seen = run(&c, &g, &["NVIDIA_VISIBLE_DEVICES=7"], "true")?;
    assert_failed(seen, &["unknown GPU \"7\"", "GPU-00000001"]);
    // A config whose proc root has no driver.
    let nodriver = write_config(c.dir(), "proc_root = \"/nonexistent-proc\"\n")?;
    let run = CtrRun::new("gpu").rm().config(&nodriver).env(&[ALL]);
    let missing = ["/nonexistent-proc/driver/nvidia/version", ALL];
    assert_failed(run.sh("true").seen(&c)?, &missing);
    Ok(())
}

#[test]
fn hostile_library_dir_symlink_stays_inside_the_rootfs() -> Result<()> {
    let Some((c, g)) = fake(1)? else {
        return Ok(());
    };
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
    let script = "test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo inside";
    let (code, out, err) = g.run(&c, name, &[ALL], script)?;
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
    let Some((c, g)) = fake(2)? else {
        return Ok(());
    };
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        eprintln!(
            "note: cgroup v2 host; the devices.list check applies to v1 only, the open checks run"
        );
    }
    let run = g.ctr_run().detach().env(&["NVIDIA_VISIBLE_DEVICES=1"]);
    let id = run.cmd(&["sleep", "86400"]).start(&c)?;
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
    let out = c.exec(&id, "probe", &["sh", "-c", probe])?;
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
    stop_and_remove(&c, &id)
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
    // /usr/local/nvidia layout: the libraries land in /lib64, which only the cache names.
    let usr_local = |dir: &Path| {
        let driver = FakeDriver::builder()
            .gpus(1)
            .layout(Layout::UsrLocalNvidia)
            .build();
        Gpus::of(dir, driver)
    };
    let Some((c, g)) = setup_with(usr_local)? else {
        return Ok(());
    };
    let image = glibc_image(&c)?;
    // The image has no ldconfig at all; the cache is the shim's, and without it dlopen fails.
    let script = "dlopen-test; cat /etc/ld.so.conf.d/000-nvidia-container-shim.conf; \
                  test -e /sbin/ldconfig || echo no-ldconfig; rm /etc/ld.so.cache; dlopen-test";
    let (_, out, err) = g.run(&c, image, &[ALL], script)?;
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
    let Some((c, g)) = fake(1)? else {
        return Ok(());
    };
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
    let (_, out, err) = g.run(&c, &for_580, &[ALL], script)?;
    assert_eq!(
        out, "dlopen ok 99\n/usr/local/cuda/compat\n",
        "compat used: {err}"
    );
    let (_, out, err) = g.run(&c, &for_550, &[ALL], script)?;
    assert!(
        out.starts_with("dlopen ok 42\n"),
        "not made for 580: host's libcuda: {out}{err}"
    );
    let (_, out, _) = g.run(&c, base, &[ALL], "dlopen-test")?;
    assert_eq!(out, "dlopen ok 42\n", "no compat dir: host's libcuda");
    // Without compute, neither libcuda is in the cache.
    let (_, out, _) = g.run(&c, &for_580, &[ALL, UTILITY], "dlopen-test")?;
    assert!(out.starts_with("dlopen failed"), "{out}");
    Ok(())
}

#[test]
fn daemon_sockets_and_the_mps_pipe_dir_are_mounted_by_capability() -> Result<()> {
    let Some((c, g)) = fake(1)? else {
        return Ok(());
    };
    let root = g.driver.host_root();
    std::fs::create_dir_all(root.join("run/nvidia-persistenced"))?;
    let _persistenced =
        std::os::unix::net::UnixListener::bind(root.join("run/nvidia-persistenced/socket"))?;
    std::fs::create_dir_all(root.join("tmp/nvidia-mps"))?;
    std::fs::write(root.join("tmp/nvidia-mps/control"), "")?;
    let script = "test -S /run/nvidia-persistenced/socket && echo socket; \
                  ls /tmp/nvidia-mps 2>/dev/null; \
                  grep -E ' /(run/nvidia-persistenced/socket|tmp/nvidia-mps) ' /proc/self/mountinfo \
                  | grep -c 'rw,nosuid,nodev,noexec'";
    for (env, want, what) in [
        (&[ALL][..], "socket\ncontrol\n2\n", "utility+compute"),
        (&[ALL, UTILITY], "socket\n1\n", "utility only: no MPS dir"),
        (
            &[ALL, COMPUTE],
            "control\n1\n",
            "compute only: no persistenced socket",
        ),
    ] {
        let (_, out, err) = run(&c, &g, env, script)?;
        assert_eq!(out, want, "{what}: {err}");
    }
    Ok(())
}

#[test]
fn mig_devices_by_index_get_their_access_nodes_and_mig_config_needs_privilege() -> Result<()> {
    let mig = |dir: &Path| {
        let driver = FakeDriver::builder()
            .gpus(2)
            .mig(0, &[(1, &[0, 1])])
            .build();
        Gpus::of(dir, driver)
    };
    let Some((c, g)) = setup_with(mig)? else {
        return Ok(());
    };
    // 0:1 is GI 1 / CI 1: mig-minors numbers gi1 3, gi1/ci0 4, gi1/ci1 5.
    let list = "ls /dev | grep '^nvidia[0-9]'; \
                stat -c '%n %t:%T' /dev/nvidia-caps/* | sed 's/ f1:/ 241:/'";
    let (code, out, err) = run(&c, &g, &["NVIDIA_VISIBLE_DEVICES=0:1"], list)?;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "nvidia0\n/dev/nvidia-caps/nvidia-cap3 241:3\n/dev/nvidia-caps/nvidia-cap5 241:5\n"
    );
    let env = ["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_MIG_CONFIG_DEVICES=all"];
    let refused = "cannot set NVIDIA_MIG_CONFIG_DEVICES in a non-privileged container";
    assert_failed(run(&c, &g, &env, "true")?, &[refused]);
    Ok(())
}

#[test]
fn cdi_annotations_and_the_isolation_profile() -> Result<()> {
    let Some((c, g)) = fake(4)? else {
        return Ok(());
    };
    // The Kubernetes profile: env requests only count for privileged containers.
    let strict = g.config_with("accept_envvar_when_unprivileged = false\n")?;
    let list = "ls /dev | grep '^nvidia[0-9]' | tr '\\n' ' '; echo";
    let with = |config: &str, extra: &[&str]| -> Result<String> {
        let run = CtrRun::new("cdi").rm().config(config).flags(extra);
        let (_, out, _) = run.sh(list).seen(&c)?;
        Ok(out.trim().to_owned())
    };
    // A device-plugin CDI annotation, resolved against the built-in inventory.
    let ann = "cdi.k8s.io/nvidia-device-plugin_1234=k8s.device-plugin.nvidia.com/gpu=2";
    let env_all = ["--env", ALL];
    let ann_all = ["--annotation", ann, "--env", ALL];
    for (config, flags, want, what) in [
        (
            &g.config,
            &["--annotation", ann][..],
            "nvidia2",
            "the annotation",
        ),
        (
            &g.config,
            &ann_all,
            "nvidia2",
            "the annotation wins over an image's =all",
        ),
        // Under the strict profile an unprivileged CUDA image's `all` gets nothing...
        (&strict, &env_all, "", "strict, unprivileged, =all"),
        // ...but its allocation (the annotation) is honoured, and a privileged container's
        // env too.
        (&strict, &ann_all, "nvidia2", "strict, the annotation"),
        (
            &strict,
            &["--privileged", "--env", ALL],
            "nvidia0 nvidia1 nvidia2 nvidia3",
            "strict, privileged",
        ),
    ] {
        assert_eq!(with(config, flags)?, want, "{what}");
    }
    Ok(())
}

#[test]
fn cdi_specs_on_disk_are_applied() -> Result<()> {
    let Some((c, g)) = fake(2)? else {
        return Ok(());
    };
    // The toolkit's way: a spec generated from the driver (`nvidia-ctk cdi generate`), here
    // by `containerd-shim-nvidia-v2 cdi generate`, stored as YAML; its create-symlinks and
    // update-ldcache hooks are then done by the shim.
    let generated = g.cdi_generate(&[])?;
    let spec = nvidia_shim_core::cdi::CdiSpec::parse(Path::new("generated.json"), &generated)?;
    assert_eq!(
        spec.devices.len(),
        2 * 2 + 1,
        "index and UUID per GPU, and all"
    );
    std::fs::write(
        g.driver.cdi_dir().join("nvidia.yaml"),
        serde_norway::to_string(&spec)?,
    )?;
    // A non-NVIDIA device: a node of its own, a file mount and env.
    let host_file = c.dir().join("fpga-firmware.bin");
    std::fs::write(&host_file, "bitstream")?;
    std::fs::write(
        g.driver.cdi_dir().join("fpga.json"),
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
    let ann = "--annotation=cdi.k8s.io/test=vendor.example/fpga=f0";
    let env = "NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=1";
    let (code, stdout, err) = g
        .ctr_run()
        .rm()
        .flags(&[ann])
        .env(&[env])
        .sh(script)
        .seen(&c)?;
    assert_eq!(code, Some(0), "{stdout}{err}");
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
    let (_, stdout, err) = g.ctr_run().rm().env(&[env]).sh(script).seen(&c)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0].trim(), "nvidia1", "{stdout}{err}");
    assert_eq!(lines[1], "FPGA= NVD=void");
    assert!(lines[4].starts_with("libcuda.so.580"), "{stdout}");
    assert_eq!(lines[5], "1", "libcuda.so.1 is in the ld cache: {stdout}");

    // An unknown CDI device fails Create, naming it, and leaves nothing behind.
    let unknown = g
        .ctr_run()
        .rm()
        .flags(&["--annotation=cdi.k8s.io/x=vendor.example/fpga=f9"]);
    let unknown = unknown.cmd(&["true"]);
    let unresolvable = "unresolvable CDI devices vendor.example/fpga=f9";
    assert_failed(unknown.seen(&c)?, &[unresolvable, unknown.id()]);
    Ok(())
}

#[test]
fn a_new_shim_uses_the_on_disk_inventory_cache_and_discards_a_corrupt_one() -> Result<()> {
    let Some((c, g)) = fake(2)? else {
        return Ok(());
    };
    let list = "ls /dev | grep '^nvidia[0-9]' | tr '\\n' ' '";
    let gpus = || -> Result<String> {
        let (code, out, err) = run(&c, &g, &[ALL], list)?;
        assert_eq!(code, Some(0), "{out}{err}");
        Ok(out.trim().to_owned())
    };
    assert_eq!(gpus()?, "nvidia0 nvidia1");
    let entries: Vec<_> = std::fs::read_dir(g.driver.cache_dir())?
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
    assert_eq!(gpus()?, "nvidia0");
    // A corrupt entry is discarded and rebuilt.
    std::fs::write(file, b"{\"format\": 1, \"key\": [")?;
    assert_eq!(gpus()?, "nvidia0 nvidia1");
    let rebuilt: serde_json::Value = serde_json::from_slice(&std::fs::read(file)?)?;
    assert_eq!(
        rebuilt["inventory"]["gpus"].as_array().map(Vec::len),
        Some(2)
    );
    Ok(())
}
