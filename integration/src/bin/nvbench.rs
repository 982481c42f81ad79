//! Benchmark: `io.containerd.nvidia.v2` against the Go runc shim (`io.containerd.runc.v2`) in
//! the same run, on the same private containerd.
//!
//! `nvbench [--pairs N] [--shim PATH] [--gpu-only]` prints, for `ctr run --rm IMG ID /bin/true`,
//! the median wall time of each runtime over N interleaved pairs (order alternating) and their
//! ratio; then the resident memory (VmRSS and PSS, every process of the shim: ours has a zygote)
//! while one container sleeps; the GPU injection overhead (the host's driver when there is one;
//! else a fake 4-GPU driver, and Debian's packaged driver userspace with a warm and a cold
//! inventory cache), with the shim's own Create and injection times from its log; then, through
//! containerd's CRI plugin, pod start time and shim memory per pod against a runc-shim handler.
//! Run as root, with a release build of the shim. containerd runs at its default log level
//! (info).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvidia_shim_core_host::fixture::FakeDriver;
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, RUNC, RUNTIME};
use nvidia_shim_integration::cri::{
    ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER, HANDLER_RUNC,
};
use nvidia_shim_integration::debian_driver::debian_driver;
use nvidia_shim_integration::{leftovers, unique_id};

/// Pods running at once for the per-pod memory figure.
const PODS: usize = 8;
/// How long containers run before their shims' memory is read: well past the moment our shim,
/// quiet for 300 ms, releases the code it ran at start-up (`shim/src/working_set.rs`), so that
/// both runtimes are measured at rest.
const SETTLE: Duration = Duration::from_secs(2);

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints two medians under `title` and their ratio.
fn print_times(title: &str, (a, ma): (&str, Duration), (b, mb): (&str, Duration)) {
    println!("{title}:");
    println!("  {a:<26} median {:>7.1} ms", ma.as_secs_f64() * 1e3);
    println!("  {b:<26} median {:>7.1} ms", mb.as_secs_f64() * 1e3);
    println!(
        "  ratio nvidia/runc               {:>7.2}",
        ma.as_secs_f64() / mb.as_secs_f64()
    );
}

/// (VmRSS kB, PSS kB, process count).
type Memory = (u64, u64, usize);

/// Prints two memory figures under `title` and their ratios.
fn print_memory(title: &str, (a, ma): (&str, Memory), (b, mb): (&str, Memory)) {
    println!("{title}:");
    for (name, (rss, pss, n)) in [(a, ma), (b, mb)] {
        println!(
            "  {name:<26} VmRSS {:>6.1} MB  PSS {:>6.1} MB  ({n} processes)",
            rss as f64 / 1024.0,
            pss as f64 / 1024.0
        );
    }
    println!(
        "  ratio nvidia/runc               VmRSS {:.2}  PSS {:.2}",
        ma.0 as f64 / mb.0 as f64,
        ma.1 as f64 / mb.1 as f64
    );
}

fn run_true(c: &Containerd, runtime: &str) -> Result<Duration> {
    run_true_with(c, runtime, &[]).map(|(d, _)| d)
}

/// `ctr run --rm` of `/bin/true` with extra `ctr run` flags: its wall time and container id.
fn run_true_with(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<(Duration, String)> {
    let id = unique_id("bench");
    let mut args = vec!["run", "--rm", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX_IMAGE, &id, "/bin/true"]);
    let t = Instant::now();
    let out = c.ctr(&args)?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{runtime}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((d, id))
}

