//! Any bytes, as an image's `/etc/ld.so.cache`, parse to entries or an error, never a panic,
//! and every entry parsed names a library and a path that were in the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::ldcache;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = ldcache::parse(data) {
        for e in entries {
            assert!(data.len() >= e.key.len() + e.value.len());
        }
    }
});
