//! Test images written as OCI image layouts (no registry, no network): a busybox image built
//! from Debian's `busybox-static`, with the standard `/etc/passwd` and `/etc/group`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Where the static busybox comes from, unless `NVIDIA_TEST_BUSYBOX` names another (the GPU
/// host has none of its own; its test kit carries one).
pub const BUSYBOX: &str = "/bin/busybox";

fn busybox_path() -> std::path::PathBuf {
    std::env::var_os("NVIDIA_TEST_BUSYBOX")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| BUSYBOX.into())
}

/// One file of an image layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A regular file with mode and content.
    File(String, u32, Vec<u8>),
    /// A directory.
    Dir(String),
    /// A symlink `path -> target`.
    Symlink(String, String),
}

/// A single-layer image.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// The layer's entries, in order.
    pub entries: Vec<Entry>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.Entrypoint`; empty means none (the command is then `Cmd`, `sh`).
    pub entrypoint: Vec<String>,
}

impl ImageSpec {
    /// busybox with its applets as symlinks in `/bin`, passwd/group, and the usual dirs.
    pub fn busybox() -> Result<Self> {
        let busybox = busybox_path();
        let bb = fs::read(&busybox)
            .with_context(|| format!("read {} (install busybox-static)", busybox.display()))?;
        let list = std::process::Command::new(&busybox)
            .arg("--list")
            .output()
            .context("busybox --list")?;
        let mut entries = vec![
            Entry::Dir("bin".into()),
            Entry::Dir("etc".into()),
            Entry::Dir("tmp".into()),
            Entry::Dir("proc".into()),
            Entry::Dir("sys".into()),
            Entry::Dir("dev".into()),
            Entry::Dir("root".into()),
            Entry::File("bin/busybox".into(), 0o755, bb),
            Entry::File(
                "etc/passwd".into(),
                0o644,
                b"root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1::/:/bin/false\nbin:x:2:2::/bin:/bin/false\nsys:x:3:3::/dev:/bin/false\nnobody:x:65534:65534::/:/bin/false\n".to_vec(),
            ),
            Entry::File(
                "etc/group".into(),
                0o644,
                b"root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nnogroup:x:65534:\n".to_vec(),
            ),
        ];
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
            }
        }
        Ok(Self {
            entries,
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            entrypoint: Vec::new(),
        })
    }

    /// busybox plus the host's glibc (the loader, libc and what NVIDIA's binaries and libraries
    /// need besides: libm, libdl, libpthread, librt, libutil, libgcc_s), the shape of a
    /// glibc-based image: CUDA programs and `nvidia-smi` are glibc programs, and neither the
    /// toolkit nor this shim injects a glibc. No `ldconfig` and no `/etc/ld.so.cache`, as in
    /// distroless images.
    pub fn glibc() -> Result<Self> {
        let mut me = Self::busybox()?;
        for d in [
            "lib",
            "lib64",
            "lib/x86_64-linux-gnu",
            "usr",
            "usr/bin",
            "usr/lib",
        ] {
            me.entries.push(Entry::Dir(d.into()));
        }
        let host = |p: &str| -> Result<Vec<u8>> {
            fs::read(fs::canonicalize(p)?).with_context(|| format!("read the host's {p}"))
        };
        me.entries.push(Entry::File(
            "lib64/ld-linux-x86-64.so.2".into(),
            0o755,
            host("/lib64/ld-linux-x86-64.so.2")?,
        ));
        for lib in [
            "libc.so.6",
            "libm.so.6",
            "libdl.so.2",
            "libpthread.so.0",
            "librt.so.1",
            "libutil.so.1",
            "libgcc_s.so.1",
        ] {
            me.entries.push(Entry::File(
                format!("lib/x86_64-linux-gnu/{lib}"),
                0o755,
                host(&format!("/lib/x86_64-linux-gnu/{lib}"))?,
            ));
        }
        Ok(me)
    }

    /// Adds the host file `host` as executable `path` in the image.
    pub fn with_program(mut self, path: &str, host: &Path) -> Result<Self> {
        let bytes = fs::read(host).with_context(|| format!("read {}", host.display()))?;
        self.entries.push(Entry::File(path.into(), 0o755, bytes));
        Ok(self)
    }

    /// A pod sandbox ("pause") image: busybox whose entrypoint sleeps until killed, with no
    /// `Env` at all, as pause images built `FROM scratch` with only an `Entrypoint` have.
    pub fn pause() -> Result<Self> {
        let mut me = Self::without_env()?;
        me.entrypoint = vec!["/bin/sleep".into(), "2147483647".into()];
        Ok(me)
    }

    /// busybox with no `Env` in its config (no `PATH` either): CRI gives such a container no
    /// environment of its own, where `ctr` always adds a `PATH`.
    pub fn without_env() -> Result<Self> {
        let mut me = Self::busybox()?;
        me.env.clear();
        Ok(me)
    }

    fn layer(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match e {
                Entry::Dir(p) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, format!("{p}/"), std::io::empty())?;
                }
                Entry::File(p, mode, data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, p, data.as_slice())?;
                }
                Entry::Symlink(p, target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, p, target)?;
                }
            }
        }
        Ok(b.into_inner()?)
    }

    /// Unpacks the image's layer into directory `dir` (a root filesystem without containerd).
    pub fn unpack(&self, dir: &Path) -> Result<()> {
        let layer = self.layer()?;
        tar::Archive::new(layer.as_slice())
            .unpack(dir)
            .with_context(|| format!("unpack the image into {}", dir.display()))
    }

    /// Writes the image as an OCI layout archive for `ctr image import`, named `name`
    /// (a full reference such as `docker.io/library/x:latest`).
    pub fn write_archive(&self, name: &str, out: &Path) -> Result<PathBuf> {
        let layer = self.layer()?;
        let layer_digest = sha256(&layer);
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": self.env,
                "Entrypoint": (!self.entrypoint.is_empty()).then_some(&self.entrypoint),
                "Cmd": if self.entrypoint.is_empty() { Some(["sh"]) } else { None },
            },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_digest}")] },
        })
        .to_string()
        .into_bytes();
        let config_digest = sha256(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": format!("sha256:{config_digest}"),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": format!("sha256:{layer_digest}"),
                "size": layer.len(),
            }],
        })
        .to_string()
        .into_bytes();
        let manifest_digest = sha256(&manifest);
        let tag = name.rsplit(':').next().unwrap_or("latest");
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{manifest_digest}"),
                "size": manifest.len(),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        })
        .to_string()
        .into_bytes();

        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| -> Result<()> {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            b.append_data(&mut h, path, data)?;
            Ok(())
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        add("index.json", &index)?;
        add(&format!("blobs/sha256/{layer_digest}"), &layer)?;
        add(&format!("blobs/sha256/{config_digest}"), &config)?;
        add(&format!("blobs/sha256/{manifest_digest}"), &manifest)?;
        let bytes = b.into_inner()?;
        fs::write(out, bytes).with_context(|| format!("write {}", out.display()))?;
        Ok(out.to_owned())
    }
}

fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