/// (VmRSS kB, PSS kB, process count) of the shim serving a sleeping container.
fn shim_memory(c: &Containerd, runtime: &str, exe: &str) -> Result<Memory> {
    let id = unique_id("mem");
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        runtime,
        BUSYBOX_IMAGE,
        &id,
        "sleep",
        "600",
    ])?;
    if !out.status.success() {
        bail!("{runtime}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::thread::sleep(SETTLE);
    let sock = c.socket().to_string_lossy().into_owned();
    let pids = leftovers::processes_of(exe, &sock);
    let (rss, pss) = pids
        .iter()
        .map(|&p| leftovers::memory_kb(p))
        .fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
    let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
    for _ in 0..100 {
        if c.ctr(&["task", "rm", &id])
            .map(|o| o.status.success())
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.ctr(&["container", "rm", &id]);
    Ok((rss, pss, pids.len()))
}

/// The milliseconds the shim logged for container `id` on the line containing `what`
/// (`container <id>: created, init pid N, in X ms`).
fn logged_ms(log: &str, id: &str, what: &str) -> Option<f64> {
    let prefix = format!("container {id}: {what}");
    let line = log.lines().find(|l| l.contains(&prefix))?;
    let tail = &line[line.find(&prefix)?..];
    let (_, ms) = tail.rsplit_once(" in ")?;
    ms.split_whitespace().next()?.parse().ok()
}

fn median_ms(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The GPU injection overhead on one driver: the median wall time of a GPU container (`all`,
/// utility+compute) and of the same container without a GPU request, through this shim,
/// `pairs` interleaved pairs, with the Create times and the injection step the shim logged.
/// `config` is a shim config file (None: the shim's defaults, for a host with a real driver).
fn gpu_overhead(c: &Containerd, pairs: usize, label: &str, config: Option<&str>) -> Result<()> {
    let mut gpu_flags = vec!["--env", "NVIDIA_VISIBLE_DEVICES=all"];
    let mut plain_flags = vec![];
    if let Some(cfg) = config {
        gpu_flags.extend_from_slice(&["--runtime-config-path", cfg]);
        plain_flags.extend_from_slice(&["--runtime-config-path", cfg]);
    }
    run_true_with(c, RUNTIME, &gpu_flags)?; // warm the page cache (and the inventory cache)
    let (mut gpu, mut plain) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        if i % 2 == 0 {
            gpu.push(run_true_with(c, RUNTIME, &gpu_flags)?);
            plain.push(run_true_with(c, RUNTIME, &plain_flags)?);
        } else {
            plain.push(run_true_with(c, RUNTIME, &plain_flags)?);
            gpu.push(run_true_with(c, RUNTIME, &gpu_flags)?);
        }
    }
    let log = c.log();
    let logged = |runs: &[(Duration, String)], what: &str| -> f64 {
        let mut v: Vec<f64> = runs
            .iter()
            .filter_map(|(_, id)| logged_ms(&log, id, what))
            .collect();
        median_ms(&mut v)
    };
    let create = (logged(&gpu, "created"), logged(&plain, "created"));
    let inject = logged(&gpu, "injected GPUs");
    // Each pair ran back to back: the median of the pairs' differences is steadier than the
    // difference of the medians when the machine's speed drifts.
    let mut diffs: Vec<f64> = gpu
        .iter()
        .zip(&plain)
        .map(|((g, _), (p, _))| (g.as_secs_f64() - p.as_secs_f64()) * 1e3)
        .collect();
    let per_pair = median_ms(&mut diffs);
    let mut gpu: Vec<Duration> = gpu.into_iter().map(|(d, _)| d).collect();
    let mut plain: Vec<Duration> = plain.into_iter().map(|(d, _)| d).collect();
    let (g, p) = (median(&mut gpu), median(&mut plain));
    println!(
        "GPU injection overhead ({label}), {pairs} interleaved pairs, ctr run --rm /bin/true:"
    );
    println!(
        "  NVIDIA_VISIBLE_DEVICES=all   median {:>7.1} ms",
        g.as_secs_f64() * 1e3
    );
    println!(
        "  no GPU request               median {:>7.1} ms",
        p.as_secs_f64() * 1e3
    );
    println!(
        "  overhead                            {:>7.1} ms (difference of the medians)",
        (g.as_secs_f64() - p.as_secs_f64()) * 1e3
    );
    println!("  overhead per pair, median           {per_pair:>7.1} ms");
    println!(
        "  shim's Task Create (its log)  GPU {:>5.1} ms, no GPU {:>5.1} ms, difference {:>5.1} ms; injection step {:>5.1} ms",
        create.0,
        create.1,
        create.0 - create.1,
        inject
    );
    Ok(())
}

/// The GPU overhead benchmarks this machine can run: the host's driver, or a fake 4-GPU
/// driver and Debian's packaged userspace (fake kernel side) with a warm and a cold cache.
fn gpu_benchmarks(c: &Containerd, pairs: usize) -> Result<()> {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        return gpu_overhead(c, pairs, "host driver", None);
    }
    let fake = FakeDriver::builder().gpus(4).build();
    let cfg = c.dir().join("bench-fake.toml");
    std::fs::write(&cfg, fake.shim_config())?;
    gpu_overhead(
        c,
        pairs,
        "fake 4-GPU driver",
        Some(&cfg.display().to_string()),
    )?;
    let debian = debian_driver()?;
    let kernel = debian.kernel(1);
    let warm = c.dir().join("bench-debian.toml");
    std::fs::write(&warm, kernel.shim_config())?;
    gpu_overhead(
        c,
        pairs,
        &format!(
            "Debian's packaged driver {}, 1 GPU, warm inventory cache",
            debian.version
        ),
        Some(&warm.display().to_string()),
    )?;
    // No on-disk cache: every shim (one per `ctr run`) discovers the driver, NVML included.
    let cold = c.dir().join("bench-debian-cold.toml");
    let text: String = kernel
        .shim_config()
        .lines()
        .filter(|l| !l.starts_with("cache_dir"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&cold, format!("{text}cache_dir = \"\"\n"))?;
    gpu_overhead(
        c,
        pairs,
        &format!(
            "Debian's packaged driver {}, 1 GPU, no inventory cache (cold)",
            debian.version
        ),
        Some(&cold.display().to_string()),
    )
}

/// Pod start through the CRI plugin (RunPodSandbox + CreateContainer + StartContainer of one
/// sleeping container, host network so that CNI's cost does not dilute the runtimes'), our
/// handler vs one using the runc shim, `pairs` interleaved pairs; then the shim memory per pod.
fn pod_benchmark(shim: &std::path::Path, pairs: usize) -> Result<()> {
    let cri = Cri::start_with(shim, &HandlerConfigs::default())?;
    let opts = PodOptions {
        host_network: true,
        ..PodOptions::default()
    };
    let app = ContainerOptions::sh("app", "exec sleep 600");
    // Starts a pod with one container; returns (time to running, pod id).
    let start = |handler: &str| -> Result<(Duration, String)> {
        let name = unique_id("pod");
        let t = Instant::now();
        let pod = cri.run_pod(&name, handler, &opts)?;
        cri.run_container(&pod, &name, &opts, &app)?;
        Ok((t.elapsed(), pod))
    };
    let once = |handler: &str| -> Result<Duration> {
        let (d, pod) = start(handler)?;
        cri.remove_pod(&pod)?;
        Ok(d)
    };
    for _ in 0..2 {
        once(HANDLER)?;
        once(HANDLER_RUNC)?;
    }
    let (mut ours, mut runc) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        if i % 2 == 0 {
            ours.push(once(HANDLER)?);
            runc.push(once(HANDLER_RUNC)?);
        } else {
            runc.push(once(HANDLER_RUNC)?);
            ours.push(once(HANDLER)?);
        }
    }
    let (mo, mr) = (median(&mut ours), median(&mut runc));
    print_times(
        &format!("CRI pod start (RunPodSandbox + CreateContainer + StartContainer, host network), {pairs} interleaved pairs"),
        (&format!("handler {HANDLER}"), mo),
        (&format!("handler {HANDLER_RUNC}"), mr),
    );

    // Shim memory per pod (sandbox + one container), with one pod and with PODS pods running:
    // every process of the pods' shims. With several pods the binary's pages are shared, so
    // PSS per pod approaches what each additional pod really costs.
    let sock = cri.containerd.socket().to_string_lossy().into_owned();
    let per_pod = |handler: &str, exe: &str, n: usize| -> Result<Memory> {
        let pods: Vec<String> = (0..n)
            .map(|_| start(handler).map(|(_, p)| p))
            .collect::<Result<_>>()?;
        std::thread::sleep(SETTLE);
        let pids = leftovers::processes_of(exe, &sock);
        let (rss, pss) = pids
            .iter()
            .map(|&p| leftovers::memory_kb(p))
            .fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
        for pod in &pods {
            cri.remove_pod(pod)?;
        }
        let n = n as u64;
        Ok((rss / n, pss / n, pids.len()))
    };
    for n in [1, PODS] {
        let ours = per_pod(HANDLER, "containerd-shim-nvidia-v2", n)?;
        let runc = per_pod(HANDLER_RUNC, "containerd-shim-runc-v2", n)?;
        print_memory(
            &format!("shim memory per pod (sandbox + one container), {n} pod(s) running"),
            (&format!("handler {HANDLER}"), ours),
            (&format!("handler {HANDLER_RUNC}"), runc),
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut pairs = 20usize;
    let mut gpu_only = false;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shim = root.join("target/release/containerd-shim-nvidia-v2");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pairs" => pairs = args.next().context("--pairs N")?.parse()?,
            "--shim" => shim = PathBuf::from(args.next().context("--shim PATH")?),
            "--gpu-only" => gpu_only = true,
            other => bail!(
                "unknown argument {other}; usage: nvbench [--pairs N] [--shim PATH] [--gpu-only]"
            ),
        }
    }
    if !shim.exists() {
        bail!(
            "{} missing: cargo build --release -p containerd-shim-nvidia-v2",
            shim.display()
        );
    }
    // containerd's default log level: at debug it makes both shims log every step.
    let c = Containerd::start_with_level(&shim, "info")?;
    c.import_busybox()?;
    if gpu_only {
        return gpu_benchmarks(&c, pairs);
    }
    // Warm both paths (page cache, snapshotter) before measuring.
    for _ in 0..2 {
        run_true(&c, RUNTIME)?;
        run_true(&c, RUNC)?;
    }
    let (mut ours, mut runc) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        if i % 2 == 0 {
            ours.push(run_true(&c, RUNTIME)?);
            runc.push(run_true(&c, RUNC)?);
        } else {
            runc.push(run_true(&c, RUNC)?);
            ours.push(run_true(&c, RUNTIME)?);
        }
    }
    let (mo, mr) = (median(&mut ours), median(&mut runc));
    print_times(
        &format!("ctr run --rm {BUSYBOX_IMAGE} /bin/true, {pairs} interleaved pairs"),
        (RUNTIME, mo),
        (RUNC, mr),
    );
    print_memory(
        "shim memory while one container sleeps (all processes of the shim)",
        (
            RUNTIME,
            shim_memory(&c, RUNTIME, "containerd-shim-nvidia-v2")?,
        ),
        (RUNC, shim_memory(&c, RUNC, "containerd-shim-runc-v2")?),
    );

    gpu_benchmarks(&c, pairs)?;
    drop(c);
    pod_benchmark(&shim, pairs)
}
