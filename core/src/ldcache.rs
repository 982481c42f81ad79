//! `/etc/ld.so.cache` for a container, written by the shim: the image's own entries plus the
//! injected libraries, in glibc's cache format (`glibc-ld.so.cache1.1`, read by every glibc
//! since 2.3). No `ldconfig` runs, so images without one (busybox, distroless) work, and
//! nothing from the image is executed on the host's behalf.

use std::cmp::Ordering;

/// The new-format magic and version.
const MAGIC_NEW: &[u8; 20] = b"glibc-ld.so.cache1.1";
/// The old (libc5 / glibc 2.0) format magic, still in front of some caches.
const MAGIC_OLD: &[u8; 11] = b"ld.so-1.7.0";
/// `FLAG_ELF_LIBC6 | FLAG_X8664_LIB64`: what x86-64 glibc accepts.
pub const FLAGS_X86_64: i32 = 0x0303;
/// Entries whose hwcap refers to the extension section (glibc-hwcaps subdirectories).
const HWCAP_EXTENSION: u64 = 1 << 62;
const HEADER: usize = 48;
const ENTRY: usize = 24;

/// One cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Library flags (see [`FLAGS_X86_64`]).
    pub flags: i32,
    /// The SONAME looked up.
    pub key: String,
    /// The path the loader opens.
    pub value: String,
    /// Required OS version (0: any).
    pub osversion: u32,
    /// Hardware capability bits (0: baseline).
    pub hwcap: u64,
}

/// A cache file glibc would not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a glibc ld.so.cache: {0}")]
pub struct CacheError(pub String);

