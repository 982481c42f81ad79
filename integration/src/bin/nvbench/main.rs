//! Benchmark: `io.containerd.nvidia.v2` against the Go runc shim (`io.containerd.runc.v2`) in
//! the same run, on the same private containerd.
//!
//! `nvbench [--pairs N] [--shim PATH] [--compare REV] [--only SECTIONS] [--cycles N]
//! [--toolkit PATH] [--host-mounts N]` prints, each section comparing the runtimes in the same containerd,
//! interleaved (the order rotating every round):
//! - `run`: `ctr run --rm IMG ID /bin/true`, the median wall time of each runtime and the
//!   ratios;
//! - `phases`: the shims' own time per container, phase by phase (start exec, Create, Start,
//!   Wait, Delete, Shutdown, delete exec), each shim driven through its Task API as containerd
//!   drives it ([`phases`]);
//! - `memory`: VmRSS and PSS of every process of the shim (ours has a zygote), 2 s after one
//!   sleeping container started;
//! - `growth`: the same after each of two runs of N exec cycles in that container
//!   (`--cycles`, default 1000);
//! - `gpu`: the GPU injection overhead (the host's driver when there is one; else a fake 4-GPU
//!   driver, and Debian's packaged driver userspace with a warm and a cold inventory cache),
//!   with the shim's Create and injection times (median, p90) from its log, and against the
//!   NVIDIA Container Toolkit (`nvidia-container-runtime` as runc's binary) where it is
//!   installed;
//! - `cri`: through containerd's CRI plugin, pod start time and shim memory per pod against a
//!   runc-shim handler.
//!
//! `--host-mounts N` runs everything in a mount namespace of nvbench's own with N more mounts
//! ([`host_mounts`]), as on a node with many pods.
//!
//! `--compare REV` builds the shim of git revision REV beside the working tree
//! ([`compare`]) and runs it as a third runtime everywhere, so a change states its effect
//! against its parent. Run as root, with a release build of the shim. containerd runs at its
//! default log level (info).

mod compare;
mod host_mounts;
mod phases;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nvidia_shim_core_host::fixture::FakeDriver;
use nvidia_shim_integration::checks::sleeper;
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, RUNC, RUNTIME};
use nvidia_shim_integration::cri::{
    ContainerOptions, Cri, HandlerConfigs, PodOptions, HANDLER, HANDLER_RUNC,
};
use nvidia_shim_integration::ctr_run::CtrRun;
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A runtime measured: this tree's shim, a revision's (`--compare`) or the Go runc shim.
struct Subject {
    /// How it is named in the output.
    label: String,
    /// The runtime type `ctr run --runtime` names.
    runtime: &'static str,
    /// Its shim binary (for the phase benchmark).
    binary: PathBuf,
    /// The executable names of its processes (for memory).
    exes: &'static [&'static str],
}

impl Subject {
    fn is_runc(&self) -> bool {
        self.runtime == RUNC
    }
}

/// Runs `f` for every subject `rounds` times, in the order [`round_order`] gives; returns each
/// subject's results in subject order.
fn interleaved<T>(
    subjects: &[Subject],
    rounds: usize,
    mut f: impl FnMut(&Subject) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    let mut out: Vec<Vec<T>> = subjects
        .iter()
        .map(|_| Vec::with_capacity(rounds))
        .collect();
    for round in 0..rounds {
        for i in round_order(round, subjects.len()) {
            out[i].push(f(&subjects[i])?);
        }
    }
    Ok(out)
}

