//! GPU injection of a real NVIDIA userspace through containerd: Debian bookworm's packaged
//! driver (`contrib`/`non-free`, unpacked by `scripts/debian-nvidia-driver.sh` with a private
//! apt configuration), with the kernel side faked (a `/proc/driver/nvidia` tree and mknod'ed
//! `/dev/nvidia*` nodes with no driver behind them). A glibc image runs `nvprobe`, which
//! `dlopen`s the driver's libraries and calls `cuInit(0)` and `nvmlInit_v2()`; the same probe on
//! the host, against the same root, gives the reference answers (no driver: 100 and 9).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use nvidia_shim_core_host::fixture::FakeDriver;
use nvidia_shim_integration::checks::{assert_failed, assert_holds};
use nvidia_shim_integration::containerd::Containerd;
use nvidia_shim_integration::ctr_run::{CtrRun, Seen};
use nvidia_shim_integration::debian_driver::{debian_driver, DebianDriver};
use nvidia_shim_integration::gpu::{setup_with, write_config, Gpus};
use nvidia_shim_integration::image::Entry;
use nvidia_shim_integration::probe::{self, IMAGE};

/// A private containerd, the Debian driver with a fake 2-GPU kernel side and a shim config
/// pointing at them, and the glibc image with the probe.
struct Env {
    c: Containerd,
    driver: &'static DebianDriver,
    gpus: Gpus,
    image: String,
}

fn env() -> Result<Option<Env>> {
    let Some((c, gpus)) = setup_with(|dir| Gpus::debian(dir, 2))? else {
        return Ok(None);
    };
    c.import(&probe::image()?, IMAGE)?;
    Ok(Some(Env {
        c,
        driver: debian_driver()?,
        gpus,
        image: IMAGE.to_owned(),
    }))
}

const ALL: &str = "NVIDIA_VISIBLE_DEVICES=all";
const UTILITY: [&str; 2] = [ALL, "NVIDIA_DRIVER_CAPABILITIES=utility"];

/// The host's `/dev/nvidia*` entries.
fn host_nodes() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/dev")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("nvidia"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Env {
    fn run(&self, env: &[&str], script: &str) -> Result<Seen> {
        self.gpus.run(&self.c, &self.image, env, script)
    }

    fn lib(&self, name: &str) -> String {
        format!(
            "/usr/lib/x86_64-linux-gnu/{name}.so.{}",
            self.driver.version
        )
    }
}

#[test]
fn all_capabilities_load_cuda_and_nvml_exactly_as_on_the_host() -> Result<()> {
    let Some(e) = env()? else { return Ok(()) };
    let nodes = host_nodes();
    let (host_cu, host_nvml) = e.driver.host_codes()?;
    assert_eq!((host_cu, host_nvml), (Some(100), Some(9)), "no driver");
    let libs = "libcuda.so libnvidia-cfg.so.1 libnvidia-ptxjitcompiler.so.1 libnvidia-nvvm.so.4 \
                libnvidia-opencl.so.1 libnvidia-allocator.so.1 libcudadebugger.so.1";
    let script = format!(
        "nvprobe cuInit nvmlInit {libs}; nvidia-smi; echo smi=$?; \
         ls /dev | grep '^nvidia' | sort | tr '\\n' ' '; echo"
    );
    let (code, out, err) = e.run(&[ALL], &script)?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(probe::codes(&out), (host_cu, host_nvml), "{out}");
    assert_eq!(
        probe::answer(&out, "cuInit"),
        Some(format!("100 {}", e.lib("libcuda")).as_str()),
        "libcuda at the directory the host's ld cache names, through the container's: {out}"
    );
    for lib in libs.split_whitespace() {
        assert!(out.contains(&format!("dlopen {lib} ok")), "{lib}: {out}");
    }
    let smi = "nvidia-smi fails only for the missing kernel driver";
    assert_holds(
        &out,
        &[
            ("couldn't communicate with the NVIDIA driver", smi),
            ("smi=9", smi),
            (
                "nvidia-uvm nvidia-uvm-tools nvidia0 nvidia1 nvidiactl",
                "the nodes",
            ),
        ],
    );
    // Run as root without a kernel driver, NVIDIA's libraries make the nodes they miss: not
    // in the host's /dev, neither from the probe nor from the shim's discovery.
    assert_eq!(host_nodes(), nodes, "the host's /dev is untouched");
    Ok(())
}

