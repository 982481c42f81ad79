//! CDI spec files parsed once per change, for a long-lived shim: each Create lists the spec
//! directories and `stat`s their files (no file is opened), and parses only a file whose
//! state changed since it was last parsed; while no file changed, the same [`Registry`] is
//! shared by every Create. A file's state is its device and inode, size, and modification and
//! change times (nanoseconds): `cdi generate --output` replaces a spec by renaming a new file
//! over it (a new inode), an editor rewrites it in place (new times).
//!
//! A file changed twice within the filesystem's timestamp granularity could keep its size and
//! times; as git does with its index, a file whose times are that recent ([`RACY_WINDOW`]) is
//! not trusted from the cache and is parsed again on the next Create too.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvidia_shim_core::cdi::{CdiSpec, Registry, SpecError};

use super::{load_spec, spec_files, SpecFile};

/// How recent a file's times may be before its cached parse is not trusted.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A spec file's state as `stat` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileState {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file changed less than `window` before `now` (or claims a future time).
    fn racy(&self, now: SystemTime, window: Duration) -> bool {
        let newest = self.mtime.max(self.ctime);
        let Ok(secs) = u64::try_from(newest.0) else {
            return false; // before 1970: old
        };
        let nanos = u32::try_from(newest.1).unwrap_or(0);
        let changed = UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999));
        changed + window > now
    }
}

/// What the last [`SpecCache::registry`] saw: the directories and their files' states.
#[derive(Debug, PartialEq, Eq)]
struct Listing {
    dirs: Vec<PathBuf>,
    files: Vec<(usize, PathBuf, FileState)>,
}

/// Parsed CDI spec files, kept while they are unchanged.
#[derive(Debug)]
pub struct SpecCache {
    files: HashMap<PathBuf, (FileState, Result<Arc<CdiSpec>, SpecError>)>,
    last: Option<(Listing, Arc<Registry>)>,
    parses: u64,
    racy_window: Duration,
}

impl Default for SpecCache {
    fn default() -> Self {
        Self::with_racy_window(RACY_WINDOW)
    }
}

impl SpecCache {
    /// An empty cache that distrusts files changed less than `window` ago (tests use zero).
    pub fn with_racy_window(window: Duration) -> Self {
        Self {
            files: HashMap::new(),
            last: None,
            parses: 0,
            racy_window: window,
        }
    }

    /// How many spec files this cache has parsed (read and deserialised) so far.
    pub fn parses(&self) -> u64 {
        self.parses
    }

