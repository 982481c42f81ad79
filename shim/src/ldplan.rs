//! The container's ld cache after injection: the injected libraries (and, for images that
//! carry newer CUDA forward-compat libraries, those first) added to the image's
//! `/etc/ld.so.cache`, written in place, plus an `ld.so.conf.d` drop-in so that a later
//! `ldconfig` in the container keeps them. Works for images without `ldconfig`; every read and
//! write goes through [`Rootfs`], confined to the rootfs.

use std::path::{Path, PathBuf};

use nvidia_shim_core::compat::{CompatLibcuda, COMPAT_DIR};
use nvidia_shim_core::discover::{soname, soname_of};
use nvidia_shim_core::oci_spec::runtime::Spec;
use nvidia_shim_core::rootfs::{Rootfs, RootfsError};

/// Libraries to add to the container's ld cache, with the SONAME links they need.
#[derive(Debug, Default)]
pub struct LdPlan {
    /// (SONAME, path of the SONAME link in the container).
    entries: Vec<(String, PathBuf)>,
    /// SONAME links to create: (link, target file name).
    pub links: Vec<(PathBuf, String)>,
}

impl LdPlan {
    pub fn from_symlinks(symlinks: &[(PathBuf, String)]) -> Self {
        let entries = symlinks
            .iter()
            .filter_map(|(link, _)| {
                Some((
                    link.file_name()?.to_string_lossy().into_owned(),
                    link.clone(),
                ))
            })
            .collect();
        Self {
            entries,
            links: Vec::new(),
        }
    }

    /// `update-ldcache --folder` of a CDI spec: every mounted `*.so*` file in those folders,
    /// by the SONAME read from the host file.
    pub fn add_cdi_folders(&mut self, spec: &Spec, folders: &[PathBuf]) {
        let Some(mounts) = spec.mounts() else { return };
        for m in mounts {
            let dest = m.destination();
            let (Some(dir), Some(file), Some(source)) =
                (dest.parent(), dest.file_name(), m.source())
            else {
                continue;
            };
            let file = file.to_string_lossy();
            if !folders.iter().any(|f| f == dir) || !file.contains(".so") {
                continue;
            }
            let Ok(Some(soname)) = soname(source) else {
                continue;
            };
            let link = dir.join(&soname);
            if self.entries.iter().any(|(_, l)| *l == link) {
                continue;
            }
            if soname != file {
                self.links.push((link.clone(), file.into_owned()));
            }
            self.entries.push((soname, link));
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
                rootfs.read_file(&path).and_then(|b| soname_of(&b))
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
        use nvidia_shim_core::ldcache::{merge, Entry, FLAGS_X86_64};
        if self.entries.is_empty() {
            return Ok(());
        }
        let entries: Vec<Entry> = self
            .entries
            .iter()
            .map(|(key, link)| Entry {
                flags: FLAGS_X86_64,
                key: key.clone(),
                value: link.to_string_lossy().into_owned(),
                osversion: 0,
                hwcap: 0,
            })
            .collect();
        let cache = Path::new("/etc/ld.so.cache");
        let merged = merge(rootfs.read_file(cache).as_deref(), &entries);
        rootfs.write_file(cache, &merged, 0o644)?;
        // In order of first appearance: compat libraries, when used, come first.
        let mut dirs: Vec<String> = Vec::new();
        for (_, link) in &self.entries {
            if let Some(dir) = link.parent().map(|d| d.to_string_lossy().into_owned()) {
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