#[test]
fn capabilities_choose_the_libraries_and_nodes() -> Result<()> {
    let Some(e) = env()? else { return Ok(()) };
    let (_, host_nvml) = e.driver.host_codes()?;
    // utility: NVML, no CUDA.
    let (_, out, err) = e.run(&UTILITY, "nvprobe nvmlInit cuInit")?;
    assert_eq!(probe::code(&out, "nvmlInit"), host_nvml, "{out}{err}");
    assert!(
        probe::answer(&out, "cuInit").is_some_and(|a| a.starts_with("dlopen-failed")),
        "{out}"
    );
    // none: the libraries and the control nodes, no GPU.
    let (_, out, err) = e.run(
        &["NVIDIA_VISIBLE_DEVICES=none"],
        "ls /dev | grep '^nvidia' | sort | tr '\\n' ' '; echo; nvprobe cuInit",
    )?;
    assert!(
        out.starts_with("nvidia-uvm nvidia-uvm-tools nvidiactl \n"),
        "{out}{err}"
    );
    assert_eq!(probe::code(&out, "cuInit"), Some(100), "{out}");
    // graphics: EGL loads; GLX loads its NVIDIA dependencies and stops at X11, which the
    // image does not have.
    let v = &e.driver.version;
    let deps: Vec<String> = ["libnvidia-glsi", "libnvidia-tls", "libnvidia-glcore"]
        .iter()
        .map(|d| format!("{d}.so.{v}"))
        .collect();
    let script = format!(
        "nvprobe libEGL_nvidia.so.0 {} libGLX_nvidia.so.0; \
         readlink /usr/lib/x86_64-linux-gnu/libGLX_indirect.so.0",
        deps.join(" ")
    );
    let (_, out, err) = e.run(&[ALL, "NVIDIA_DRIVER_CAPABILITIES=graphics"], &script)?;
    assert!(out.contains("dlopen libEGL_nvidia.so.0 ok"), "{out}{err}");
    for dep in &deps {
        assert!(out.contains(&format!("dlopen {dep} ok")), "{dep}: {out}");
    }
    assert!(
        out.contains(
            "dlopen libGLX_nvidia.so.0 failed: libX11.so.6: cannot open shared object file"
        ),
        "{out}"
    );
    assert!(
        out.trim_end().ends_with(&format!("libGLX_nvidia.so.{v}")),
        "{out}"
    );
    Ok(())
}

/// An image with `entries` added to the probe image, imported as `name`.
fn image_with(e: &Env, name: &str, entries: Vec<Entry>) -> Result<String> {
    let mut image = probe::image()?;
    image
        .entries
        .push(Entry::Dir("usr/lib/x86_64-linux-gnu".into()));
    image.entries.extend(entries);
    let reference = format!("docker.io/library/nvtest-{name}:latest");
    e.c.import(&image, &reference)?;
    Ok(reference)
}

#[test]
fn the_images_libcuda_links_and_files_do_not_hide_the_driver() -> Result<()> {
    let Some(mut e) = env()? else { return Ok(()) };
    let all = [ALL];
    // A dangling link left by an older CUDA base image: replaced, and logged with its target.
    e.image = image_with(
        &e,
        "dangling",
        vec![Entry::Symlink(
            "usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            "libcuda.so.470.82.01".into(),
        )],
    )?;
    let (_, out, err) = e.run(
        &all,
        "nvprobe cuInit; readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1",
    )?;
    assert_eq!(probe::code(&out, "cuInit"), Some(100), "{out}{err}");
    let v = &e.driver.version;
    assert!(out.ends_with(&format!("libcuda.so.{v}\n")), "{out}");
    assert!(
        e.c.log()
            .contains("libcuda.so.1 pointed at libcuda.so.470.82.01; now at libcuda.so."),
        "the replacement is logged"
    );
    // A regular file with the SONAME (a stub the image ships): left in place; the cache sends
    // the loader to the injected library, and the shim warns naming the file.
    let stub_dir = e.c.dir().join("stub");
    std::fs::create_dir_all(&stub_dir)?;
    std::fs::write(
        stub_dir.join("s.c"),
        "int image_stub_libcuda(void) { return 7; }\n",
    )?;
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(stub_dir.join("libcuda.so.1"))
        .arg(stub_dir.join("s.c"))
        .status()?;
    anyhow::ensure!(status.success(), "cc stub");
    let stub = std::fs::read(stub_dir.join("libcuda.so.1"))?;
    e.image = image_with(
        &e,
        "stubfile",
        vec![Entry::File(
            "usr/lib/x86_64-linux-gnu/libcuda.so.1".into(),
            0o755,
            stub,
        )],
    )?;
    let (_, out, err) = e.run(
        &all,
        "nvprobe cuInit; grep -q image_stub_libcuda /usr/lib/x86_64-linux-gnu/libcuda.so.1 \
         && echo image-file-kept",
    )?;
    let cuinit = probe::answer(&out, "cuInit").unwrap_or_default();
    assert_eq!(
        cuinit,
        format!("100 {}", e.lib("libcuda")),
        "the injected libcuda, not the image's: {out}{err}"
    );
    assert!(out.ends_with("image-file-kept\n"), "{out}");
    assert!(
        e.c.log().contains(
            "the image's /usr/lib/x86_64-linux-gnu/libcuda.so.1 is not a symlink and is left in place"
        ),
        "warned"
    );
    Ok(())
}

