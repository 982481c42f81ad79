//! Unit-level timing of the injection logic: request parsing, device selection, spec edits
//! and their application for 8 GPUs from an already discovered inventory (a warm shim).
//! `cargo bench -p nvidia-shim-core-host` (root: the fake nodes need mknod).

use criterion::{criterion_group, criterion_main, Criterion};
use nvidia_shim_core::cdi::apply_edits;
use nvidia_shim_core::request::{GpuRequest, RequestPolicy};
use nvidia_shim_core::require::{check, cuda_for_driver, HostFacts, Version};
use nvidia_shim_core_host::discover;
use nvidia_shim_core_host::fixture::{root_or_skip, spec_with_env, FakeDriver};
use nvidia_shim_core_host::snapshot::edits_for;

fn inject(c: &mut Criterion) {
    if !root_or_skip("inject bench") {
        return;
    }
    let fake = FakeDriver::builder().gpus(8).build();
    let inv = discover::inventory(&fake.roots()).expect("discover");
    let policy = RequestPolicy::default();
    let base = spec_with_env(&[
        "PATH=/usr/bin:/bin",
        "NVIDIA_VISIBLE_DEVICES=all",
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=535,driver<536",
    ]);
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
