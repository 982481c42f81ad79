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
/// The largest image cache read (a distribution's is 20 to 300 kB); a larger one is treated as
/// absent, as `ldconfig` (which the toolkit runs in the container) would rebuild it.
pub const MAX_CACHE_SIZE: u64 = 4 << 20;
/// The longest key or path read (`PATH_MAX`); a cache with a longer string is not one `ldconfig`
/// wrote.
pub const MAX_STRING: usize = 4096;
/// Slack on top of twice the input's size for the strings one parse may yield (keys and paths
/// can share bytes in the file, as `ldconfig` shares a key with the end of its path).
const STRING_SLACK: usize = 64 << 10;

/// One cache entry, owning its strings (the entries the shim adds).
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

impl Entry {
    /// The entry borrowed.
    pub fn as_ref(&self) -> EntryRef<'_> {
        EntryRef {
            flags: self.flags,
            key: &self.key,
            value: &self.value,
            osversion: self.osversion,
            hwcap: self.hwcap,
        }
    }
}

/// One cache entry whose strings are borrowed from the cache it was parsed from: parsing copies
/// no string, so its memory is bounded by the input's size, however many entries share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Library flags (see [`FLAGS_X86_64`]).
    pub flags: i32,
    /// The SONAME looked up.
    pub key: &'a str,
    /// The path the loader opens.
    pub value: &'a str,
    /// Required OS version (0: any).
    pub osversion: u32,
    /// Hardware capability bits (0: baseline).
    pub hwcap: u64,
}

impl EntryRef<'_> {
    /// The entry with its strings copied.
    pub fn to_owned(&self) -> Entry {
        Entry {
            flags: self.flags,
            key: self.key.to_owned(),
            value: self.value.to_owned(),
            osversion: self.osversion,
            hwcap: self.hwcap,
        }
    }
}

/// A cache file glibc would not read, or one no `ldconfig` would write.
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
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated UTF-8 string at `off`, at most [`MAX_STRING`] bytes long, borrowed.
fn cstr_at(b: &[u8], off: usize) -> Result<&str, &'static str> {
    let rest = b.get(off..).ok_or("points outside the file")?;
    let window = &rest[..rest.len().min(MAX_STRING + 1)];
    let end = window
        .iter()
        .position(|&c| c == 0)
        .ok_or("names a string longer than PATH_MAX or unterminated")?;
    std::str::from_utf8(&window[..end]).map_err(|_| "names a string that is not UTF-8")
}

