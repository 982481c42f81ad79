//! The container's ld cache after injection: every injected library (and, for images that
//! carry newer CUDA forward-compat libraries, those first) added to the image's
//! `/etc/ld.so.cache` under its SONAME, pointing at the injected file itself, written in place,
//! plus an `ld.so.conf.d` drop-in so that a later `ldconfig` in the container keeps them. Works
//! for images without `ldconfig`; every read and write goes through [`Rootfs`], confined to the
//! rootfs.

use std::path::{Path, PathBuf};

use nvidia_shim_core::compat::{CompatLibcuda, COMPAT_DIR};
use nvidia_shim_core::discover::{group_of, Arch};
use nvidia_shim_core::elf::read_info;
use nvidia_shim_core::ldcache::{merge, Entry};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::rootfs::{Rootfs, RootfsError};

/// Libraries to add to the container's ld cache, with the SONAME links they need.
#[derive(Debug)]
pub struct LdPlan {
    /// The cache entries' flags (the architecture's).
    flags: i32,
    /// (name looked up, library file in the container), in priority order.
    entries: Vec<(String, PathBuf)>,
    /// SONAME links to create: (link, target file name).
    pub links: Vec<(PathBuf, String)>,
}

impl LdPlan {
    /// A plan for `arch` holding the built-in injection's `entries`.
    pub fn new(arch: Arch, entries: &[(String, PathBuf)]) -> Self {
        Self {
            flags: arch.ldcache_flags(),
            entries: entries.to_vec(),
            links: Vec::new(),
        }
    }

    /// The libraries a CDI spec mounted: every `*.so*` file in `folders` (its
    /// `update-ldcache --folder`s), and every NVIDIA driver library wherever it is mounted (a
    /// spec generated without hooks leaves the ld cache to this shim), by the SONAME read from
    /// the host file, with the SONAME link when the file has another name.
    pub fn add_cdi_mounts(&mut self, spec: &Spec, folders: &[PathBuf]) {
        let Some(mounts) = spec.mounts() else { return };
        for m in mounts {
            let dest = m.destination();
            let (Some(dir), Some(file), Some(source)) =
                (dest.parent(), dest.file_name(), m.source())
            else {
                continue;
            };
            let file = file.to_string_lossy();
            let driver_library = file
                .split_once(".so")
                .is_some_and(|(name, _)| group_of(name).is_some());
            if !file.contains(".so") || !(driver_library || folders.iter().any(|f| f == dir)) {
                continue;
            }
            let Some(soname) = std::fs::File::open(source)
                .ok()
                .and_then(|f| read_info(&f).ok())
                .and_then(|i| i.soname)
            else {
                continue;
            };
            if self.entries.iter().any(|(k, _)| *k == soname) {
                continue;
            }
            if soname != file {
                self.links.push((dir.join(&soname), file.into_owned()));
            }
            self.entries.push((soname, dest.to_owned()));
        }
    }

    /// Puts the image's forward-compat libraries (every `lib*.so*` regular file in
    /// [`COMPAT_DIR`], by its SONAME) ahead of the host's: the dynamic loader
    /// takes the first cache entry of a SONAME.
    pub fn prefer_compat(&mut self, rootfs: &Rootfs, lib: &CompatLibcuda) {
        let dir = Path::new(COMPAT_DIR);
        let mut compat = Vec::new();
        for e in rootfs.list_dir(dir) {
            if !e.is_file || !e.name.starts_with("lib") || !e.name.contains(".so") {
                continue;
            }
            let path = dir.join(&e.name);
            // libcuda was read when its note was; the others are read for their SONAME.
            let name = if path == lib.path {
                lib.soname.clone()
            } else {
                rootfs
                    .open_file(&path)
                    .and_then(|f| read_info(&f).ok())
                    .and_then(|i| i.soname)
            };
            let Some(name) = name else { continue };
            compat.push((name, path));
        }
        log::info!(
            "CUDA forward compat: {} ({} libraries) ahead of the host driver",
            lib.path.display(),
            compat.len()
        );
        compat.append(&mut self.entries);
        self.entries = compat;
    }

    /// Adds the entries to the image's `/etc/ld.so.cache` and writes the ld.so.conf.d drop-in.
    pub fn write(&self, rootfs: &Rootfs) -> Result<(), RootfsError> {
        if self.entries.is_empty() {
            return Ok(());
        }
        // The first entry of a name wins (compat libraries come first).
        let mut entries: Vec<Entry> = Vec::with_capacity(self.entries.len());
        for (key, path) in &self.entries {
            if entries.iter().any(|e| e.key == *key) {
                continue;
            }
            entries.push(Entry {
                flags: self.flags,
                key: key.clone(),
                value: path.to_string_lossy().into_owned(),
                osversion: 0,
                hwcap: 0,
            });
        }
        let cache = Path::new("/etc/ld.so.cache");
        let merged = merge(rootfs.read_file(cache).as_deref(), &entries);
        rootfs.write_file(cache, &merged, 0o644)?;
        // In order of first appearance: compat libraries, when used, come first.
        let mut dirs: Vec<String> = Vec::new();
        for (_, path) in &self.entries {
            if let Some(dir) = path.parent().map(|d| d.to_string_lossy().into_owned()) {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        rootfs.write_file(
            Path::new(LD_CONF_DROP_IN),
            format!("{}\n", dirs.join("\n")).as_bytes(),
            0o644,
        )
    }
}

/// Where the shim's ld.so.conf.d drop-in goes, so a later `ldconfig` in the container keeps
/// the injected directories.
const LD_CONF_DROP_IN: &str = "/etc/ld.so.conf.d/000-nvidia-container-shim.conf";
