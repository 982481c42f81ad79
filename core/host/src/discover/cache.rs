//! The on-disk driver inventory cache, so that a new shim does not rediscover the driver (or
//! initialise NVML) on a warm host. An entry is keyed by what changes when the driver does:
//! the `driver/nvidia/version` text, the GPUs listed under `driver/nvidia/gpus`, the MIG layout
//! under `driver/nvidia/capabilities` and `driver/nvidia-caps/mig-minors`, the modification
//! times of the driver roots' ld caches and library directories (a library installed or removed
//! changes its directory), the configured roots and whether NVML is used. An entry that does not
//! parse, has another format or key, or names files that are gone is discarded, never trusted.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};
use rustix::io::Errno;

use serde::{Deserialize, Serialize};

use nvidia_shim_core::inventory::{
    group_of, Arch, DiscoverError, Inventory, DRIVER_ROOT_CANDIDATES, LD_CACHE,
};

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
    /// An entry (or directory) another user could have written; it was not read.
    Refused {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
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

    /// The entry for `key`. The directory and the entry must be this user's (root's) and
    /// writable by nobody else: an entry another user could write would choose the files
    /// mounted into every GPU container; such an entry is refused, not read.
    pub fn load(&self, key: &CacheKey) -> Lookup {
        let path = self.dir.join(key.file_name());
        if let Err(why) = trusted_dir(&self.dir) {
            return match why {
                Untrusted::Missing => Lookup::Miss,
                Untrusted::Unsafe(reason) => Lookup::Refused { path, reason },
            };
        }
        let opened = rustix::fs::openat(
            CWD,
            &path,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        );
        let file = match opened {
            Ok(fd) => std::fs::File::from(fd),
            Err(Errno::NOENT) => return Lookup::Miss,
            Err(e) => {
                return Lookup::Refused {
                    path,
                    reason: format!(
                        "cannot open it without following a link: {}",
                        std::io::Error::from(e)
                    ),
                }
            }
        };
        match file.metadata() {
            Ok(m) if !m.is_file() => {
                return Lookup::Refused {
                    path,
                    reason: "not a regular file".to_owned(),
                }
            }
            Ok(m) => {
                if let Err(reason) = owned_and_private(&m) {
                    return Lookup::Refused { path, reason };
                }
            }
            Err(e) => return discard(path, e.to_string()),
        }
        let mut bytes = Vec::new();
        use std::io::Read;
        if let Err(e) = file.take(MAX_ENTRY).read_to_end(&mut bytes) {
            return discard(path, e.to_string());
        }
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
        if let Some(odd) = foreign_file(&file.inventory) {
            return discard(
                path,
                format!("it names {}, which is no driver file", odd.display()),
            );
        }
        if let Some(gone) = vanished(&file.inventory) {
            return discard(path, format!("{} is gone", gone.display()));
        }
        Lookup::Hit(Box::new(file.inventory))
    }

    /// Stores `inventory` for `key`, atomically (readers see the old entry or the new one), in
    /// a directory created 0700; one that exists but is not this user's alone is refused.
    pub fn store(&self, key: &CacheKey, inventory: &Inventory) -> std::io::Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        if let Err(Untrusted::Unsafe(reason)) = trusted_dir(&self.dir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not used: {reason}", self.dir.display()),
            ));
        }
        let path = self.dir.join(key.file_name());
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let json = serde_json::to_vec(&CacheFile {
            format: FORMAT,
            key: key.clone(),
            inventory: inventory.clone(),
        })
        .map_err(std::io::Error::other)?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::File::from(rustix::fs::openat(
            CWD,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?);
        f.write_all(&json)?;
        drop(f);
        std::fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The largest cache entry read (a 16-GPU MIG host's is tens of kB).
const MAX_ENTRY: u64 = 16 << 20;

/// Why a cache directory is not used.
enum Untrusted {
    /// It does not exist (yet).
    Missing,
    /// It is not safe to trust.
    Unsafe(String),
}

/// Whether `meta` belongs to this process's user and nobody else can write it.
fn owned_and_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!("owned by uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// Whether `dir` is a real directory (not a link) of this user, writable by nobody else.
fn trusted_dir(dir: &Path) -> Result<(), Untrusted> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Untrusted::Missing),
        Err(e) => return Err(Untrusted::Unsafe(e.to_string())),
    };
    if !meta.is_dir() {
        return Err(Untrusted::Unsafe("not a directory".to_owned()));
    }
    owned_and_private(&meta).map_err(Untrusted::Unsafe)
}

