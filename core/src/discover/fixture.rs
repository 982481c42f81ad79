//! Fake driver installations for tests: a `/proc/driver/nvidia` tree, `/proc/devices`, device
//! nodes made with `mknod` (when root), real ELF shared objects with the driver's SONAMEs made
//! with `cc -shared -Wl,-soname,...`, a `nvidia-smi` script and GSP firmware files.
//!
//! Available to this crate's tests and, with the `fixture` feature, to other crates' tests.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::Roots;

/// The driver version fake installations carry.
pub const VERSION: &str = "580.159.04";

/// (library file stem, SONAME) pairs the fake driver installs, as seen on the reference host.
pub const LIBRARIES: &[(&str, &str)] = &[
    ("libnvidia-ml", "libnvidia-ml.so.1"),
    ("libnvidia-cfg", "libnvidia-cfg.so.1"),
    ("libcuda", "libcuda.so.1"),
    ("libnvidia-ptxjitcompiler", "libnvidia-ptxjitcompiler.so.1"),
    ("libnvidia-nvvm", "libnvidia-nvvm.so.4"),
    ("libnvidia-encode", "libnvidia-encode.so.1"),
    ("libnvcuvid", "libnvcuvid.so.1"),
    ("libnvidia-glcore", "libnvidia-glcore.so.580.159.04"),
    ("libEGL_nvidia", "libEGL_nvidia.so.0"),
];

/// Where the fake driver's files go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `/usr/lib/x86_64-linux-gnu`, `/usr/bin`, `/lib/firmware` (distribution packages).
    Distro,
    /// `/usr/local/nvidia/{lib64,bin,firmware}` (GKE style, as on the reference GPU host).
    UsrLocalNvidia,
}

/// Builder of a [`FakeDriver`].
#[derive(Debug)]
pub struct FakeDriverBuilder {
    gpus: u32,
    layout: Layout,
    reverse_minors: bool,
    mig: Vec<MigLayout>,
    version: String,
    driver_root: Option<PathBuf>,
    infiniband: bool,
}

/// MIG instances of one GPU: (GPU minor, [(GI id, [CI ids])]).
type MigLayout = (u32, Vec<(u32, Vec<u32>)>);

impl FakeDriverBuilder {
    /// Number of GPUs (default 1).
    pub fn gpus(mut self, n: u32) -> Self {
        self.gpus = n;
        self
    }

    /// File layout (default [`Layout::Distro`]).
    pub fn layout(mut self, layout: Layout) -> Self {
        self.layout = layout;
        self
    }

    /// The driver version the fake kernel side reports (default [`VERSION`]).
    pub fn version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    /// Only the kernel side (`/proc`, `/dev`): the driver's files are the installation at
    /// `root` (a real driver userspace, such as Debian's packages unpacked), not fakes.
    pub fn driver_root(mut self, root: &Path) -> Self {
        self.driver_root = Some(root.to_owned());
        self
    }

    /// Also the host nodes of `NVIDIA_MOFED`: `/dev/infiniband/uverbs0`, `uverbs1` (231:192,
    /// 231:193) and `rdma_cm` (10:58), as a host with Mellanox OFED has them (root only).
    pub fn infiniband(mut self) -> Self {
        self.infiniband = true;
        self
    }

    /// Give the GPU at the lowest bus address the highest minor, to test index order.
    pub fn reverse_minors(mut self) -> Self {
        self.reverse_minors = true;
        self
    }

    /// Enables MIG on the GPU with device minor `gpu_minor` with GPU instances `(gi, [ci...])`:
    /// `capabilities/gpu<minor>/mig/gi<G>/ci<C>/access` files and `mig-minors` lines, numbered
    /// from 3 after `config 1` and `monitor 2` as the driver does.
    pub fn mig(mut self, gpu_minor: u32, instances: &[(u32, &[u32])]) -> Self {
        let instances = instances
            .iter()
            .map(|(gi, cis)| (*gi, cis.to_vec()))
            .collect();
        self.mig.push((gpu_minor, instances));
        self
    }

