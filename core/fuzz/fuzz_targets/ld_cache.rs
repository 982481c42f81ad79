//! Any bytes, as an image's `/etc/ld.so.cache`, parse to entries or an error, never a panic;
//! every entry parsed borrows a library and a path from the input (nothing is copied), and a
//! merge over it is bounded by the input's size and parses back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::ldcache::{self, Entry, FLAGS_X86_64};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = ldcache::parse(data) {
        let inside = data.as_ptr_range();
        for e in &entries {
            for s in [e.key, e.value] {
                assert!(s.is_empty() || inside.contains(&s.as_ptr()));
                assert!(s.len() <= ldcache::MAX_STRING);
            }
        }
    }
    let add = [Entry {
        flags: FLAGS_X86_64,
        key: "libcuda.so.1".into(),
        value: "/usr/lib64/libcuda.so.1".into(),
        osversion: 0,
        hwcap: 0,
    }];
    let (merged, _) = ldcache::merge(Some(data), &add);
    assert!(merged.len() <= 3 * data.len() + (64 << 10) + 256);
    let again = ldcache::parse(&merged).expect("a merged cache parses");
    assert!(again.iter().any(|e| e.key == "libcuda.so.1"));
});
