//! Any `NVIDIA_REQUIRE_*` text parses to a constraint or an error, and evaluating a parsed
//! constraint never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::require::{Constraint, DeviceFacts, HostFacts, Version};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Constraint::parse("NVIDIA_REQUIRE_CUDA", text) {
        let host = HostFacts {
            cuda: Version::parse("12.4"),
            driver: Version::parse("550.54.15"),
            unknown_because: None,
        };
        let device = DeviceFacts {
            arch: Version::parse("9.0"),
            brand: Some("nvidia".to_owned()),
        };
        let _ = c.holds(&host, Some(&device));
        let _ = c.holds(&host, None);
    }
});