    /// Writes the tree.
    pub fn build(self) -> FakeDriver {
        let dir = tempfile::tempdir().expect("temp dir");
        let fake = FakeDriver {
            dir,
            layout: self.layout,
            version: self.version,
            external_root: self.driver_root,
        };
        fake.write(self.gpus, self.reverse_minors, self.infiniband);
        fake.write_mig(&self.mig);
        fake
    }
}

/// A fake driver installation in a temp dir (removed on drop).
#[derive(Debug)]
pub struct FakeDriver {
    dir: tempfile::TempDir,
    layout: Layout,
    version: String,
    external_root: Option<PathBuf>,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, text).expect("write fixture file");
}

/// A shared object with SONAME `soname`, built once per process and copied from a cache.
pub(crate) fn shared_object(soname: &str) -> PathBuf {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path();
    let mut cache = CACHE.get_or_init(Default::default).lock().expect("cache");
    if let Some(p) = cache.get(soname) {
        return p.clone();
    }
    let src = dir.join("fake.c");
    std::fs::write(&src, "int nvidia_fake_symbol(void) { return 42; }\n").expect("write C source");
    let out = dir.join(format!("{soname}.built"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(format!("-Wl,-soname,{soname}"))
        .arg(&src)
        .status()
        .expect("run cc (install gcc)");
    assert!(status.success(), "cc failed building {soname}");
    cache.insert(soname.to_owned(), out.clone());
    out
}

/// Puts a CUDA forward-compat `libcuda.so.<version>` (SONAME `libcuda.so.1`, with its SONAME
/// link) into `rootfs`'s `/usr/local/cuda/compat`, carrying a `.note.cuda.fwd_compatibility`
/// note with `note_json` when given, as NVIDIA's compat packages do. Its `nvidia_fake_symbol`
/// returns 99 (the fake host libraries' return 42).
pub fn compat_libcuda(rootfs: &Path, version: &str, note_json: Option<&str>) -> PathBuf {
    let dir = rootfs.join("usr/local/cuda/compat");
    std::fs::create_dir_all(&dir).expect("mkdir compat");
    let build = tempfile::tempdir().expect("temp dir");
    let src = build.path().join("compat.c");
    // 99, where the fake host libraries' symbol returns 42: a program can tell which it got.
    let mut c = String::from("int nvidia_fake_symbol(void) { return 99; }\n");
    if let Some(json) = note_json {
        // An ELF note: namesz, descsz, type, then name and desc each padded to 4 bytes. GCC
        // gives sections named .note* the SHT_NOTE type.
        let owner = "NVIDIA Corporation";
        let pad = |n: usize| n.div_ceil(4) * 4;
        let escaped = json.replace('\\', "\\\\").replace('"', "\\\"");
        c += &format!(
            "struct note {{ unsigned int namesz, descsz, type; char name[{}]; char desc[{}]; }};\n\
             __attribute__((section(\".note.cuda.fwd_compatibility\"), aligned(4), used))\n\
             static const struct note fwd = {{ {}, {}, 1, \"{owner}\", \"{escaped}\" }};\n",
            pad(owner.len() + 1),
            pad(json.len() + 1),
            owner.len() + 1,
            json.len() + 1,
        );
    }
    std::fs::write(&src, c).expect("write C source");
    let file = dir.join(format!("libcuda.so.{version}"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&file)
        .arg(&src)
        .status()
        .expect("run cc (install gcc)");
    assert!(status.success(), "cc failed building the compat libcuda");
    let _ = std::fs::remove_file(dir.join("libcuda.so.1"));
    std::os::unix::fs::symlink(format!("libcuda.so.{version}"), dir.join("libcuda.so.1"))
        .expect("symlink libcuda.so.1");
    file
}

/// Makes a character device node (root only), creating its directory.
pub fn mknod(path: &Path, major: u32, minor: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir for node");
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: c is a valid C string; mknod creates a node in a test's temp dir.
    let rc = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    // The driver's default (NVreg_DeviceFileMode), whatever the umask took away.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod node");
}

impl FakeDriver {
    /// A 2-GPU host with MIG on GPU 1: GI 1 with CIs 0 and 1, GI 2 with CI 0 (MIG devices
    /// `1:0`, `1:1`, `1:2`).
    pub fn mig_host() -> FakeDriver {
        FakeDriver::builder()
            .gpus(2)
            .mig(1, &[(1, &[0, 1]), (2, &[0])])
            .build()
    }

    /// A builder with one GPU in the distribution layout.
    pub fn builder() -> FakeDriverBuilder {
        FakeDriverBuilder {
            gpus: 1,
            layout: Layout::Distro,
            reverse_minors: false,
            mig: Vec::new(),
            version: VERSION.to_owned(),
            driver_root: None,
            infiniband: false,
        }
    }

    /// The fake host's `/`.
    pub fn host_root(&self) -> &Path {
        self.dir.path()
    }

    /// The fake `/proc`.
    pub fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    /// The driver version its kernel side reports.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The driver root: the external installation, or the fake one of the chosen layout.
    pub fn driver_root(&self) -> PathBuf {
        if let Some(root) = &self.external_root {
            return root.clone();
        }
        match self.layout {
            Layout::Distro => self.dir.path().to_owned(),
            Layout::UsrLocalNvidia => self.dir.path().join("usr/local/nvidia"),
        }
    }

    /// Roots pointing at this installation.
    pub fn roots(&self) -> Roots {
        Roots {
            driver_root: self.driver_root(),
            dev_root: self.dir.path().to_owned(),
            proc_root: self.proc_root(),
        }
    }

    /// A shim config file body (`driver_root`, `dev_root`, `proc_root`) pointing at this
    /// installation.
    pub fn shim_config(&self) -> String {
        let r = self.roots();
        format!(
            "driver_root = \"{}\"\ndev_root = \"{}\"\nproc_root = \"{}\"\n\
             cdi_spec_dirs = [\"{}\"]\ncache_dir = \"{}\"\n",
            r.driver_root.display(),
            r.dev_root.display(),
            r.proc_root.display(),
            self.cdi_dir().display(),
            self.cache_dir().display(),
        )
    }

    /// The CDI spec directory [`FakeDriver::shim_config`] names (created empty).
    pub fn cdi_dir(&self) -> PathBuf {
        self.dir.path().join("cdi")
    }

    /// The inventory cache directory [`FakeDriver::shim_config`] names.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn write_mig(&self, mig: &[MigLayout]) {
        if mig.is_empty() {
            return;
        }
        let proc = self.proc_root();
        let mut minors = String::from("config 1\nmonitor 2\n");
        let mut next = 3;
        let mut access = |path: &Path, key: String, minors: &mut String| {
            write(
                path,
                &format!("DeviceFileMinor: {next}\nDeviceFileMode: 292\nDeviceFileModify: 1\n"),
            );
            minors.push_str(&format!("{key} {next}\n"));
            next += 1;
        };
        let caps = proc.join("driver/nvidia/capabilities");
        for (name, minor) in [("config", 1), ("monitor", 2)] {
            write(
                &caps.join("mig").join(name),
                &format!("DeviceFileMinor: {minor}\nDeviceFileMode: 256\nDeviceFileModify: 1\n"),
            );
        }
        for (gpu, instances) in mig {
            let dir = caps.join(format!("gpu{gpu}/mig"));
            for (gi, cis) in instances {
                let gi_dir = dir.join(format!("gi{gi}"));
                access(
                    &gi_dir.join("access"),
                    format!("gpu{gpu}/gi{gi}/access"),
                    &mut minors,
                );
                for ci in cis {
                    access(
                        &gi_dir.join(format!("ci{ci}/access")),
                        format!("gpu{gpu}/gi{gi}/ci{ci}/access"),
                        &mut minors,
                    );
                }
            }
        }
        write(&proc.join("driver/nvidia-caps/mig-minors"), &minors);
    }

    fn write(&self, gpus: u32, reverse_minors: bool, infiniband: bool) {
        let root = self.dir.path();
        let proc = self.proc_root();
        std::fs::create_dir_all(self.cdi_dir()).expect("create the CDI dir");
        write(
            &proc.join("driver/nvidia/version"),
            &format!("NVRM version: NVIDIA UNIX x86_64 Kernel Module  {}  Thu Jan  1 00:00:00 UTC 2026\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n", self.version),
        );
        write(
            &proc.join("driver/nvidia/params"),
            "ResmanDebugLevel: 4294967295\nModifyDeviceFiles: 1\nDeviceFileMode: 438\n",
        );
        for i in 0..gpus {
            let bus = format!("0000:00:{:02x}.0", 6 + i);
            let minor = if reverse_minors { gpus - 1 - i } else { i };
            write(
                &proc.join(format!("driver/nvidia/gpus/{bus}/information")),
                &format!(
                    "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 32\nGPU UUID: \t GPU-{i:08x}-1111-2222-3333-444455556666\nVideo BIOS: \t ??.??.??.??.??\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t {bus}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
                ),
            );
        }
        write(
            &proc.join("devices"),
            "Character devices:\n  1 mem\n  4 tty\n195 nvidia\n195 nvidiactl\n238 nvidia-uvm\n241 nvidia-caps\n242 nvidia-caps-imex-channels\n\nBlock devices:\n  8 sd\n",
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let dev = root.join("dev");
            std::fs::create_dir_all(&dev).expect("mkdir dev");
            let mut nodes = vec![
                ("nvidiactl".to_owned(), 195, 255),
                ("nvidia-uvm".to_owned(), 238, 0),
                ("nvidia-uvm-tools".to_owned(), 238, 1),
                ("nvidia-modeset".to_owned(), 195, 254),
            ];
            nodes.extend((0..gpus).map(|m| (format!("nvidia{m}"), 195, m)));
            if infiniband {
                nodes.extend([
                    ("infiniband/uverbs0".to_owned(), 231, 192),
                    ("infiniband/uverbs1".to_owned(), 231, 193),
                    ("infiniband/rdma_cm".to_owned(), 10, 58),
                ]);
            }
            for (name, major, minor) in nodes {
                mknod(&dev.join(name), major, minor);
            }
        }
        if self.external_root.is_some() {
            return;
        }
        let droot = self.driver_root();
        let share = match self.layout {
            Layout::Distro => "usr/share",
            Layout::UsrLocalNvidia => "share",
        };
        write(
            &droot.join(share).join("vulkan/icd.d/nvidia_icd.json"),
            "{\"file_format_version\":\"1.0.1\",\"ICD\":{\"library_path\":\"libGLX_nvidia.so.0\",\"api_version\":\"1.4.312\"}}\n",
        );
        write(
            &droot.join(share).join("glvnd/egl_vendor.d/10_nvidia.json"),
            "{\"file_format_version\":\"1.0.0\",\"ICD\":{\"library_path\":\"libEGL_nvidia.so.0\"}}\n",
        );
        let (libdir, bindir, fwdir) = match self.layout {
            Layout::Distro => ("usr/lib/x86_64-linux-gnu", "usr/bin", "lib/firmware/nvidia"),
            Layout::UsrLocalNvidia => ("lib64", "bin", "firmware/nvidia"),
        };
        let libdir = droot.join(libdir);
        std::fs::create_dir_all(&libdir).expect("mkdir lib");
        for (stem, soname) in LIBRARIES {
            let file = format!("{stem}.so.{VERSION}");
            std::fs::copy(shared_object(soname), libdir.join(&file)).expect("copy library");
            if *soname != file {
                std::os::unix::fs::symlink(&file, libdir.join(soname)).expect("soname link");
            }
        }
        if self.layout == Layout::UsrLocalNvidia {
            std::os::unix::fs::symlink("lib64", droot.join("lib")).expect("lib link");
        }
        let smi = droot.join(bindir).join("nvidia-smi");
        write(&smi, "#!/bin/sh\necho \"GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-1111-2222-3333-444455556666)\"\n");
        std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for fw in ["gsp_ga10x.bin", "gsp_tu10x.bin"] {
            write(&droot.join(fwdir).join(VERSION).join(fw), "firmware");
        }
    }
}