    /// The registry of the spec files in `dirs` (as [`super::load_registry`] reads them), parsing
    /// only the files that changed since this cache last parsed them; the same registry while
    /// nothing changed.
    pub fn registry<P: AsRef<Path>>(&mut self, dirs: &[P]) -> Arc<Registry> {
        let now = SystemTime::now();
        let found: Vec<SpecFile> = spec_files(dirs);
        let listing = Listing {
            dirs: dirs.iter().map(|d| d.as_ref().to_owned()).collect(),
            files: found
                .iter()
                .map(|f| (f.priority, f.path.clone(), FileState::of(&f.meta)))
                .collect(),
        };
        let window = self.racy_window;
        let trusted = |state: &FileState| !state.racy(now, window);
        if let Some((last, registry)) = &self.last {
            if *last == listing && listing.files.iter().all(|(_, _, s)| trusted(s)) {
                return Arc::clone(registry);
            }
        }
        let mut loaded = Vec::with_capacity(listing.files.len());
        let mut kept = HashMap::with_capacity(listing.files.len());
        for (priority, path, state) in &listing.files {
            let spec = match self.files.remove(path) {
                Some((old, spec)) if old == *state && trusted(state) => spec,
                _ => {
                    self.parses += 1;
                    load_spec(path).map(Arc::new)
                }
            };
            loaded.push((*priority, path.clone(), spec.clone()));
            kept.insert(path.clone(), (*state, spec));
        }
        // Files no longer listed are forgotten with their specs.
        self.files = kept;
        let registry = Arc::new(Registry::from_loaded(loaded));
        self.last = Some((listing, Arc::clone(&registry)));
        registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::tests::{env_of, spec_text};
    use nvidia_shim_core::cdi::spec::MAX_SPEC_SIZE;

    fn spec(env: &str) -> String {
        spec_text("vendor.com/dev", &["x"], env)
    }

    /// Sets `path`'s modification time `secs` seconds in the past (its change time stays now).
    fn age(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn an_unchanged_file_is_parsed_once_and_a_changed_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, spec("V=1")).unwrap();
        let mut cache = SpecCache::with_racy_window(Duration::ZERO);
        let first = cache.registry(&[dir.path()]);
        assert_eq!(env_of(&first), "V=1");
        assert_eq!(cache.parses(), 1);
        for _ in 0..5 {
            let again = cache.registry(&[dir.path()]);
            assert!(Arc::ptr_eq(&first, &again), "the same registry is shared");
        }
        assert_eq!(cache.parses(), 1, "unchanged: not parsed again");
        // Rewritten in place, same size.
        std::fs::write(&file, spec("V=2")).unwrap();
        age(&file, 100);
        assert_eq!(env_of(&cache.registry(&[dir.path()])), "V=2");
        assert_eq!(cache.parses(), 2);
        // Replaced by a new file renamed over it (as `cdi generate --output` does).
        let tmp = dir.path().join(".a.json.tmp");
        std::fs::write(&tmp, spec("V=3")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(env_of(&cache.registry(&[dir.path()])), "V=3");
        assert_eq!(cache.parses(), 3);
        // Another file beside it: only that one is parsed; the first keeps its parse.
        std::fs::write(
            dir.path().join("b.yaml"),
            spec("B=1").replace("vendor.com/dev", "vendor.com/other"),
        )
        .unwrap();
        let reg = cache.registry(&[dir.path()]);
        assert_eq!(cache.parses(), 4);
        assert!(reg.has_kind("vendor.com/other"));
        // Removed: forgotten, nothing parsed.
        std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
        let reg = cache.registry(&[dir.path()]);
        assert!(!reg.has_kind("vendor.com/other"));
        assert_eq!(cache.parses(), 4);
        // Other directories: a new listing, the file itself unchanged.
        let other = tempfile::tempdir().unwrap();
        let reg = cache.registry(&[dir.path(), other.path()]);
        assert_eq!(env_of(&reg), "V=3");
        assert_eq!(cache.parses(), 4);
    }

    #[test]
    fn a_file_changed_within_the_racy_window_is_parsed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.json");
        std::fs::write(&file, spec("V=1")).unwrap();
        let mut cache = SpecCache::with_racy_window(Duration::from_secs(3600));
        cache.registry(&[dir.path()]);
        cache.registry(&[dir.path()]);
        assert_eq!(cache.parses(), 2, "just written: not trusted");
        let mut trusting = SpecCache::with_racy_window(Duration::ZERO);
        trusting.registry(&[dir.path()]);
        trusting.registry(&[dir.path()]);
        assert_eq!(trusting.parses(), 1);
    }

    #[test]
    fn broken_and_oversized_files_are_named_and_not_reparsed_while_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.json"), spec("V=1")).unwrap();
        std::fs::write(dir.path().join("broken.yaml"), "cdiVersion: [").unwrap();
        let big = dir.path().join("huge.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_SPEC_SIZE + 1).unwrap();
        let mut cache = SpecCache::with_racy_window(Duration::ZERO);
        let reg = cache.registry(&[dir.path()]);
        assert_eq!(cache.parses(), 3);
        let err = reg
            .resolve(&["vendor.com/dev=y".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.yaml")
                && err.contains(&format!(
                    "huge.json: is {} bytes, more than the {} a CDI spec may have",
                    MAX_SPEC_SIZE + 1,
                    MAX_SPEC_SIZE
                )),
            "{err}"
        );
        cache.registry(&[dir.path()]);
        assert_eq!(
            cache.parses(),
            3,
            "errors are kept as long as the files are"
        );
    }
}
