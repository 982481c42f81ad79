//! Unit-level timing of the injection logic: request parsing, device selection, spec edits
//! and their application for 8 GPUs from an already discovered inventory (a warm shim).
//! `cargo bench -p nvidia-shim-core --features fixture` (root: the fake nodes need mknod).

use criterion::{criterion_group, criterion_main, Criterion};
use nvidia_shim_core::cdi::apply_edits;
use nvidia_shim_core::discover::fixture::FakeDriver;
use nvidia_shim_core::discover::Inventory;
use nvidia_shim_core::edits::edits_for;
use nvidia_shim_core::oci_spec::runtime::{ProcessBuilder, Spec, SpecBuilder};
use nvidia_shim_core::request::{GpuRequest, RequestPolicy};
use nvidia_shim_core::require::{check, cuda_for_driver, HostFacts, Version};

fn spec() -> Spec {
    SpecBuilder::default()
        .process(
            ProcessBuilder::default()
                .env(vec![
                    "PATH=/usr/bin:/bin".to_owned(),
                    "NVIDIA_VISIBLE_DEVICES=all".to_owned(),
                    "NVIDIA_DRIVER_CAPABILITIES=compute,utility".to_owned(),
                    "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=535,driver<536".to_owned(),
                ])
                .build()
                .expect("process"),
        )
        .build()
        .expect("spec")
}

fn inject(c: &mut Criterion) {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP inject bench: the fake driver's device nodes need mknod (root)");
        return;
    }
    let fake = FakeDriver::builder().gpus(8).build();
    let inv = Inventory::discover(&fake.roots()).expect("discover");
    let policy = RequestPolicy::default();
    let base = spec();
    c.bench_function("inject 8 GPUs (warm inventory)", |b| {
        b.iter(|| {
            let mut spec = base.clone();
            let request = GpuRequest::from_spec(&spec, &policy).expect("request");
            let driver = Version::parse(&inv.driver_version);
            let host = HostFacts {
                cuda: driver.as_ref().and_then(cuda_for_driver),
                driver,
                unknown_because: None,
            };
            check(&request.requirements, &host, &[]).expect("requirements");
            let edits = edits_for(&inv, &request).expect("edits");
            apply_edits(&mut spec, &[edits.to_cdi()]).expect("apply");
            spec
        })
    });
}

criterion_group!(benches, inject);
criterion_main!(benches);