/// Parses a cache (new format, alone or behind the old-format table) without copying it: each
/// entry borrows its strings from `bytes`. Offsets and counts are checked against the input,
/// each string is at most [`MAX_STRING`] bytes, and the distinct strings (by offset) of all
/// entries together at most twice the input (plus a little): a cache whose entries name
/// overlapping suffixes of one long string is refused instead of multiplying memory when it
/// is written out again. Entries that use the
/// glibc-hwcaps extension are dropped: they are optional variants of baseline entries.
pub fn parse(bytes: &[u8]) -> Result<Vec<EntryRef<'_>>, CacheError> {
    let start = if bytes.starts_with(MAGIC_NEW) {
        0
    } else if bytes.starts_with(MAGIC_OLD) {
        let n = u32_at(bytes, 12).ok_or_else(|| CacheError("truncated old header".into()))?;
        let after = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(12)?.checked_add(16 + 7))
            .map(|a| a & !7)
            .filter(|a| *a <= bytes.len())
            .ok_or_else(|| CacheError(format!("{n} old-format entries do not fit")))?;
        if bytes.get(after..after + MAGIC_NEW.len()) != Some(&MAGIC_NEW[..]) {
            return Err(CacheError("old format without a new-format table".into()));
        }
        after
    } else {
        return Err(CacheError("bad magic".into()));
    };
    let h = &bytes[start..];
    let nlibs = u32_at(h, 20).ok_or_else(|| CacheError("truncated header".into()))?;
    let table_end = usize::try_from(nlibs)
        .ok()
        .and_then(|n| n.checked_mul(ENTRY)?.checked_add(HEADER))
        .filter(|end| *end <= h.len())
        .ok_or_else(|| CacheError(format!("{nlibs} entries do not fit in {} bytes", h.len())))?;
    let budget = h.len().saturating_mul(2).saturating_add(STRING_SLACK);
    let mut strings = 0usize;
    let mut seen: std::collections::HashSet<u32> = Default::default();
    let mut out = Vec::with_capacity((table_end - HEADER) / ENTRY);
    for (i, e) in h[HEADER..table_end].chunks_exact(ENTRY).enumerate() {
        let word = |at| u32_at(e, at).ok_or_else(|| CacheError(format!("entry {i} truncated")));
        let flags = i32::from_le_bytes(word(0)?.to_le_bytes());
        let (key_at, value_at, osversion) = (word(4)?, word(8)?, word(12)?);
        let hwcap = u64_at(e, 16).ok_or_else(|| CacheError(format!("entry {i} truncated")))?;
        if hwcap & HWCAP_EXTENSION != 0 {
            continue;
        }
        // String offsets are relative to the new-format header.
        let string = |off: u32| {
            let off = usize::try_from(off).unwrap_or(usize::MAX);
            cstr_at(h, off).map_err(|why| CacheError(format!("entry {i} {why}")))
        };
        let (key, value) = (string(key_at)?, string(value_at)?);
        // What a cache built from these entries would hold: each distinct string once.
        for (at, s) in [(key_at, key), (value_at, value)] {
            if seen.insert(at) {
                strings = strings.saturating_add(s.len() + 1);
            }
        }
        if strings > budget {
            return Err(CacheError(format!(
                "its entries name more than {budget} bytes of distinct strings in {} bytes",
                bytes.len()
            )));
        }
        out.push(EntryRef {
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
pub fn build(entries: Vec<Entry>) -> Vec<u8> {
    build_refs(entries.iter().map(Entry::as_ref).collect())
}

/// [`build`] of borrowed entries. Each distinct string is written once, so the output is never
/// larger than its entries' table and distinct strings.
pub fn build_refs<'a>(mut entries: Vec<EntryRef<'a>>) -> Vec<u8> {
    entries.sort_by(|a, b| {
        libcmp(b.key, a.key)
            .then(a.flags.cmp(&b.flags))
            .then(a.hwcap.cmp(&b.hwcap))
    });
    entries.dedup_by(|a, b| a.key == b.key && a.flags == b.flags && a.hwcap == b.hwcap);
    let strings_start = HEADER + entries.len() * ENTRY;
    let mut strings: Vec<u8> = Vec::new();
    let mut offsets: std::collections::HashMap<&'a str, u32> = Default::default();
    let mut table: Vec<u8> = Vec::with_capacity(entries.len() * ENTRY);
    let mut put = |s: &'a str| -> u32 {
        *offsets.entry(s).or_insert_with(|| {
            let off = strings_start + strings.len();
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            u32::try_from(off).unwrap_or(u32::MAX)
        })
    };
    for e in &entries {
        let key = put(e.key);
        let value = put(e.value);
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

/// The image's cache (if any) with `add` merged in; `add` wins over image entries with the
/// same SONAME. An image cache that does not parse (see [`parse`]) is left out, as `ldconfig`
/// would rebuild it: the new cache then holds `add` alone, and the reason is returned beside
/// it.
pub fn merge(existing: Option<&[u8]>, add: &[Entry]) -> (Vec<u8>, Option<CacheError>) {
    let (image, error) = match existing.map(parse) {
        Some(Ok(entries)) => (entries, None),
        Some(Err(e)) => (Vec::new(), Some(e)),
        None => (Vec::new(), None),
    };
    let mut entries: Vec<EntryRef<'_>> = image
        .into_iter()
        .filter(|e| !add.iter().any(|a| a.key == e.key && a.flags == e.flags))
        .collect();
    entries.extend(add.iter().map(Entry::as_ref));
    (build_refs(entries), error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            flags: FLAGS_X86_64,
            key: key.into(),
            value: value.into(),
            osversion: 0,
            hwcap: 0,
        }
    }

    fn keys(cache: &[u8]) -> Vec<String> {
        parse(cache)
            .unwrap()
            .iter()
            .map(|e| e.key.to_owned())
            .collect()
    }

    /// A new-format cache of `entries` (flags, key offset, value offset) over `strings`, which
    /// starts right after the table; offsets are relative to the header, as glibc's are.
    fn raw(entries: &[(i32, u32, u32)], strings: &[u8], nlibs: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC_NEW);
        out.extend_from_slice(&nlibs.to_le_bytes());
        out.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0u8; 20]);
        for (flags, key, value) in entries {
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&key.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&[0u8; 12]);
        }
        out.extend_from_slice(strings);
        out
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
        let bytes = build(e.clone());
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 2);
        for x in &e {
            assert!(parsed.contains(&x.as_ref()));
        }
    }

    /// What the host's own `ldconfig -p` prints of `cache`; `None` without an `ldconfig`. With
    /// the host's cache read in [`parses_the_hosts_cache_and_merges_into_it`], the one place
    /// this crate's tests touch the host, on purpose: the format is checked against glibc's.
    #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
    fn ldconfig_print(cache: &[u8]) -> Option<String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ld.so.cache");
        std::fs::write(&file, cache).unwrap();
        let out = std::process::Command::new("ldconfig")
            .arg("-p")
            .arg("-C")
            .arg(&file)
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn host_ldconfig_reads_what_we_write() {
        let Some(text) = ldconfig_print(&build(vec![
            entry("libcuda.so.1", "/usr/local/nvidia/lib64/libcuda.so.1"),
            entry("libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1"),
            // Shares its path with the next: written once.
            entry("libz.so", "/lib/x86_64-linux-gnu/libz.so.1"),
        ])) else {
            eprintln!("SKIP host_ldconfig_reads_what_we_write: no ldconfig");
            return;
        };
        assert!(text.contains("3 libs found"), "{text}");
        assert!(
            text.contains("libcuda.so.1 (libc6,x86-64) => /usr/local/nvidia/lib64/libcuda.so.1"),
            "{text}"
        );
        assert!(
            text.contains("libz.so (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"),
            "{text}"
        );
    }

    #[allow(clippy::disallowed_methods)]
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
        let (merged, error) = merge(Some(&host), &[entry("libcuda.so.1", "/lib64/libcuda.so.1")]);
        assert_eq!(error, None);
        let again = keys(&merged);
        assert!(again.iter().any(|k| k == "libcuda.so.1"));
        assert!(again.iter().any(|k| k == "libc.so.6"));
        if let Some(text) = ldconfig_print(&merged) {
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
        let (fresh, error) = merge(Some(b"garbage"), &[entry("libcuda.so.1", "/x")]);
        assert_eq!(keys(&fresh), ["libcuda.so.1"]);
        assert_eq!(error, Some(CacheError("bad magic".into())));
    }

    #[test]
    fn ours_replace_image_entries_with_the_same_soname() {
        let image = build(vec![entry(
            "libcuda.so.1",
            "/usr/local/cuda/compat/libcuda.so.1",
        )]);
        let (merged, _) = merge(
            Some(&image),
            &[entry("libcuda.so.1", "/lib64/libcuda.so.1")],
        );
        let merged = parse(&merged).unwrap();
        assert_eq!(
            merged,
            vec![entry("libcuda.so.1", "/lib64/libcuda.so.1").as_ref()]
        );
    }

    #[test]
    fn many_entries_naming_one_huge_string_are_refused_not_multiplied() {
        // 1,000 entries whose key is one string of nearly 1 MB: refused by the per-string
        // limit without reading past it.
        let mut strings = b"/lib/x.so\0".to_vec();
        let big = (HEADER + 1000 * ENTRY + strings.len()) as u32;
        strings.extend(std::iter::repeat_n(b'a', 1 << 20));
        strings.push(0);
        let table: Vec<_> = (0..1000)
            .map(|_| (FLAGS_X86_64, big, (HEADER + 1000 * ENTRY) as u32))
            .collect();
        let err = parse(&raw(&table, &strings, 1000)).unwrap_err();
        assert!(err.0.contains("PATH_MAX"), "{err}");
        // Strings under the limit, each entry naming another suffix of one 4 kB string: the
        // strings named add up to far more than the file holds, and the cache is refused.
        let base = (HEADER + 4000 * ENTRY) as u32;
        let mut strings = vec![b'b'; 4000];
        strings.push(0);
        let table: Vec<_> = (0..4000u32)
            .map(|i| (FLAGS_X86_64, base + i, base + i))
            .collect();
        let bytes = raw(&table, &strings, 4000);
        let err = parse(&bytes).unwrap_err();
        assert!(err.0.contains("bytes of distinct strings"), "{err}");
        // And a merge over it keeps only what the shim adds, small.
        let (merged, error) = merge(
            Some(&bytes),
            &[entry("libcuda.so.1", "/lib64/libcuda.so.1")],
        );
        assert!(error.is_some());
        assert!(merged.len() < 200, "{} bytes", merged.len());
    }

    #[test]
    fn repeated_strings_are_borrowed_and_written_once() {
        // 10,000 entries naming one short string: parsed without copying, merged into a cache
        // that holds the string once (they share one key, so one entry survives).
        let base = (HEADER + 10_000 * ENTRY) as u32;
        let strings = b"libdup.so.1\0";
        let table: Vec<_> = (0..10_000).map(|_| (FLAGS_X86_64, base, base)).collect();
        let bytes = raw(&table, strings, 10_000);
        let parsed = parse(&bytes).unwrap();
        assert_eq!(parsed.len(), 10_000);
        let inside = bytes.as_ptr_range();
        assert!(parsed
            .iter()
            .all(|e| inside.contains(&e.key.as_ptr()) && inside.contains(&e.value.as_ptr())));
        let (merged, error) = merge(Some(&bytes), &[]);
        assert_eq!(error, None);
        assert_eq!(merged.len(), HEADER + ENTRY + 12);
    }

    #[test]
    fn offsets_and_counts_out_of_range_are_errors() {
        let strings = b"libok.so.1\0/ok\0";
        let base = (HEADER + ENTRY) as u32;
        // A key past the end of the file.
        let err = parse(&raw(&[(FLAGS_X86_64, u32::MAX, base)], strings, 1)).unwrap_err();
        assert!(err.0.contains("outside the file"), "{err}");
        let err = parse(&raw(&[(FLAGS_X86_64, base + 1000, base)], strings, 1)).unwrap_err();
        assert!(err.0.contains("outside the file"), "{err}");
        // An unterminated string at the very end.
        let err = parse(&raw(&[(FLAGS_X86_64, base, base)], b"abc", 1)).unwrap_err();
        assert!(err.0.contains("unterminated"), "{err}");
        // Counts larger than the file, up to u32::MAX.
        for n in [2, 1000, u32::MAX] {
            let err = parse(&raw(&[(FLAGS_X86_64, base, base)], strings, n)).unwrap_err();
            assert!(err.0.contains("do not fit"), "{n}: {err}");
        }
        // An old-format header whose count overflows.
        let mut old = MAGIC_OLD.to_vec();
        old.push(0);
        old.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&old).is_err());
        // A well-formed one for contrast.
        let ok = raw(&[(FLAGS_X86_64, base, base + 11)], strings, 1);
        assert_eq!(
            parse(&ok).unwrap(),
            [EntryRef {
                flags: FLAGS_X86_64,
                key: "libok.so.1",
                value: "/ok",
                osversion: 0,
                hwcap: 0
            }]
        );
    }
}
