//! Any bytes as a CDI spec file, read as JSON and as YAML: a spec or an error, never a panic;
//! a spec that parses also survives serialising and re-reading.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nvidia_shim_core::cdi::CdiSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for name in ["fuzz.json", "fuzz.yaml"] {
        if let Ok(spec) = CdiSpec::parse(Path::new(name), text) {
            let _ = spec.required_version();
            let json = serde_json::to_string(&spec).expect("a parsed spec serialises");
            let again = CdiSpec::parse(Path::new("again.json"), &json).expect("and reads back");
            assert_eq!(again, spec);
        }
    }
});