/// glibc's `_dl_cache_libcmp`: digit runs compare numerically, so `libfoo.so.10` sorts after
/// `libfoo.so.9`.
pub fn libcmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if a[i].is_ascii_digit() {
            if j < b.len() && b[j].is_ascii_digit() {
                let (mut va, mut vb) = (0u64, 0u64);
                while i < a.len() && a[i].is_ascii_digit() {
                    va = va.saturating_mul(10).saturating_add(u64::from(a[i] - b'0'));
                    i += 1;
                }
                while j < b.len() && b[j].is_ascii_digit() {
                    vb = vb.saturating_mul(10).saturating_add(u64::from(b[j] - b'0'));
                    j += 1;
                }
                if va != vb {
                    return va.cmp(&vb);
                }
            } else {
                return Ordering::Greater;
            }
        } else if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        } else if j >= b.len() || a[i] != b[j] {
            let bj = b.get(j).copied().unwrap_or(0);
            return a[i].cmp(&bj);
        } else {
            i += 1;
            j += 1;
        }
    }
    if j < b.len() {
        Ordering::Less
    } else {
        Ordering::Equal
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn cstr_at(b: &[u8], off: usize) -> Option<String> {
    let rest = b.get(off..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parses a cache (new format, alone or behind the old-format table). Entries that use the
/// glibc-hwcaps extension are dropped: they are optional variants of baseline entries.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>, CacheError> {
    let start = if bytes.starts_with(MAGIC_NEW) {
        0
    } else if bytes.starts_with(MAGIC_OLD) {
        let n =
            u32_at(bytes, 12).ok_or_else(|| CacheError("truncated old header".into()))? as usize;
        let after = 16 + n * 12;
        let aligned = (after + 7) & !7;
        if bytes.get(aligned..aligned + 20) != Some(&MAGIC_NEW[..]) {
            return Err(CacheError("old format without a new-format table".into()));
        }
        aligned
    } else {
        return Err(CacheError("bad magic".into()));
    };
    let h = &bytes[start..];
    let nlibs = u32_at(h, 20).ok_or_else(|| CacheError("truncated header".into()))? as usize;
    if h.len() < HEADER + nlibs * ENTRY {
        return Err(CacheError(format!(
            "{nlibs} entries do not fit in {} bytes",
            h.len()
        )));
    }
    let mut out = Vec::with_capacity(nlibs);
    for i in 0..nlibs {
        let e = &h[HEADER + i * ENTRY..HEADER + (i + 1) * ENTRY];
        let flags = i32::from_le_bytes(e[0..4].try_into().map_err(|_| CacheError("entry".into()))?);
        let key = u32::from_le_bytes(e[4..8].try_into().map_err(|_| CacheError("entry".into()))?)
            as usize;
        let value = u32::from_le_bytes(
            e[8..12]
                .try_into()
                .map_err(|_| CacheError("entry".into()))?,
        ) as usize;
        let osversion = u32::from_le_bytes(
            e[12..16]
                .try_into()
                .map_err(|_| CacheError("entry".into()))?,
        );
        let hwcap = u64::from_le_bytes(
            e[16..24]
                .try_into()
                .map_err(|_| CacheError("entry".into()))?,
        );
        if hwcap & HWCAP_EXTENSION != 0 {
            continue;
        }
        // String offsets are relative to the new-format header.
        let (Some(key), Some(value)) = (cstr_at(h, key), cstr_at(h, value)) else {
            return Err(CacheError(format!(
                "entry {i} points outside the string table"
            )));
        };
        out.push(Entry {
            flags,
            key,
            value,
            osversion,
            hwcap,
        });
    }
    Ok(out)
}

/// Writes `entries` as a new-format cache, sorted as ldconfig sorts them (descending by
/// [`libcmp`], then flags and hwcap) so the loader's binary search finds every key.
pub fn build(mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_by(|a, b| {
        libcmp(&b.key, &a.key)
            .then(a.flags.cmp(&b.flags))
            .then(a.hwcap.cmp(&b.hwcap))
    });
    entries.dedup_by(|a, b| a.key == b.key && a.flags == b.flags && a.hwcap == b.hwcap);
    let strings_start = HEADER + entries.len() * ENTRY;
    let mut strings: Vec<u8> = Vec::new();
    let mut table: Vec<u8> = Vec::with_capacity(entries.len() * ENTRY);
    let put = |s: &str, strings: &mut Vec<u8>| -> u32 {
        let off = strings_start + strings.len();
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        u32::try_from(off).unwrap_or(u32::MAX)
    };
    for e in &entries {
        let key = put(&e.key, &mut strings);
        let value = put(&e.value, &mut strings);
        table.extend_from_slice(&e.flags.to_le_bytes());
        table.extend_from_slice(&key.to_le_bytes());
        table.extend_from_slice(&value.to_le_bytes());
        table.extend_from_slice(&e.osversion.to_le_bytes());
        table.extend_from_slice(&e.hwcap.to_le_bytes());
    }
    let mut out = Vec::with_capacity(strings_start + strings.len());
    out.extend_from_slice(MAGIC_NEW);
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(
        &u32::try_from(strings.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    // flags (0: endianness not recorded, accepted by every glibc), 3 padding bytes,
    // extension_offset (0: none), 3 unused words.
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&table);
    out.extend_from_slice(&strings);
    out
}

/// The image's cache (if any and readable) with `add` merged in; `add` wins over image
/// entries with the same SONAME.
pub fn merge(existing: Option<&[u8]>, add: &[Entry]) -> Vec<u8> {
    let mut entries: Vec<Entry> = existing
        .and_then(|b| parse(b).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !add.iter().any(|a| a.key == e.key && a.flags == e.flags))
        .collect();
    entries.extend_from_slice(add);
    build(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            flags: FLAGS_X86_64,
            key: key.into(),
            value: value.into(),
            osversion: 0,
            hwcap: 0,
        }
    }

    #[test]
    fn libcmp_is_numeric_on_digit_runs() {
        assert_eq!(libcmp("libfoo.so.10", "libfoo.so.9"), Ordering::Greater);
        assert_eq!(libcmp("libfoo.so.1", "libfoo.so.1"), Ordering::Equal);
        assert_eq!(libcmp("liba.so", "libb.so"), Ordering::Less);
        assert_eq!(libcmp("libc.so.6", "libc.so"), Ordering::Greater);
        assert_eq!(
            libcmp("lib1", "liba"),
            Ordering::Greater,
            "digits sort after letters"
        );
    }

    #[test]
    fn round_trips() {
        let e = vec![
            entry("libcuda.so.1", "/lib64/libcuda.so.1"),
            entry("libnvidia-ml.so.1", "/lib64/libnvidia-ml.so.1"),
        ];
        let parsed = parse(&build(e.clone())).unwrap();
        assert_eq!(parsed.len(), 2);
        for x in &e {
            assert!(parsed.contains(x));
        }
    }

    #[test]
    fn host_ldconfig_reads_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ld.so.cache");
        std::fs::write(
            &file,
            build(vec![
                entry("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1"),
                entry("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            ]),
        )
        .unwrap();
        let Ok(out) = Command::new("ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&file)
            .output()
        else {
            eprintln!("SKIP host_ldconfig_reads_what_we_write: no ldconfig");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("2 libs found"), "{text}");
        assert!(
            text.contains("libcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1"),
            "{text}"
        );
    }

    #[test]
    fn parses_the_hosts_cache_and_merges_into_it() {
        let Ok(host) = std::fs::read("/etc/ld.so.cache") else {
            eprintln!("SKIP parses_the_hosts_cache_and_merges_into_it: no /etc/ld.so.cache");
            return;
        };
        let entries = parse(&host).unwrap();
        assert!(
            entries.iter().any(|e| e.key == "libc.so.6"),
            "host cache has libc"
        );
        let merged = merge(Some(&host), &[entry("libcuda.so.1", "/lib64/libcuda.so.1")]);
        let again = parse(&merged).unwrap();
        assert!(again.iter().any(|e| e.key == "libcuda.so.1"));
        assert!(again.iter().any(|e| e.key == "libc.so.6"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ld.so.cache");
        std::fs::write(&file, &merged).unwrap();
        if let Ok(out) = Command::new("ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&file)
            .output()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains("libcuda.so.1 (libc6,x86-64) => /lib64/libcuda.so.1"),
                "{text}"
            );
            assert!(text.contains("libc.so.6 (libc6,x86-64)"), "{text}");
        }
    }

    #[test]
    fn garbage_is_rejected_and_merge_starts_fresh() {
        assert!(parse(b"garbage").is_err());
        let mut truncated = build(vec![entry("a.so.1", "/a")]);
        truncated.truncate(60);
        assert!(parse(&truncated).is_err());
        let fresh = merge(Some(b"garbage"), &[entry("libcuda.so.1", "/x")]);
        assert_eq!(parse(&fresh).unwrap().len(), 1);
    }

    #[test]
    fn ours_replace_image_entries_with_the_same_soname() {
        let image = build(vec![entry(
            "libcuda.so.1",
            "/usr/local/cuda/compat/libcuda.so.1",
        )]);
        let merged = parse(&merge(
            Some(&image),
            &[entry("libcuda.so.1", "/lib64/libcuda.so.1")],
        ))
        .unwrap();
        assert_eq!(merged, vec![entry("libcuda.so.1", "/lib64/libcuda.so.1")]);
    }
}