/// A file the inventory names that discovery would never have given: a library not named
/// `<driver library>.so.<driver version>`, or a driver file outside the driver root.
fn foreign_file(inv: &Inventory) -> Option<&Path> {
    let suffix = format!(".so.{}", inv.driver_version);
    let root = &inv.roots.driver_root;
    for lib in &inv.libraries {
        let name = lib.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let known = name
            .strip_suffix(&suffix)
            .is_some_and(|stem| group_of(stem).is_some());
        if !known || !lib.path.starts_with(root) {
            return Some(&lib.path);
        }
    }
    inv.binaries
        .iter()
        .map(|b| b.path.as_path())
        .chain(inv.firmware.iter().map(|(h, _)| h.as_path()))
        .chain(inv.graphics_configs.iter().map(|(h, _)| h.as_path()))
        .find(|p| !p.starts_with(root))
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
    use crate::discover::inventory;
    use crate::fixture::{root_or_skip, FakeDriver};

    /// The key of `fake`'s driver state.
    fn key_of(fake: &FakeDriver, nvml: bool) -> CacheKey {
        let r = fake.roots();
        CacheKey::read(&r.proc_root, Some(&r.driver_root), &r.dev_root, nvml).unwrap()
    }

    /// A one-GPU fake driver whose inventory is stored in its cache directory.
    fn stored() -> (FakeDriver, Inventory, InventoryCache, CacheKey) {
        let fake = FakeDriver::builder().gpus(1).build();
        let inv = inventory(&fake.roots()).unwrap();
        let cache = InventoryCache::new(fake.cache_dir());
        let key = key_of(&fake, false);
        cache.store(&key, &inv).unwrap();
        (fake, inv, cache, key)
    }

    #[test]
    fn a_stored_inventory_is_found_until_the_driver_changes() {
        if !root_or_skip("a_stored_inventory_is_found_until_the_driver_changes") {
            return;
        }
        let fake = FakeDriver::builder().gpus(2).build();
        let r = fake.roots();
        let inv = inventory(&r).unwrap();
        let cache = InventoryCache::new(fake.cache_dir());
        let key = key_of(&fake, false);
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
        let newer = key_of(&fake, false);
        assert_ne!(newer, key);
        assert!(matches!(cache.load(&newer), Lookup::Miss));
        // So does a new MIG layout.
        std::fs::create_dir_all(r.proc_root.join("driver/nvidia/capabilities/gpu0/mig/gi1"))
            .unwrap();
        let mig = key_of(&fake, false);
        assert_ne!(mig, newer);
        // So does turning NVML on: the entry lacks its facts.
        assert_ne!(key_of(&fake, true), mig);
    }

    #[test]
    fn a_library_installed_after_the_entry_changes_the_key() {
        let fake = FakeDriver::builder().gpus(1).build();
        let key = key_of(&fake, false);
        assert!(
            key.library_state
                .iter()
                .any(|(p, _)| p.ends_with("usr/lib/x86_64-linux-gnu")),
            "{:?}",
            key.library_state
        );
        // A new file in a library directory (a package installed later) changes its mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let lib = fake
            .driver_root()
            .join("usr/lib/x86_64-linux-gnu/libnvidia-opencl.so.580.159.04");
        assert!(!lib.exists());
        std::fs::write(&lib, b"new").unwrap();
        let after = key_of(&fake, false);
        assert_ne!(after, key);
        assert_ne!(after.file_name(), key.file_name());
    }

    #[test]
    fn corrupt_or_stale_entries_are_discarded() {
        if !root_or_skip("corrupt_or_stale_entries_are_discarded") {
            return;
        }
        let (fake, inv, cache, key) = stored();
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

    #[test]
    fn entries_and_directories_others_can_write_are_refused() {
        if !root_or_skip("entries_and_directories_others_can_write_are_refused") {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let (fake, inv, cache, key) = stored();
        let dir_mode = std::fs::metadata(fake.cache_dir())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700, "created private");
        let file = fake.cache_dir().join(key.file_name());
        // A poisoned entry, as a user who could write it would leave it: /etc/shadow among the
        // libraries, the file group-writable.
        let mut poisoned: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        poisoned["inventory"]["libraries"][0]["path"] = "/etc/shadow".into();
        std::fs::write(&file, serde_json::to_vec(&poisoned).unwrap()).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        match cache.load(&key) {
            Lookup::Refused { reason, .. } => {
                assert!(reason.contains("writable by group"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Even private, an entry naming a file no discovery gives is thrown away.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        match cache.load(&key) {
            Lookup::Discarded { reason, .. } => assert!(reason.contains("/etc/shadow"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A directory others can write is used for nothing.
        cache.store(&key, &inv).unwrap();
        std::fs::set_permissions(fake.cache_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(cache.load(&key), Lookup::Refused { .. }));
        let err = cache.store(&key, &inv).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        // A directory that is a link is refused too.
        std::fs::set_permissions(fake.cache_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = fake.host_root().join("cache-link");
        std::os::unix::fs::symlink(fake.cache_dir(), &link).unwrap();
        assert!(matches!(
            InventoryCache::new(&link).load(&key),
            Lookup::Refused { .. }
        ));
    }
}
