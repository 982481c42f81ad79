//! Hostile files and numbers through containerd (issues 22 and 24): every file a container
//! controls (a mount source named like a library, the image's `/etc/ld.so.cache`), the state
//! of the filesystem under it (full), its environment under the isolation profile, and CDI
//! spec files replaced under a long-lived shim. Each case is run through this shim and, where
//! runc has the behaviour, through `io.containerd.runc.v2` in the same test.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nvidia_shim_core_host::fixture::{mknod, FakeDriver};
use nvidia_shim_integration::checks::{
    alike, assert_clean, eventually, free_bytes, setup_from, stop_and_remove, task_pid,
    task_status, text,
};
use nvidia_shim_integration::command::answer;
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, Group};
use nvidia_shim_integration::gpu::{setup_with, Gpus};
use nvidia_shim_integration::image::{Entry, ImageSpec};
use nvidia_shim_integration::{is_root, leftovers};

/// A private containerd with the busybox image and `fake`'s GPUs, or `None` where the test
/// cannot run.
fn with_driver(fake: FakeDriver) -> Result<Option<(Containerd, Gpus)>> {
    setup_with(|dir| Gpus::of(dir, fake))
}

/// `VmHWM` (peak resident memory) of `pid` in kB.
fn peak_kb(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn mkfifo(path: &Path) -> Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; a FIFO in the test's directory.
    anyhow::ensure!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0, "mkfifo");
    Ok(())
}

#[test]
fn library_named_mount_sources_that_are_fifos_or_devices_never_hang_create() -> Result<()> {
    let Some((c, g)) = with_driver(FakeDriver::builder().gpus(1).build())? else {
        return Ok(());
    };
    let srv = c.dir().join("srv");
    std::fs::create_dir_all(&srv)?;
    let fifo = srv.join("libfoo.so");
    mkfifo(&fifo)?;
    // A character device with /dev/zero's numbers, made where a tenant's volume could be.
    let device = srv.join("libdev.so.1");
    mknod(&device, 1, 5);
    for (source, what) in [(&fifo, "FIFO"), (&device, "char device")] {
        let name = source.file_name().and_then(|n| n.to_str()).unwrap_or("x");
        let mount = format!(
            "type=bind,src={},dst=/opt/{name},options=rbind:ro",
            source.display()
        );
        let script = format!("test -e /opt/{name} && echo mounted");
        // Whether it is accepted, with what each said printed.
        alike(
            format_args!("a {what} source"),
            [RUNTIME, RUNC],
            |runtime| {
                let run = g
                    .ctr_run()
                    .runtime(runtime)
                    .rm()
                    .env(&["NVIDIA_VISIBLE_DEVICES=0"]);
                let run = run.flags(&["--mount", &mount]).sh(&script);
                // ctr's own limit (60 s) stands for "never returns".
                let out = run
                    .output(&c)
                    .with_context(|| format!("{what} source through {runtime}"))?;
                let answer = answer(&out, text(&out.stdout).trim());
                if runtime == RUNTIME {
                    assert_clean(&c, run.id(), run.id());
                }
                eprintln!("{what} through {runtime}: {answer}");
                Ok(out.status.success())
            },
        )?;
    }
    Ok(())
}

