//! CUDA forward compatibility: an image may carry a newer user-mode driver in
//! `/usr/local/cuda/compat` (`libcuda.so.<version>` and friends) to run a newer CUDA on an older
//! kernel driver. It is used only when it is newer than the host's driver and made for it, which
//! the library's `.note.cuda.fwd_compatibility` ELF note tells; the container's ld cache then
//! lists the compat directory first.
//!
//! The decision is the toolkit's `enable-cuda-compat` hook's: with the note, the host driver's
//! major must be one of the note's `driver` majors and the compat version newer than the host's;
//! without it, the compat major must be greater than the host's major. The host reads the
//! image's files (through its confined root, so a hostile image cannot point the shim outside
//! its rootfs); what it found is decided here.

use std::path::PathBuf;

use crate::require::Version;

/// Where CUDA images keep their forward-compat libraries.
pub const COMPAT_DIR: &str = "/usr/local/cuda/compat";

/// The ELF note section of a compat `libcuda`.
pub const NOTE_SECTION: &str = ".note.cuda.fwd_compatibility";
/// The owner of that note.
const NOTE_OWNER: &str = "NVIDIA Corporation";

/// The `.note.cuda.fwd_compatibility` payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FwdCompatNote {
    /// `format` (1).
    pub format: u32,
    /// `CUDA version`: the CUDA version the library implements.
    #[serde(rename = "CUDA version")]
    pub cuda_version: String,
    /// `driver`: the kernel driver majors it runs on.
    #[serde(default)]
    pub driver: Vec<u64>,
}

/// A compat `libcuda` found in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatLibcuda {
    /// Its path in the container.
    pub path: PathBuf,
    /// Its version, from the file name (`libcuda.so.<version>`).
    pub version: Version,
    /// Its forward-compat note, when it has one.
    pub note: Option<FwdCompatNote>,
    /// Its SONAME (`libcuda.so.1`), read from the same bytes as the note.
    pub soname: Option<String>,
}

/// Why compat libraries are used, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The image has no (or more than one) `libcuda.so.X.Y` in [`COMPAT_DIR`].
    NoCompat,
    /// Use them: the compat driver is newer than the host's and made for it.
    Use(CompatLibcuda),
    /// Keep the host's driver; the reason says why.
    Skip(CompatLibcuda, String),
}

/// The name and version of the image's compat `libcuda` among the regular files `names` of
/// [`COMPAT_DIR`]: exactly one `libcuda.so.X.Y[.Z]` (as the toolkit requires), else `None`.
pub fn compat_candidate<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<(String, Version)> {
    let mut found: Vec<(String, Version)> = names
        .into_iter()
        .filter_map(|name| {
            let v = name.strip_prefix("libcuda.so.")?;
            // X.Y at least: `libcuda.so.1` is the SONAME link, not a versioned file.
            v.contains('.').then_some(())?;
            Some((name.to_owned(), Version::parse(v)?))
        })
        .collect();
    if found.len() != 1 {
        return None;
    }
    found.pop()
}

/// The NVIDIA forward-compat payload among the notes of a note section (`namesz`, `descsz`,
/// `type`, then name and descriptor, each padded to 4 bytes), if one is well formed.
pub fn parse_note(mut notes: &[u8]) -> Option<FwdCompatNote> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        let bytes: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(bytes)).ok()
    };
    let pad = |n: usize| n.checked_add(3).map(|n| n & !3);
    while notes.len() >= 12 {
        let (namesz, descsz) = (word(notes, 0)?, word(notes, 4)?);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = desc_start.checked_add(descsz)?;
        let name = notes.get(12..name_end)?;
        let desc = notes.get(desc_start..desc_end)?;
        let owner = name.split(|&b| b == 0).next().unwrap_or(name);
        if owner == NOTE_OWNER.as_bytes() {
            let json = desc.split(|&b| b == 0).next().unwrap_or(desc);
            if let Ok(note) = serde_json::from_slice(json) {
                return Some(note);
            }
        }
        notes = notes.get(desc_start.checked_add(pad(descsz)?)?..)?;
    }
    None
}

/// Whether `lib` is to be used on a host whose kernel driver is `host_driver`.
pub fn decide(lib: CompatLibcuda, host_driver: &str) -> Decision {
    let Some(host) = Version::parse(host_driver) else {
        return Decision::Skip(
            lib,
            format!("host driver version {host_driver:?} unreadable"),
        );
    };
    let newer = lib.version.cmp_to(&host).is_gt();
    let reason = match &lib.note {
        Some(note) if !note.driver.contains(&host.major()) => Some(format!(
            "made for driver majors {:?}, host driver is {host_driver}",
            note.driver
        )),
        Some(_) if !newer => Some(format!(
            "{} is not newer than host driver {host_driver}",
            lib.version
        )),
        None if lib.version.major() <= host.major() => Some(format!(
            "no forward-compat note and major {} is not above host driver {host_driver}",
            lib.version.major()
        )),
        _ => None,
    };
    match reason {
        Some(r) => Decision::Skip(lib, r),
        None => Decision::Use(lib),
    }
}

#[cfg(test)]
mod tests;
