//! The on-disk driver inventory cache, so that a new shim does not rediscover the driver (or
//! initialise NVML) on a warm host. An entry is keyed by what changes when the driver does:
//! the `driver/nvidia/version` text, the GPUs listed under `driver/nvidia/gpus`, the MIG layout
//! under `driver/nvidia/capabilities` and `driver/nvidia-caps/mig-minors`, the modification
//! times of the driver roots' ld caches and library directories (a library installed or removed
//! changes its directory), the configured roots and whether NVML is used. An entry that does not
//! parse, has another format or key, or names files that are gone is discarded, never trusted.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Arch, DiscoverError, Inventory, DRIVER_ROOT_CANDIDATES, LD_CACHE};

/// Version of the cache file layout; bumped when [`Inventory`] changes shape.
pub const FORMAT: u32 = 4;

/// What an inventory depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The text of `driver/nvidia/version`.
    pub version_file: String,
    /// Directory names under `driver/nvidia/gpus`.
    pub gpus: Vec<String>,
    /// Paths under `driver/nvidia/capabilities` (GPU instances and compute instances).
    pub mig_layout: Vec<String>,
    /// The text of `driver/nvidia-caps/mig-minors`.
    pub mig_minors: String,
    /// The configured driver root (`None`: detected).
    pub driver_root: Option<PathBuf>,
    /// The dev root.
    pub dev_root: PathBuf,
    /// The proc root.
    pub proc_root: PathBuf,
    /// Whether NVML is used (its facts are in the inventory or not).
    pub nvml: bool,
    /// Modification times (nanoseconds) of each candidate driver root's ld cache and library
    /// directories that exist.
    pub library_state: Vec<(PathBuf, i128)>,
}

/// The modification time of `path` in nanoseconds, if it exists.
fn mtime(path: &Path) -> Option<i128> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()))
}

/// What the library search of the driver root (or of every candidate root when none is
/// configured) depends on.
fn library_state(driver_root: Option<&Path>) -> Vec<(PathBuf, i128)> {
    let roots: Vec<PathBuf> = match driver_root {
        Some(r) => vec![r.to_owned()],
        None => DRIVER_ROOT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let mut places = vec![LD_CACHE.to_owned()];
    if let Some(arch) = Arch::host() {
        places.extend(arch.library_dirs());
    }
    roots
        .iter()
        .flat_map(|r| places.iter().map(move |p| r.join(p)))
        .filter_map(|p| mtime(&p).map(|t| (p, t)))
        .collect()
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>, depth: usize) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if let Ok(rel) = path.strip_prefix(base) {
            out.push(rel.to_string_lossy().into_owned());
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&path, base, out, depth + 1);
        }
    }
}