/// `src` copied to `dst` as hard links (cheap: both are under the target directory).
fn copy_linked(src: &Path, dst: &Path) -> Result<()> {
    let status = Command::new("cp").arg("-al").arg(src).arg(dst).status()?;
    anyhow::ensure!(
        status.success(),
        "cp -al {} {}",
        src.display(),
        dst.display()
    );
    Ok(())
}

#[test]
fn a_library_installed_after_the_inventory_was_cached_is_injected() -> Result<()> {
    let Some(e) = env()? else { return Ok(()) };
    let v = &e.driver.version;
    let work = tempfile::Builder::new()
        .prefix("root-copy")
        .tempdir_in(e.driver.root.parent().context("root's parent")?)?;
    let root = work.path().join("root");
    copy_linked(&e.driver.root, &root)?;
    let current = root.join("usr/lib/x86_64-linux-gnu/nvidia/current");
    let cfg = current.join(format!("libnvidia-cfg.so.{v}"));
    std::fs::remove_file(&cfg)?;
    let kernel = FakeDriver::builder()
        .gpus(1)
        .version(v)
        .driver_root(&root)
        .build();
    let copy = Gpus::of(e.c.dir(), kernel)?;
    let cfg_probe = "nvprobe libnvidia-cfg.so.1";
    let (_, out, err) = copy.run(&e.c, &e.image, &UTILITY, cfg_probe)?;
    assert!(
        out.contains("dlopen libnvidia-cfg.so.1 failed"),
        "{out}{err}"
    );
    let entries = std::fs::read_dir(copy.driver.cache_dir())?.count();
    assert_eq!(entries, 1, "the inventory was cached");
    // The package is installed (again): its directory changes, so does the cache key.
    std::fs::hard_link(e.driver.root.join(cfg.strip_prefix(&root)?), &cfg)?;
    let (_, out, err) = copy.run(&e.c, &e.image, &UTILITY, cfg_probe)?;
    assert!(out.contains("dlopen libnvidia-cfg.so.1 ok"), "{out}{err}");
    // Without libnvidia-ml the version is known but utility cannot work: Create fails, saying
    // what is missing and where it was looked for.
    std::fs::remove_file(current.join(format!("libnvidia-ml.so.{v}")))?;
    let needs = format!("capability utility needs libnvidia-ml.so.{v}");
    let seen = copy.run(&e.c, &e.image, &UTILITY, "true")?;
    assert_failed(seen, &[&needs, "nvidia/current"]);
    Ok(())
}

#[test]
fn requirements_nvml_cannot_answer_fail_clearly_and_versions_print_as_written() -> Result<()> {
    let Some(e) = env()? else { return Ok(()) };
    let arch = "NVIDIA_REQUIRE_ARCH=arch>=9.0";
    let unknown = "cannot check arch>=9.0 (from NVIDIA_REQUIRE_ARCH): GPU architecture unknown, NVML unavailable:";
    assert_failed(e.run(&[ALL, arch], "true")?, &[unknown]);
    let (code, _, err) = e.run(&[ALL, arch, "NVIDIA_DISABLE_REQUIRE=true"], "true")?;
    assert_eq!(code, Some(0), "{err}");
    // The driver's version as the driver writes it.
    let version = format!("driver={}", e.driver.version);
    let seen = e.run(&[ALL, "NVIDIA_REQUIRE_DRIVER=driver>=999"], "true")?;
    assert_failed(seen, &[&version]);
    // A CUDA 12.2 image on this 535 driver passes on the driver's facts alone.
    let (code, _, err) = e.run(&[ALL, "NVIDIA_REQUIRE_CUDA=cuda>=12.2"], "true")?;
    assert_eq!(code, Some(0), "{err}");
    Ok(())
}

