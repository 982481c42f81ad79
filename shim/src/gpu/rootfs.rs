//! Applies a plan's rootfs half through the confined writer: the links next to the mounted
//! libraries (an image's own link at that path replaced, and said), the entries merged into
//! the image's `/etc/ld.so.cache`, and an `ld.so.conf.d` drop-in so that a later `ldconfig` in
//! the container keeps them.

use std::path::Path;

use nvidia_shim_core::compat::Decision;
use nvidia_shim_core::ldcache::{merge, Entry, MAX_CACHE_SIZE};
use nvidia_shim_core::plan::{ld_dirs, RootfsPlan, LD_CONF_DROP_IN};
use nvidia_shim_core_host::root::{Durability, LinkOutcome, Root, RootError};

/// Makes `plan`'s links and ld cache in `rootfs`, logging what the image had in their way.
pub fn apply(id: &str, rootfs: &Root, plan: &RootfsPlan) -> Result<(), RootError> {
    match &plan.compat {
        Decision::Use(lib) => log::info!(
            "container {id}: CUDA forward compat {} ahead of the host driver",
            lib.path.display()
        ),
        Decision::Skip(lib, why) => log::info!(
            "container {id}: CUDA forward compat {} not used: {why}",
            lib.path.display()
        ),
        Decision::NoCompat => {}
    }
    let links = plan
        .links
        .iter()
        .map(|(link, target)| (link.as_path(), target.as_str()));
    for (link, target, outcome) in rootfs.symlinks(links)? {
        match outcome {
            LinkOutcome::Replaced(old) => log::info!(
                "container {id}: the image's {} pointed at {}; now at {target}",
                link.display(),
                old.display(),
            ),
            LinkOutcome::KeptEntry => log::warn!(
                "container {id}: the image's {} is not a symlink and is left in place; the ld cache points {} at the injected library",
                link.display(),
                link.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
            ),
            LinkOutcome::Created | LinkOutcome::Unchanged => {}
        }
    }
    write_ld_cache(id, rootfs, plan)
}

/// Adds the plan's entries to the image's `/etc/ld.so.cache` and writes the drop-in. An image
/// cache that is not a regular file, is over [`MAX_CACHE_SIZE`] or does not parse is replaced
/// by one holding the injected libraries alone (as `ldconfig`, which the toolkit runs, would
/// rebuild it), and said.
fn write_ld_cache(id: &str, rootfs: &Root, plan: &RootfsPlan) -> Result<(), RootError> {
    if plan.ld_entries.is_empty() {
        return Ok(());
    }
    let entries: Vec<Entry> = plan
        .ld_entries
        .iter()
        .map(|(key, path)| Entry {
            flags: plan.ld_flags,
            key: key.clone(),
            value: path.to_string_lossy().into_owned(),
            osversion: 0,
            hwcap: 0,
        })
        .collect();
    let cache = Path::new("/etc/ld.so.cache");
    let existing = match rootfs.read_file(cache, MAX_CACHE_SIZE) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.is_missing() => None,
        Err(e) => {
            log::warn!(
                "container {id}: the image's {} {e}; it is replaced by the injected libraries' entries",
                cache.display()
            );
            None
        }
    };
    let (merged, dropped) = merge(existing.as_deref(), &entries);
    drop(existing);
    if let Some(e) = dropped {
        log::warn!(
            "container {id}: the image's {} is left out ({e}); it is replaced by the injected libraries' entries",
            cache.display()
        );
    }
    // Synced, as ldconfig syncs it: the image's own entries live on only in this file, and a
    // restart of the container (`docker start`) merges into it again.
    rootfs.write_file(cache, &merged, 0o644, Durability::Synced)?;
    // Written anew by every Create, so it needs no fsync (one less on every GPU container).
    let dirs = ld_dirs(&plan.ld_entries);
    rootfs.write_file(
        Path::new(LD_CONF_DROP_IN),
        format!("{}\n", dirs.join("\n")).as_bytes(),
        0o644,
        Durability::Rewritten,
    )
}