/// The order of `n` subjects (at most 3: this tree, a revision, the runc shim) in round
/// `round`, such that in the runs of consecutive rounds, taken as one sequence, every subject
/// runs right after every other equally often and never right after itself. What a run leaves
/// behind (the kernel's deferred clean-up of a cgroup or a network namespace, a Go shim's
/// exit) slows the run after it, so the run before must be the same mix for every subject.
///
/// Round `r` visits the subjects in steps of `s = 1 + r % (n - 1)`: `0, s, 2s, ...` (mod n,
/// a permutation for n prime), and its last, `-s`, is followed by the next round's first, `0`:
/// a step of `s` again. So each round gives every "a then a + s" once, and every `n - 1`
/// rounds every ordered pair. (Rotating and reversing rounds balanced the pairs inside them
/// but not across their boundaries: in 40 rounds this tree ran after the runc shim 19 times
/// and the revision 14, and the same binary measured 1.3 ms slower in Create in this tree's
/// slot.)
fn round_order(round: usize, n: usize) -> Vec<usize> {
    assert!(n <= 3, "round_order balances at most 3 subjects");
    if n < 2 {
        return (0..n).collect();
    }
    let step = 1 + round % (n - 1);
    (0..n).map(|k| k * step % n).collect()
}

/// Prints one median per subject under `title`, then each other subject's ratio to the runc
/// shim and this tree's to the revision's.
fn print_medians(title: &str, subjects: &[Subject], medians: &[Duration]) {
    println!("{title}:");
    for (s, m) in subjects.iter().zip(medians) {
        println!("  {:<34} median {:>7.1} ms", s.label, ms(*m));
    }
    print_ratios(subjects, medians.iter().map(|d| d.as_secs_f64()).collect());
}

/// The ratios of `values` (one per subject): each shim of ours to runc's, ours to the
/// revision's.
fn print_ratios(subjects: &[Subject], values: Vec<f64>) {
    let runc = subjects.iter().position(Subject::is_runc);
    for (i, s) in subjects.iter().enumerate() {
        if let Some(r) = runc.filter(|&r| r != i) {
            println!(
                "  ratio {:<28} {:>7.2}",
                format!("{}/runc", s.label),
                values[i] / values[r]
            );
        }
    }
    if subjects.len() == 3 {
        println!(
            "  ratio {:<28} {:>7.2}",
            format!("{}/{}", subjects[0].label, subjects[1].label),
            values[0] / values[1]
        );
    }
}

/// (VmRSS kB, PSS kB, process count).
type Memory = (u64, u64, usize);

fn print_memory(title: &str, subjects: &[Subject], figures: &[Memory]) {
    println!("{title}:");
    for (s, (rss, pss, n)) in subjects.iter().zip(figures) {
        println!(
            "  {:<34} VmRSS {:>6.1} MB  PSS {:>6.1} MB  ({n} processes)",
            s.label,
            *rss as f64 / 1024.0,
            *pss as f64 / 1024.0
        );
    }
    println!("  (targets: every process of our shim together at most 3 MB VmRSS, 2 MB PSS)");
}

