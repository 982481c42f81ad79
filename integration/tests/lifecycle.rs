//! Container lifecycle through `ctr --runtime io.containerd.nvidia.v2` against a private
//! containerd (issue 2's acceptance tests).

use std::time::{Duration, Instant};

use anyhow::Result;
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE, RUNTIME};
use nvidia_shim_integration::{can_run_containerd, leftovers, unique_id};

fn setup(test: &str) -> Option<Containerd> {
    if !can_run_containerd(test) {
        return None;
    }
    let c = Containerd::start().expect("start containerd");
    c.import_busybox().expect("import busybox image");
    Some(c)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts that container `id` left nothing behind.
fn assert_clean(c: &Containerd, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shims = leftovers::shim_pids(&c.socket());
        let mounts = leftovers::mounts_under(&c.bundle(id));
        let cgroups = leftovers::cgroups_of(NAMESPACE, id);
        let bundle = c.bundle(id).exists();
        if shims.is_empty() && mounts.is_empty() && cgroups.is_empty() && !bundle {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "container {id} left: shims {shims:?}, mounts {mounts:?}, cgroups {cgroups:?}, bundle dir {bundle}\n{}",
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn run_prints_output_and_returns_exit_code() -> Result<()> {
    let Some(c) = setup("run_prints_output_and_returns_exit_code") else {
        return Ok(());
    };
    let id = unique_id("exit3");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "echo hi; exit 3",
    ])?;
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_clean(&c, &id);
    Ok(())
}
