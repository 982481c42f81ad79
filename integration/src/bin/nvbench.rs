//! Benchmark: `io.containerd.nvidia.v2` against the Go runc shim (`io.containerd.runc.v2`) in
//! the same run, on the same private containerd.
//!
//! `nvbench [--pairs N] [--shim PATH]` prints, for `ctr run --rm IMG ID /bin/true`, the median
//! wall time of each runtime over N interleaved pairs (order alternating) and their ratio; then
//! the resident memory (VmRSS and PSS, every process of the shim: ours has a zygote) while one
//! container sleeps; the GPU injection overhead; then, through containerd's CRI plugin, pod start
//! time and shim memory per pod against a runc-shim handler. Run as root, with a release build
//! of the shim. containerd runs at its default log level (info).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, RUNTIME};
use nvidia_shim_integration::cri::{
    ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER, HANDLER_RUNC,
};
use nvidia_shim_integration::{leftovers, unique_id};

const RUNC: &str = "io.containerd.runc.v2";
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
    run_true_with(c, runtime, &[])
}

/// `ctr run --rm` of `/bin/true` with extra `ctr run` flags.
fn run_true_with(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<Duration> {
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
    Ok(d)
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

/// Median wall time of a GPU container (`all`, utility+compute) minus the same container
/// without a GPU request, through this shim, `pairs` interleaved pairs. `config` is a shim
/// config file (None: the shim's defaults, for a host with a real driver).
fn injection_overhead(
    c: &Containerd,
    pairs: usize,
    config: Option<&str>,
) -> Result<(Duration, Duration)> {
    let mut gpu_flags = vec!["--env", "NVIDIA_VISIBLE_DEVICES=all"];
    let mut plain_flags = vec![];
    if let Some(cfg) = config {
        gpu_flags.extend_from_slice(&["--runtime-config-path", cfg]);
        plain_flags.extend_from_slice(&["--runtime-config-path", cfg]);
    }
    run_true_with(c, RUNTIME, &gpu_flags)?; // discovery happens once per shim; warm the page cache
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
    Ok((median(&mut gpu), median(&mut plain)))
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
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shim = root.join("target/release/containerd-shim-nvidia-v2");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pairs" => pairs = args.next().context("--pairs N")?.parse()?,
            "--shim" => shim = PathBuf::from(args.next().context("--shim PATH")?),
            other => bail!("unknown argument {other}; usage: nvbench [--pairs N] [--shim PATH]"),
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

    // GPU injection overhead: on the host's driver when there is one, else on a fake 4-GPU
    // driver (real ELF libraries, mknod'ed nodes, fake /proc tree).
    let (label, config, _fake) = if std::path::Path::new("/dev/nvidiactl").exists() {
        ("host driver", None, None)
    } else {
        let fake = nvidia_shim_core::discover::fixture::FakeDriver::builder()
            .gpus(4)
            .build();
        let cfg = c.dir().join("bench-gpu.toml");
        std::fs::write(&cfg, fake.shim_config())?;
        (
            "fake 4-GPU driver",
            Some(cfg.display().to_string()),
            Some(fake),
        )
    };
    let (gpu, plain) = injection_overhead(&c, pairs, config.as_deref())?;
    println!(
        "GPU injection overhead ({label}), {pairs} interleaved pairs, ctr run --rm /bin/true:"
    );
    println!(
        "  NVIDIA_VISIBLE_DEVICES=all   median {:>7.1} ms",
        gpu.as_secs_f64() * 1e3
    );
    println!(
        "  no GPU request               median {:>7.1} ms",
        plain.as_secs_f64() * 1e3
    );
    println!(
        "  overhead                            {:>7.1} ms",
        (gpu.as_secs_f64() - plain.as_secs_f64()) * 1e3
    );
    drop(c);
    pod_benchmark(&shim, pairs)
}