/// `ctr run --rm` of `/bin/true` with extra `ctr run` flags: its wall time and container id.
fn run_true_with(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<(Duration, String)> {
    let run = CtrRun::new("bench")
        .runtime(runtime)
        .rm()
        .flags(extra)
        .cmd(&["/bin/true"]);
    let t = Instant::now();
    let out = run.output(c)?;
    let d = t.elapsed();
    if !out.status.success() {
        bail!("{runtime}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((d, run.id().to_owned()))
}

/// Every process of `s`'s shims serving containerd `c`: (VmRSS kB, PSS kB, count).
fn shim_memory(c: &Containerd, s: &Subject) -> Memory {
    let sock = c.socket().to_string_lossy().into_owned();
    let pids: Vec<i32> = s
        .exes
        .iter()
        .flat_map(|exe| leftovers::processes_of(exe, &sock))
        .collect();
    let (rss, pss) = pids
        .iter()
        .map(|&p| leftovers::memory_kb(p))
        .fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
    (rss, pss, pids.len())
}

/// A sleeping container through `s`, removed when dropped.
struct Sleeper<'a> {
    c: &'a Containerd,
    id: String,
}

impl<'a> Sleeper<'a> {
    fn start(c: &'a Containerd, s: &Subject) -> Result<Self> {
        let id = sleeper(c, s.runtime, &[]).with_context(|| s.label.clone())?;
        Ok(Self { c, id })
    }

    /// `n` exec cycles (`/bin/true`) in the container.
    fn exec_cycles(&self, n: usize) -> Result<()> {
        for i in 0..n {
            let exec_id = format!("e{i}");
            let out =
                self.c
                    .ctr(&["task", "exec", "--exec-id", &exec_id, &self.id, "/bin/true"])?;
            if !out.status.success() {
                bail!("exec {i}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        let _ = self.c.ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        for _ in 0..100 {
            if self
                .c
                .ctr(&["task", "rm", &self.id])
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.c.ctr(&["container", "rm", &self.id]);
    }
}

/// `ctr run --rm /bin/true`, every subject, `rounds` interleaved rounds.
fn run_section(c: &Containerd, subjects: &[Subject], rounds: usize) -> Result<()> {
    interleaved(subjects, 2, |s| run_true_with(c, s.runtime, &[]))?; // warm up
    let times = interleaved(subjects, rounds, |s| {
        run_true_with(c, s.runtime, &[]).map(|(d, _)| d)
    })?;
    let medians: Vec<Duration> = times.into_iter().map(|mut v| median(&mut v)).collect();
    print_medians(
        &format!("ctr run --rm {BUSYBOX_IMAGE} /bin/true, {rounds} interleaved rounds (target: ours/runc at most 0.45)"),
        subjects,
        &medians,
    );
    Ok(())
}

/// The shims' own time per container, phase by phase (see [`phases`]).
fn phases_section(c: &Containerd, subjects: &[Subject], rounds: usize) -> Result<()> {
    let bench = phases::PhaseBench::new(c)?;
    interleaved(subjects, 2, |s| bench.run(&s.binary))?; // warm up
    let runs = interleaved(subjects, rounds, |s| bench.run(&s.binary))?;
    println!(
        "the shims' own time per container, through the Task API as containerd 1.6 calls it, {rounds} interleaved rounds (target: ours/runc at most 0.15 in total):"
    );
    print!("  {:<26}", "phase (median ms)");
    for s in subjects {
        print!(" {:>14}", s.label.chars().take(14).collect::<String>());
    }
    let runc = subjects.iter().position(Subject::is_runc);
    if runc.is_some() {
        print!("  ours/runc");
    }
    println!();
    let row = |name: &str, per_subject: Vec<Vec<Duration>>| {
        let medians: Vec<Duration> = per_subject
            .into_iter()
            .map(|mut v| median(&mut v))
            .collect();
        print!("  {name:<26}");
        for m in &medians {
            print!(" {:>14.2}", ms(*m));
        }
        if let Some(r) = runc {
            print!(
                "  {:>9.2}",
                medians[0].as_secs_f64() / medians[r].as_secs_f64()
            );
        }
        println!();
    };
    for (p, name) in phases::PHASES.iter().enumerate() {
        row(
            name,
            runs.iter()
                .map(|v| v.iter().map(|r| r.phases[p]).collect())
                .collect(),
        );
    }
    row(
        "total",
        runs.iter()
            .map(|v| v.iter().map(|r| r.phases.iter().sum()).collect())
            .collect(),
    );
    // Not a phase: what any execution of the binary costs, the floor of the two above.
    row(
        "bare exec (-v, reference)",
        runs.iter()
            .map(|v| v.iter().map(|r| r.bare_exec).collect())
            .collect(),
    );
    for (s, runs) in subjects.iter().zip(&runs) {
        print_create_steps(&s.label, runs);
    }
    Ok(())
}

/// The median of each of Create's steps in `runs` of the shim `label`, as its log gave them
/// (nothing for a shim that logs none: the Go shim, an older revision), and how far into
/// Create the kernel's grace period for cgroup migrations lasted.
fn print_create_steps(label: &str, runs: &[phases::Run]) {
    let steps: Vec<&[(String, Duration)]> = runs.iter().map(|r| &r.create_steps[..]).collect();
    print_step_medians(&format!("Create's steps in {label}"), &steps);
    let open = runs.iter().filter_map(|r| r.migrations_open).collect();
    print_grace_period(&format!("Create in {label}"), open, runs.len());
}

/// One line of the median of each step over `runs` (each a Create's steps from the shim's
/// log, in the order the first that has any names them); nothing when none has any.
fn print_step_medians(what: &str, runs: &[&[(String, Duration)]]) {
    let Some(first) = runs.iter().find(|r| !r.is_empty()) else {
        return;
    };
    let mut line = format!("  {what} (median ms, from its log):");
    for (i, (name, _)) in first.iter().enumerate() {
        let mut taken: Vec<Duration> = runs
            .iter()
            .filter_map(|r| r.get(i).map(|(_, d)| *d))
            .collect();
        line.push_str(&format!(" {name} {:.2},", ms(median(&mut taken))));
    }
    println!("{}", line.trim_end_matches(','));
}

/// The median of how far into Create the kernel's grace period for cgroup migrations lasted
/// (`open`, from the shim's log) for `what`, out of `runs` Creates: no Create could attach
/// before it.
fn print_grace_period(what: &str, mut open: Vec<Duration>, runs: usize) {
    if open.is_empty() {
        return;
    }
    let logged = open.len();
    println!(
        "  {what}: the kernel's grace period for cgroup migrations ended a median {:.2} ms into Create (logged in {logged} of {runs})",
        ms(median(&mut open))
    );
}

/// How many runs of `--cycles` exec cycles the growth section measures one after the other:
/// the first may still fill what the heap keeps for good (pages of long-lived structures),
/// the second shows whether growth goes on.
const GROWTH_ROUNDS: usize = 2;

/// Memory 2 s after one sleeping container started, then after each of [`GROWTH_ROUNDS`] runs
/// of `cycles` exec cycles in it.
fn memory_section(c: &Containerd, subjects: &[Subject], growth: bool, cycles: usize) -> Result<()> {
    let mut at_rest = Vec::new();
    let mut after = Vec::new();
    for s in subjects {
        let sleeper = Sleeper::start(c, s)?;
        std::thread::sleep(SETTLE);
        at_rest.push(shim_memory(c, s));
        if growth {
            sleeper.exec_cycles(50)?;
            std::thread::sleep(SETTLE);
            let mut points = vec![shim_memory(c, s)];
            for _ in 0..GROWTH_ROUNDS {
                sleeper.exec_cycles(cycles)?;
                std::thread::sleep(SETTLE);
                points.push(shim_memory(c, s));
            }
            after.push(points);
        }
    }
    print_memory(
        &format!(
            "shim memory, {} s after one container started (every process of the shim)",
            SETTLE.as_secs()
        ),
        subjects,
        &at_rest,
    );
    if growth {
        println!(
            "shim memory growth in each of {GROWTH_ROUNDS} runs of {cycles} exec cycles in that \
             container (after 50 warm-up cycles), per 1,000 cycles:"
        );
        let per_1000 = |from: u64, to: u64| (to as f64 - from as f64) * 1000.0 / cycles as f64;
        for (s, points) in subjects.iter().zip(&after) {
            let runs: Vec<String> = points
                .windows(2)
                .map(|w| {
                    let ((r0, p0, _), (r1, p1, _)) = (w[0], w[1]);
                    format!("{:+7.1} / {:+7.1}", per_1000(r0, r1), per_1000(p0, p1))
                })
                .collect();
            println!("  {:<34} VmRSS / PSS kB: {}", s.label, runs.join(", then "));
        }
    }
    Ok(())
}

/// The milliseconds the shim logged for container `id` on the line containing `what`
/// (`container <id>: created, init pid N, in X ms`).
fn logged_ms(log: &str, id: &str, what: &str) -> Option<f64> {
    let (_, ms) = phases::line_about(log, id, what)?.rsplit_once(" in ")?;
    ms.split_whitespace().next()?.parse().ok()
}

fn median_ms(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 0.5)
}

/// The `q` quantile of sorted `v` (nearest rank); NaN when empty.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
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
    let logged = |runs: &[(Duration, String)], what: &str| -> Vec<f64> {
        let mut v: Vec<f64> = runs
            .iter()
            .filter_map(|(_, id)| logged_ms(&log, id, what))
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (create_gpu, create_plain) = (logged(&gpu, "created"), logged(&plain, "created"));
    let create = (percentile(&create_gpu, 0.5), percentile(&create_plain, 0.5));
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
        "  shim's Task Create (its log)  GPU {:>5.1} ms, no GPU {:>5.1} ms, difference {:>5.1} ms",
        create.0,
        create.1,
        create.0 - create.1,
    );
    println!(
        "  injection step (its log)      median {:>5.1} ms, p90 {:>5.1} ms (target p90 at most 3 ms)",
        percentile(&inject, 0.5),
        percentile(&inject, 0.9)
    );
    Ok(())
}

/// The GPU overhead benchmarks this machine can run: the host's driver, or a fake 4-GPU
/// driver and Debian's packaged userspace (fake kernel side) with a warm and a cold cache.
fn gpu_benchmarks(c: &Containerd, pairs: usize, toolkit: Option<&Path>) -> Result<()> {
    if Path::new("/dev/nvidiactl").exists() {
        gpu_overhead(c, pairs, "host driver", None)?;
        return match toolkit {
            Some(t) => toolkit_comparison(c, pairs, t),
            None => {
                println!("against the NVIDIA Container Toolkit: skipped (nvidia-container-runtime not found; --toolkit PATH)");
                Ok(())
            }
        };
    }
    println!("against the NVIDIA Container Toolkit: skipped (no GPU on this host: /dev/nvidiactl missing)");
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

/// A GPU container (`NVIDIA_VISIBLE_DEVICES=all`) through this shim against the NVIDIA
/// Container Toolkit (`toolkit`, its `nvidia-container-runtime`, as the binary of the runc shim:
/// `ctr run --runc-binary`), and the same without a GPU request through each, `pairs`
/// interleaved rounds, on the host's driver.
fn toolkit_comparison(c: &Containerd, pairs: usize, toolkit: &Path) -> Result<()> {
    let tk = toolkit.display().to_string();
    let gpu = ["--env", "NVIDIA_VISIBLE_DEVICES=all"];
    let cases: [(&str, &str, Vec<&str>); 4] = [
        ("this shim, GPU", RUNTIME, gpu.to_vec()),
        (
            "toolkit, GPU",
            RUNC,
            [&["--runc-binary", tk.as_str()][..], &gpu].concat(),
        ),
        ("this shim, no GPU", RUNTIME, vec![]),
        ("toolkit, no GPU", RUNC, vec!["--runc-binary", tk.as_str()]),
    ];
    for (_, runtime, flags) in &cases {
        run_true_with(c, runtime, flags)?;
    }
    let mut times: Vec<Vec<Duration>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..pairs {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let (_, runtime, flags) = &cases[i];
            times[i].push(run_true_with(c, runtime, flags)?.0);
        }
    }
    let m: Vec<Duration> = times.into_iter().map(|mut v| median(&mut v)).collect();
    println!("against the NVIDIA Container Toolkit ({tk}), {pairs} interleaved rounds, ctr run --rm /bin/true:");
    for ((label, _, _), d) in cases.iter().zip(&m) {
        println!("  {label:<34} median {:>7.1} ms", ms(*d));
    }
    println!(
        "  ratio GPU this shim/toolkit          {:>7.2} (target at most 0.4)",
        m[0].as_secs_f64() / m[1].as_secs_f64()
    );
    println!(
        "  ratio no GPU this shim/toolkit       {:>7.2}",
        m[2].as_secs_f64() / m[3].as_secs_f64()
    );
    Ok(())
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
    // Starts a pod with one container; returns (time to running, pod id, container id).
    let start = |handler: &str| -> Result<(Duration, String, String)> {
        let name = unique_id("pod");
        let t = Instant::now();
        let pod = cri.run_pod(&name, handler, &opts)?;
        let container = cri.run_container(&pod, &name, &opts, &app)?;
        Ok((t.elapsed(), pod, container))
    };
    let once = |handler: &str| -> Result<(Duration, String, String)> {
        let run = start(handler)?;
        cri.remove_pod(&run.1)?;
        Ok(run)
    };
    for _ in 0..2 {
        once(HANDLER)?;
        once(HANDLER_RUNC)?;
    }
    let (mut ours, mut runc) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        if i % 2 == 0 {
            ours.push(once(HANDLER)?);
            runc.push(once(HANDLER_RUNC)?.0);
        } else {
            runc.push(once(HANDLER_RUNC)?.0);
            ours.push(once(HANDLER)?);
        }
    }
    let mut ours_times: Vec<Duration> = ours.iter().map(|(d, _, _)| *d).collect();
    let (mo, mr) = (median(&mut ours_times), median(&mut runc));
    println!("CRI pod start (RunPodSandbox + CreateContainer + StartContainer, host network), {pairs} interleaved pairs:");
    println!("  handler {HANDLER:<26} median {:>7.1} ms", ms(mo));
    println!("  handler {HANDLER_RUNC:<26} median {:>7.1} ms", ms(mr));
    println!(
        "  ratio nvidia/runc                  {:>7.2} (target at most 0.4)",
        mo.as_secs_f64() / mr.as_secs_f64()
    );
    let log = cri.containerd.log();
    let sandboxes: Vec<&str> = ours.iter().map(|(_, pod, _)| pod.as_str()).collect();
    let containers: Vec<&str> = ours.iter().map(|(_, _, c)| c.as_str()).collect();
    for (what, ids) in [("sandbox", &sandboxes), ("container", &containers)] {
        let mut created: Vec<f64> = ids
            .iter()
            .filter_map(|id| logged_ms(&log, id, "created"))
            .collect();
        if !created.is_empty() {
            println!(
                "  handler {HANDLER}, a pod's {what}: Task Create (its log) median {:.1} ms (logged in {} of {})",
                median_ms(&mut created),
                created.len(),
                ids.len()
            );
        }
        let steps: Vec<Vec<(String, Duration)>> = ids
            .iter()
            .map(|id| phases::create_steps_of(&log, id))
            .collect();
        let steps: Vec<&[(String, Duration)]> = steps.iter().map(Vec::as_slice).collect();
        print_step_medians(
            &format!("handler {HANDLER}, a pod's {what}: its steps"),
            &steps,
        );
        let open = ids
            .iter()
            .filter_map(|id| phases::migrations_open(&log, id))
            .collect();
        print_grace_period(
            &format!("handler {HANDLER}, a pod's {what}"),
            open,
            ids.len(),
        );
    }

    // Shim memory per pod (sandbox + one container), with one pod and with PODS pods running:
    // every process of the pods' shims. With several pods the binary's pages are shared, so
    // PSS per pod approaches what each additional pod really costs.
    let sock = cri.containerd.socket().to_string_lossy().into_owned();
    let per_pod = |handler: &str, exe: &str, n: usize| -> Result<Memory> {
        let pods: Vec<String> = (0..n)
            .map(|_| start(handler).map(|(_, p, _)| p))
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
        println!("shim memory per pod (sandbox + one container), {n} pod(s) running:");
        for (name, (rss, pss, count)) in [(HANDLER, ours), (HANDLER_RUNC, runc)] {
            println!(
                "  handler {name:<26} VmRSS {:>6.1} MB  PSS {:>6.1} MB  ({count} processes)",
                rss as f64 / 1024.0,
                pss as f64 / 1024.0
            );
        }
    }
    Ok(())
}

const USAGE: &str = "usage: nvbench [--pairs N] [--shim PATH] [--compare REV] [--only run,phases,memory,growth,gpu,cri] [--cycles N] [--toolkit PATH] [--gpu-only] [--host-mounts N]";

fn main() -> Result<()> {
    let mut pairs = 20usize;
    let mut cycles = 1000usize;
    let mut compare_rev = None;
    let mut toolkit = nvidia_shim_integration::which("nvidia-container-runtime");
    let mut only: Option<Vec<String>> = None;
    let mut host_mounts = 0usize;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut shim = root.join("target/release/containerd-shim-nvidia-v2");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pairs" => pairs = args.next().context("--pairs N")?.parse()?,
            "--cycles" => cycles = args.next().context("--cycles N")?.parse()?,
            "--shim" => shim = PathBuf::from(args.next().context("--shim PATH")?),
            "--compare" => compare_rev = Some(args.next().context("--compare REV")?),
            "--toolkit" => toolkit = Some(PathBuf::from(args.next().context("--toolkit PATH")?)),
            "--only" => {
                only = Some(
                    args.next()
                        .context("--only SECTIONS")?
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                )
            }
            "--gpu-only" => only = Some(vec!["gpu".to_owned()]),
            "--host-mounts" => host_mounts = args.next().context("--host-mounts N")?.parse()?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    // First, while nvbench has one thread: the namespace is the calling thread's.
    let _mounts = if host_mounts > 0 {
        let mounts = host_mounts::add(host_mounts)?;
        println!(
            "with {host_mounts} extra tmpfs mounts in nvbench's own mount namespace: {} lines of mountinfo",
            host_mounts::table_lines()
        );
        Some(mounts)
    } else {
        None
    };
    let section = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == name));
    if !shim.exists() {
        bail!(
            "{} missing: cargo build --release -p containerd-shim-nvidia-v2",
            shim.display()
        );
    }
    let revision = match &compare_rev {
        Some(rev) => Some((rev.clone(), compare::build_revision(&root, rev)?)),
        None => None,
    };
    // containerd's default log level: at debug it makes both shims log every step.
    let c = Containerd::builder()
        .shim(&shim)
        .log_level("info")
        .start()?;
    c.import_busybox()?;
    let mut subjects = vec![Subject {
        label: "nvidia (this tree)".to_owned(),
        runtime: RUNTIME,
        binary: c.shim_dir().join("containerd-shim-nvidia-v2"),
        exes: &["containerd-shim-nvidia-v2"],
    }];
    if let Some((rev, binary)) = &revision {
        subjects.push(Subject {
            label: format!("nvidia @{rev}"),
            runtime: compare::RUNTIME_REV,
            binary: compare::install(binary, &c.shim_dir())?,
            // Its respawned zygotes name themselves as the shim does.
            exes: &[compare::BINARY_REV, "containerd-shim-nvidia-v2"],
        });
    }
    subjects.push(Subject {
        label: "runc (Go shim)".to_owned(),
        runtime: RUNC,
        binary: nvidia_shim_integration::which("containerd-shim-runc-v2")
            .context("containerd-shim-runc-v2 not on PATH")?,
        exes: &["containerd-shim-runc-v2"],
    });
    if section("run") {
        run_section(&c, &subjects, pairs)?;
    }
    if section("phases") {
        phases_section(&c, &subjects, pairs)?;
    }
    if section("memory") || section("growth") {
        memory_section(&c, &subjects, section("growth"), cycles)?;
    }
    if section("gpu") {
        gpu_benchmarks(&c, pairs, toolkit.as_deref())?;
    }
    drop(c);
    if section("cri") {
        pod_benchmark(&shim, pairs)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn across_rounds_every_subject_runs_after_every_other_equally_often() {
        for n in [2, 3] {
            // Two warm-up rounds, then 4 * (n - 1) measured ones, as one sequence.
            let measured = 4 * (n - 1);
            let runs: Vec<usize> = (0..2)
                .chain(0..measured)
                .flat_map(|round| {
                    let order = round_order(round, n);
                    let mut sorted = order.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "round {round}");
                    order
                })
                .collect();
            let mut after = vec![vec![0; n]; n];
            // Every measured run, the first one after the warm-up's last.
            for pair in runs[2 * n - 1..].windows(2) {
                after[pair[1]][pair[0]] += 1;
            }
            for (s, before) in after.iter().enumerate() {
                for (o, count) in before.iter().enumerate() {
                    assert_eq!(*count, if s == o { 0 } else { 4 }, "n {n}: {s} after {o}");
                }
            }
        }
    }
}