#[test]
fn the_default_config_finds_a_driver_installed_at_the_hosts_root() -> Result<()> {
    if !nvidia_shim_integration::can_run_containerd() {
        return Ok(());
    }
    let driver = debian_driver()?;
    // A Debian host with the driver installed: containerd (and so the shim) runs in a mount
    // namespace where the packages' /usr and /etc lie over the host's, with the ld cache
    // ldconfig builds there. Nothing changes outside that namespace.
    let root = driver.root.display().to_string();
    let c = Containerd::builder()
        .mount_namespace(|dir| {
            Ok(format!(
                "mount -t overlay overlay -o lowerdir={root}/usr:/usr /usr; \
                 mount -t overlay overlay -o lowerdir={root}/etc:/etc /etc; \
                 ldconfig -C {cache}; mount --bind {cache} /etc/ld.so.cache",
                cache = dir.join("ld.so.cache").display()
            ))
        })
        .start()?;
    c.import(&probe::image()?, IMAGE)?;
    let kernel = driver.kernel(1);
    // The kernel side is still fake; the driver root is left to the shim to find.
    let r = kernel.roots();
    let config = write_config(
        c.dir(),
        &format!(
            "dev_root = \"{}\"\nproc_root = \"{}\"\ncache_dir = \"{}\"\ncdi_spec_dirs = []\n",
            r.dev_root.display(),
            r.proc_root.display(),
            kernel.cache_dir().display()
        ),
    )?;
    let run = CtrRun::new("gpu")
        .rm()
        .config(&config)
        .image(IMAGE)
        .env(&[ALL]);
    let (code, out, err) = run
        .sh("nvprobe cuInit nvmlInit; nvidia-smi -L; echo smi=$?")
        .seen(&c)?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(probe::codes(&out), (Some(100), Some(9)), "{out}");
    assert!(out.contains("smi=9"), "{out}");
    assert!(
        c.log().contains(&format!(
            "discovered NVIDIA driver {} with 1 GPU(s) under /",
            driver.version
        )),
        "found at /"
    );
    Ok(())
}

/// The file mount points under `/usr`, `/lib` and `/etc` of a container's mount table.
const FILE_MOUNTS: &str =
    "awk '$5 ~ /^\\/(usr|lib|etc)\\// {print $5}' /proc/self/mountinfo | sort";

#[test]
fn a_generated_spec_without_hooks_mounts_what_the_built_in_path_does_and_still_loads() -> Result<()>
{
    let Some(e) = env()? else { return Ok(()) };
    let out_file = e.c.dir().join("nvidia.yaml");
    let output = out_file.display().to_string();
    e.gpus
        .cdi_generate(&["--hooks", "none", "--output", &output])?;
    let yaml = std::fs::read_to_string(&out_file)?;
    assert!(
        yaml.starts_with("cdiVersion:"),
        "YAML for a .yaml output: {yaml:.80}"
    );
    let spec = nvidia_shim_core::cdi::CdiSpec::parse(&out_file, &yaml)?;
    assert!(spec.container_edits.hooks.is_empty());
    // The built-in path with every capability mounts exactly the spec's files.
    let (_, built_in, err) = e.run(&[ALL, "NVIDIA_DRIVER_CAPABILITIES=all"], FILE_MOUNTS)?;
    let mut from_spec: Vec<String> = spec
        .container_edits
        .mounts
        .iter()
        .map(|m| m.container_path.clone())
        .filter(|p| ["/usr/", "/lib/", "/etc/"].iter().any(|d| p.starts_with(d)))
        .collect();
    from_spec.sort();
    let mut injected: Vec<String> = built_in.lines().map(str::to_owned).collect();
    injected.retain(|p| !["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"].contains(&p.as_str()));
    assert_eq!(injected, from_spec, "{err}");
    assert!(from_spec.len() > 25, "{from_spec:?}");
    // The spec on disk serves `nvidia.com/gpu=all`; without its hooks the shim still makes
    // the links and the ld cache, so CUDA loads.
    let cdi_dir = e.gpus.driver.cdi_dir();
    std::fs::write(cdi_dir.join("nvidia.yaml"), &yaml)?;
    let (code, out, err) = e.run(
        &["NVIDIA_VISIBLE_DEVICES=nvidia.com/gpu=all"],
        "nvprobe cuInit nvmlInit; readlink /usr/lib/x86_64-linux-gnu/libcuda.so.1",
    )?;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(probe::codes(&out), (Some(100), Some(9)), "{out}");
    assert!(
        out.ends_with(&format!("libcuda.so.{}\n", e.driver.version)),
        "{out}"
    );
    Ok(())
}