/// An `ld.so.cache` of `size` bytes whose 1,000 entries all name one string of nearly that
/// size as their library (glibc's new format).
fn hostile_ld_cache(size: usize) -> Vec<u8> {
    let entries = 1000usize;
    let header = 48;
    let strings_at = header + entries * 24;
    let short = b"/lib/x86_64-linux-gnu/libnothing.so\0";
    let big_at = strings_at + short.len();
    let big_len = size - big_at - 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(b"glibc-ld.so.cache1.1");
    out.extend_from_slice(&(entries as u32).to_le_bytes());
    out.extend_from_slice(&((size - strings_at) as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 20]);
    for _ in 0..entries {
        out.extend_from_slice(&0x0303i32.to_le_bytes());
        out.extend_from_slice(&(big_at as u32).to_le_bytes());
        out.extend_from_slice(&(strings_at as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes());
    }
    out.extend_from_slice(short);
    out.extend(std::iter::repeat_n(b'a', big_len));
    out.push(0);
    out
}

#[test]
fn a_hostile_one_megabyte_ld_cache_costs_the_shim_little_memory() -> Result<()> {
    let Some((c, g)) = with_driver(FakeDriver::builder().gpus(1).build())? else {
        return Ok(());
    };
    let mut image = ImageSpec::busybox()?;
    image.entries.push(Entry::File(
        "etc/ld.so.cache".into(),
        0o644,
        hostile_ld_cache(1 << 20),
    ));
    let hostile = "docker.io/library/nvtest-hostile-ldcache:latest";
    c.import(&image, hostile)?;
    let mut peaks = Vec::new();
    for image in [BUSYBOX_IMAGE, hostile] {
        let run = g
            .ctr_run()
            .detach()
            .env(&["NVIDIA_VISIBLE_DEVICES=0"])
            .image(image);
        let id = run.cmd(&["sleep", "600"]).start(&c)?;
        assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"), "{image}");
        let shim = leftovers::shim_daemon_pid(&c.socket()).context("the shim runs")?;
        let peak = peak_kb(shim);
        // What the container got: a cache that lists the injected libcuda, whatever the image's.
        let pid = task_pid(&c, &id).context("task pid")?;
        let cache = std::fs::read(format!("/proc/{pid}/root/etc/ld.so.cache"))?;
        let entries = nvidia_shim_core::ldcache::parse(&cache)
            .map_err(|e| anyhow::anyhow!("{image}: the container's cache: {e}"))?;
        assert!(
            entries.iter().any(|e| e.key == "libcuda.so.1"),
            "{image}: {} entries",
            entries.len()
        );
        eprintln!(
            "{image}: shim VmHWM {peak} kB; the container's cache is {} bytes",
            cache.len()
        );
        peaks.push(peak);
        stop_and_remove(&c, &id)?;
    }
    assert!(
        c.log().contains("/etc/ld.so.cache is left out"),
        "the image's cache was dropped, and said"
    );
    assert!(
        peaks[1] < 64 * 1024,
        "a 1 MB hostile cache took the shim to a peak of {} kB (a plain image's: {} kB)",
        peaks[1],
        peaks[0]
    );
    Ok(())
}

/// `ctr args` run inside containerd's mount namespace (where its snapshots are mounted, as
/// `ctr` mounts an image's rootfs to read its users and groups).
fn ctr_in_ns(c: &Containerd, args: &[&str]) -> Result<std::process::Output> {
    let pid = c.pid().context("containerd runs")?.to_string();
    let ctr = c.ctr_cmd(args);
    let mut cmd = std::process::Command::new("nsenter");
    cmd.args(["-t", &pid, "-m", "--"])
        .arg(ctr.get_program())
        .args(ctr.get_args())
        .envs(ctr.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().context("spawn nsenter ctr")?;
    nvidia_shim_integration::containerd::wait_output(&mut child, std::time::Duration::from_secs(60))
        .with_context(|| format!("ctr {args:?}"))
}

/// Fills the filesystem of `dir` with `dir/filler` until nothing is left.
fn fill(dir: &Path) -> Result<PathBuf> {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler)?;
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Whatever a partial block left.
    let _ = f.write_all(&[0u8; 512]);
    Ok(filler)
}

/// The SONAMEs the ld cache of running task `id` lists.
fn cache_keys(c: &Containerd, id: &str) -> Result<Vec<String>> {
    let pid = task_pid(c, id).context("task pid")?;
    let cache = std::fs::read(format!("/proc/{pid}/root/etc/ld.so.cache"))
        .with_context(|| format!("{id}: read its /etc/ld.so.cache"))?;
    Ok(nvidia_shim_core::ldcache::parse(&cache)
        .map_err(|e| anyhow::anyhow!("{id}: its cache ({} bytes): {e}", cache.len()))?
        .iter()
        .map(|e| e.key.to_string())
        .collect())
}

#[test]
fn a_full_disk_fails_create_and_keeps_the_images_ld_cache() -> Result<()> {
    // containerd's root (content and snapshots: the containers' rootfs) on a small tmpfs of
    // its own mount namespace.
    let Some(c) = setup_from(Containerd::builder().tmpfs("root", "96m")) else {
        return Ok(());
    };
    // A glibc image with the ld cache its ldconfig made (the host's, which lists its libc).
    let mut image = ImageSpec::glibc()?;
    image.entries.push(Entry::File(
        "etc/ld.so.cache".into(),
        0o644,
        std::fs::read("/etc/ld.so.cache").context("the host's ld cache")?,
    ));
    let name = "docker.io/library/nvtest-glibc-ldcache:latest";
    c.import(&image, name)?;
    let g = Gpus::of(c.dir(), FakeDriver::builder().gpus(1).build())?;
    let pid = c.pid().context("containerd runs")?;
    let root = PathBuf::from(format!(
        "/proc/{pid}/root{}",
        c.dir().join("root").display()
    ));
    let mut outcomes = Vec::new();
    for runtime in [RUNTIME, RUNC] {
        let create = g.ctr_run().create_only().runtime(runtime).image(name);
        let create = create
            .env(&["NVIDIA_VISIBLE_DEVICES=0"])
            .cmd(&["sleep", "600"]);
        let id = create.id();
        let args = create.args();
        let out = ctr_in_ns(&c, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let filler = fill(&root)?;
        eprintln!("{runtime}: {} bytes free", free_bytes(&root)?);
        let full = ctr_in_ns(&c, &["task", "start", "-d", id])?;
        let answer = answer(&full, "started");
        outcomes.push(format!("{runtime} on a full disk: {answer}"));
        if runtime == RUNTIME {
            assert!(!full.status.success(), "{answer}");
            assert!(
                answer.contains("No space left on device") && answer.contains(id),
                "{answer}"
            );
            eventually("the failed task's shim to go", || {
                leftovers::shim_pids(&c.socket()).is_empty()
            })?;
        } else {
            let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            let _ = eventually("runc's task to stop", || {
                task_status(&c, id).as_deref() != Some("RUNNING")
            });
            let _ = c.ctr(&["task", "rm", "-f", id]);
        }
        std::fs::remove_file(&filler)?;
        // The same container, with room again: its image's cache still lists glibc's libraries.
        let again = ctr_in_ns(&c, &["task", "start", "-d", id])?;
        assert!(again.status.success(), "{runtime}: {}", text(&again.stderr));
        let keys = cache_keys(&c, id)?;
        let has = |k: &str| keys.iter().any(|e| e == k);
        outcomes.push(format!(
            "{runtime} after space was freed: {} entries, libc.so.6 {}, libcuda.so.1 {}",
            keys.len(),
            has("libc.so.6"),
            has("libcuda.so.1")
        ));
        assert!(has("libc.so.6"), "{runtime}: {outcomes:#?}");
        assert_eq!(has("libcuda.so.1"), runtime == RUNTIME, "{outcomes:#?}");
        stop_and_remove(&c, id)?;
    }
    eprintln!("{outcomes:#?}");
    Ok(())
}

#[test]
fn env_requests_of_unprivileged_containers_are_ignored_under_the_isolation_profile() -> Result<()> {
    let fake = FakeDriver::builder().gpus(2).infiniband().build();
    let Some((c, g)) = with_driver(fake)? else {
        return Ok(());
    };
    let default = g.config.clone();
    let strict = g.config_with("accept_envvar_when_unprivileged = false\n")?;
    let ann = "cdi.k8s.io/nvidia-device-plugin_1=k8s.device-plugin.nvidia.com/gpu=1";
    let list = "ls /dev | grep '^nvidia[0-9]' | tr '\\n' ' '; echo; \
                ls /dev/infiniband 2>/dev/null | tr '\\n' ' '; echo";
    let with = |runtime: &str, config: &str, extra: &[&str]| -> Result<(String, String)> {
        let run = CtrRun::new("env").runtime(runtime).config(config).rm();
        let run = run
            .annotation(ann)
            .env(&["NVIDIA_MOFED=enabled"])
            .flags(extra)
            .sh(list);
        let out = run.output(&c)?;
        assert!(
            out.status.success(),
            "{runtime} {extra:?}: {}",
            text(&out.stderr)
        );
        if runtime == RUNTIME {
            assert_clean(&c, run.id(), run.id());
        }
        let stdout = text(&out.stdout);
        let mut lines = stdout.lines().map(|l| l.trim().to_owned());
        Ok((
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        ))
    };
    let both = "rdma_cm uverbs0 uverbs1";
    // The toolkit's default: NVIDIA_MOFED=enabled brings the host's infiniband nodes.
    assert_eq!(
        with(RUNTIME, &default, &[])?,
        ("nvidia1".to_owned(), both.to_owned())
    );
    // The isolation profile: the device plugin's allocation (the annotation) is honoured, the
    // unprivileged container's own variables are not, whichever they are.
    let strict_env = [
        "--env",
        "NVIDIA_VISIBLE_DEVICES=all",
        "--env",
        "NVIDIA_MIG_CONFIG_DEVICES=all",
        "--env",
        "NVIDIA_GDRCOPY=enabled",
    ];
    assert_eq!(
        with(RUNTIME, &strict, &[])?,
        ("nvidia1".to_owned(), String::new()),
        "NVIDIA_MOFED of an unprivileged container is ignored"
    );
    let (gpus, ib) = with(RUNTIME, &strict, &strict_env)?;
    let (runc_gpus, runc_ib) = with(RUNC, &strict, &strict_env)?;
    eprintln!("strict, unprivileged: this shim [{gpus}] [{ib}]; runc [{runc_gpus}] [{runc_ib}]");
    assert_eq!(gpus, "nvidia1");
    assert_eq!(
        ib, "",
        "NVIDIA_MOFED of an unprivileged container is ignored"
    );
    assert_eq!(ib, runc_ib, "as under runc, no infiniband node");
    assert!(
        c.log().contains("NVIDIA_MOFED ignored: unprivileged"),
        "said in the shim's log"
    );
    // A privileged container's variables still count.
    assert_eq!(
        with(RUNTIME, &strict, &["--privileged"])?,
        ("nvidia1".to_owned(), both.to_owned())
    );
    Ok(())
}

/// `spec` (a CDI spec as JSON) with the devices named `a` and `b` swapping names.
fn swap_devices(spec: &str, a: &str, b: &str) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(spec)?;
    for d in v["devices"].as_array_mut().context("devices")? {
        let name = d["name"].as_str().unwrap_or_default().to_owned();
        if name == a {
            d["name"] = b.into();
        } else if name == b {
            d["name"] = a.into();
        }
    }
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

#[test]
fn a_replaced_cdi_spec_is_read_again_by_a_long_lived_shim() -> Result<()> {
    let Some((c, g)) = with_driver(FakeDriver::builder().gpus(2).build())? else {
        return Ok(());
    };
    let spec_path = g.driver.cdi_dir().join("nvidia.json");
    let output = spec_path.display().to_string();
    g.cdi_generate(&["--hooks", "none", "--output", &output])?;
    let group = Group::start(&c, "grp", &["sleep", "600"])?;
    let shim = leftovers::shim_daemon_pid(&c.socket()).context("the group's shim")?;
    let gpus = || -> Result<String> {
        let run = group.run(&["--rm"]).config(&g.config);
        let run = run.annotation("cdi.k8s.io/test=nvidia.com/gpu=0");
        let out = run.sh("ls /dev | grep '^nvidia[0-9]'").ok(&c)?;
        assert_eq!(
            leftovers::shim_daemon_pid(&c.socket()),
            Some(shim),
            "one shim serves the group"
        );
        Ok(out.trim().to_owned())
    };
    assert_eq!(gpus()?, "nvidia0");
    assert_eq!(gpus()?, "nvidia0", "unchanged");
    // Replaced by a new file (as `cdi generate --output` does): "0" is now GPU 1.
    let original = std::fs::read_to_string(&spec_path)?;
    let swapped = swap_devices(&original, "0", "1")?;
    let tmp = g.driver.cdi_dir().join(".nvidia.json.new");
    std::fs::write(&tmp, &swapped)?;
    std::fs::rename(&tmp, &spec_path)?;
    assert_eq!(gpus()?, "nvidia1", "the new file is read");
    // Rewritten in place with the same size: "0" is GPU 0 again.
    assert_eq!(original.len(), swapped.len());
    std::fs::write(&spec_path, &original)?;
    assert_eq!(gpus()?, "nvidia0", "the rewritten file is read");
    group.remove(&c)
}

#[test]
fn cdi_generate_output_is_never_seen_empty_or_partial() -> Result<()> {
    if !is_root("the fake driver's device nodes") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let g = Gpus::of(dir.path(), FakeDriver::builder().gpus(8).build())?;
    let output = dir.path().join("cdi/nvidia.json");
    std::fs::create_dir_all(output.parent().context("parent")?)?;
    let out_arg = output.display().to_string();
    let generate = || -> Result<()> {
        g.cdi_generate(&["--hooks", "none", "--output", &out_arg])?;
        Ok(())
    };
    generate()?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (stop, output) = (stop.clone(), output.clone());
        std::thread::spawn(move || {
            let (mut reads, mut bad) = (0u64, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = std::fs::read(&output).unwrap_or_default();
                reads += 1;
                if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
                    bad.push(bytes.len());
                }
            }
            (reads, bad)
        })
    };
    for _ in 0..30 {
        generate()?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, bad) = reader.join().map_err(|_| anyhow::anyhow!("reader"))?;
    eprintln!(
        "{reads} reads while generate ran 30 times; {} bad",
        bad.len()
    );
    assert!(reads > 0);
    assert!(
        bad.is_empty(),
        "{} of {reads} reads saw an empty or partial spec (sizes {:?})",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
    let left: Vec<_> = std::fs::read_dir(output.parent().context("parent")?)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temp file is left: {left:?}");
    Ok(())
}