impl CacheKey {
    /// Reads the key of the driver under `proc_root`; `NoDriver` when none is loaded.
    pub fn read(
        proc_root: &Path,
        driver_root: Option<&Path>,
        dev_root: &Path,
        nvml: bool,
    ) -> Result<Self, DiscoverError> {
        let version = proc_root.join("driver/nvidia/version");
        let version_file = std::fs::read_to_string(&version)
            .map_err(|_| DiscoverError::NoDriver { path: version })?;
        let mut gpus: Vec<String> = std::fs::read_dir(proc_root.join("driver/nvidia/gpus"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        gpus.sort();
        let caps = proc_root.join("driver/nvidia/capabilities");
        let mut mig_layout = Vec::new();
        walk(&caps, &caps, &mut mig_layout, 0);
        mig_layout.sort();
        Ok(Self {
            version_file,
            gpus,
            mig_layout,
            mig_minors: std::fs::read_to_string(proc_root.join("driver/nvidia-caps/mig-minors"))
                .unwrap_or_default(),
            driver_root: driver_root.map(Path::to_owned),
            dev_root: dev_root.to_owned(),
            proc_root: proc_root.to_owned(),
            nvml,
            library_state: library_state(driver_root),
        })
    }

    /// A short stable name for the key (FNV-1a of its JSON form).
    fn file_name(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let hash = json.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("inventory-{hash:016x}.json")
    }
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    format: u32,
    key: CacheKey,
    inventory: Inventory,
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A valid entry.
    Hit(Box<Inventory>),
    /// No entry.
    Miss,
    /// An entry that could not be trusted; it was removed.
    Discarded {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A cache directory.
#[derive(Debug, Clone)]
pub struct InventoryCache {
    dir: PathBuf,
}

impl InventoryCache {
    /// A cache in `dir` (created on the first store).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The entry for `key`.
    pub fn load(&self, key: &CacheKey) -> Lookup {
        let path = self.dir.join(key.file_name());
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return discard(path, e.to_string()),
        };
        let file: CacheFile = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => return discard(path, format!("corrupt: {e}")),
        };
        if file.format != FORMAT {
            return discard(path, format!("format {} is not {FORMAT}", file.format));
        }
        if file.key != *key {
            return discard(path, "written for another driver state".to_owned());
        }
        if let Some(gone) = vanished(&file.inventory) {
            return discard(path, format!("{} is gone", gone.display()));
        }
        Lookup::Hit(Box::new(file.inventory))
    }

    /// Stores `inventory` for `key`, atomically (readers see the old entry or the new one).
    pub fn store(&self, key: &CacheKey, inventory: &Inventory) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let path = self.dir.join(key.file_name());
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec(&CacheFile {
            format: FORMAT,
            key: key.clone(),
            inventory: inventory.clone(),
        })
        .map_err(std::io::Error::other)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        drop(f);
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

fn discard(path: PathBuf, reason: String) -> Lookup {
    let _ = std::fs::remove_file(&path);
    Lookup::Discarded { path, reason }
}

/// The first file the inventory names that no longer exists as it was.
fn vanished(inv: &Inventory) -> Option<&Path> {
    let nodes = std::iter::once(&inv.ctl)
        .chain(inv.gpu_nodes.values())
        .chain(inv.uvm.iter());
    for n in nodes {
        let ok = std::fs::metadata(&n.host_path).is_ok_and(|m| m.file_type().is_char_device());
        if !ok {
            return Some(&n.host_path);
        }
    }
    inv.libraries
        .iter()
        .map(|l| l.path.as_path())
        .chain(inv.binaries.iter().map(|b| b.path.as_path()))
        .find(|p| !p.exists())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::fixture::FakeDriver;

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("SKIP cache test: fake nodes need mknod (root)");
        }
        root
    }

    #[test]
    fn a_stored_inventory_is_found_until_the_driver_changes() {
        if !root() {
            return;
        }
        let fake = FakeDriver::builder().gpus(2).build();
        let r = fake.roots();
        let inv = Inventory::discover(&r).unwrap();
        let cache = InventoryCache::new(fake.cache_dir());
        let key = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        assert!(matches!(cache.load(&key), Lookup::Miss));
        cache.store(&key, &inv).unwrap();
        match cache.load(&key) {
            Lookup::Hit(got) => assert_eq!(*got, inv),
            other => panic!("{other:?}"),
        }
        // A driver upgrade changes the version text: the old entry no longer answers.
        let version = r.proc_root.join("driver/nvidia/version");
        let text = std::fs::read_to_string(&version).unwrap();
        std::fs::write(&version, text.replace("580.159.04", "580.200.01")).unwrap();
        let newer = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        assert_ne!(newer, key);
        assert!(matches!(cache.load(&newer), Lookup::Miss));
        // So does a new MIG layout.
        std::fs::create_dir_all(r.proc_root.join("driver/nvidia/capabilities/gpu0/mig/gi1"))
            .unwrap();
        let mig = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        assert_ne!(mig, newer);
        // So does turning NVML on: the entry lacks its facts.
        let nvml = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, true).unwrap();
        assert_ne!(nvml, mig);
    }

    #[test]
    fn a_library_installed_after_the_entry_changes_the_key() {
        let fake = FakeDriver::builder().gpus(1).build();
        let r = fake.roots();
        let key = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        assert!(
            key.library_state
                .iter()
                .any(|(p, _)| p.ends_with("usr/lib/x86_64-linux-gnu")),
            "{:?}",
            key.library_state
        );
        // A new file in a library directory (a package installed later) changes its mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let lib = r
            .driver_root
            .join("usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.580.159.04");
        assert!(!lib.exists());
        std::fs::write(&lib, b"new").unwrap();
        let after = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        assert_ne!(after, key);
        assert_ne!(after.file_name(), key.file_name());
    }

    #[test]
    fn corrupt_or_stale_entries_are_discarded() {
        if !root() {
            return;
        }
        let fake = FakeDriver::builder().gpus(1).build();
        let r = fake.roots();
        let inv = Inventory::discover(&r).unwrap();
        let cache = InventoryCache::new(fake.cache_dir());
        let key = CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, false).unwrap();
        cache.store(&key, &inv).unwrap();
        let file = fake.cache_dir().join(key.file_name());
        std::fs::write(&file, b"{\"format\":1,\"key\":").unwrap();
        match cache.load(&key) {
            Lookup::Discarded { reason, .. } => assert!(reason.contains("corrupt"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(!file.exists(), "a corrupt entry is removed");
        cache.store(&key, &inv).unwrap();
        std::fs::remove_file(&inv.libraries[0].path).unwrap();
        match cache.load(&key) {
            Lookup::Discarded { reason, .. } => assert!(reason.contains("is gone"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
