//! Hostile input through containerd (issue 14): configuration paths that are not files, huge
//! request values, a cache directory another user controls; and the shim's sockets. Each case
//! must fail (or be refused) quickly, say what and why, and leave nothing behind.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::Result;
use nvidia_shim_core::discover::fixture::FakeDriver;
use nvidia_shim_integration::checks::{
    assert_clean, run_args, run_script, setup, stop_and_remove, text,
};
use nvidia_shim_integration::containerd::{BUSYBOX_IMAGE, NAMESPACE};
use nvidia_shim_integration::image::ImageSpec;
use nvidia_shim_integration::{leftovers, unique_id};

#[test]
fn config_paths_that_are_not_small_regular_files_fail_create_naming_the_file() -> Result<()> {
    let Some(c) = setup("config_paths_that_are_not_small_regular_files_fail_create") else {
        return Ok(());
    };
    let fifo = c.dir().join("fifo.toml");
    let cpath = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; a FIFO in the test's directory.
    assert_eq!(unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) }, 0);
    let big = c.dir().join("big.toml");
    std::fs::write(&big, vec![b'#'; 10 << 20])?;
    let dir = c.dir().join("dir.toml");
    std::fs::create_dir(&dir)?;
    for (path, says) in [
        (fifo.display().to_string(), "is a FIFO"),
        ("/dev/zero".to_owned(), "is a device"),
        (dir.display().to_string(), "is a directory"),
        (big.display().to_string(), "is 10485760 bytes"),
    ] {
        let id = unique_id("cfg");
        let out = c.ctr(&run_args(
            &id,
            &["--rm", "--runtime-config-path", &path],
            &["true"],
        ))?;
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{path}");
        assert!(
            err.contains(&format!("{path} {says}")) && err.contains(&id),
            "{path}: {err}"
        );
        assert_clean(&c, &id, &id);
    }
    Ok(())
}

#[test]
fn huge_request_values_give_bounded_errors() -> Result<()> {
    let Some(c) = setup("huge_request_values_give_bounded_errors") else {
        return Ok(());
    };
    let fake = FakeDriver::builder().gpus(1).build();
    let config = c.dir().join("gpu.toml");
    std::fs::write(&config, fake.shim_config())?;
    let config = config.display().to_string();
    // 1 MiB of GPU ids, from the image's config (ctr's arguments and env files take far less).
    let devices = "7,".repeat(1 << 19);
    let mut image = ImageSpec::busybox()?;
    image.env.push(format!("NVIDIA_VISIBLE_DEVICES={devices}"));
    let huge = "docker.io/library/nvtest-huge-env:latest";
    c.import(&image, huge)?;
    let id = unique_id("huge");
    let mut args = run_args(&id, &["--rm", "--runtime-config-path", &config], &["true"]);
    if let Some(p) = args.iter().position(|a| *a == BUSYBOX_IMAGE) {
        args[p] = huge;
    }
    let out = c.ctr(&args)?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.len() < 6000, "{} bytes of error", err.len());
    assert!(err.contains("bytes") && err.contains(&id), "{err}");
    assert_clean(&c, &id, &id);
    // A 12 kB requirement expression.
    let expression = format!("cuda>=99.0 {}", "driver>=999,driver<1000 ".repeat(500));
    let (code, _, err) = run_script(
        &c,
        &config,
        BUSYBOX_IMAGE,
        &[
            "NVIDIA_VISIBLE_DEVICES=all",
            &format!("NVIDIA_REQUIRE_CUDA={expression}"),
        ],
        "true",
    )?;
    assert_ne!(code, Some(0));
    assert!(err.len() < 6000, "{} bytes of error: {err:.300}", err.len());
    assert!(
        err.contains("unsatisfied condition: cuda>=99.0"),
        "{err:.300}"
    );
    // containerd's log holds the shim's record of it, bounded too.
    let longest = c.log().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a log line of {longest} bytes");
    Ok(())
}

#[test]
fn a_cache_directory_another_user_owns_is_not_trusted() -> Result<()> {
    let Some(c) = setup("a_cache_directory_another_user_owns_is_not_trusted") else {
        return Ok(());
    };
    let fake = FakeDriver::builder().gpus(2).build();
    let cache = c.dir().join("user-cache");
    std::fs::create_dir(&cache)?;
    std::os::unix::fs::chown(&cache, Some(65534), Some(65534))?;
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755))?;
    let text_config = fake
        .shim_config()
        .lines()
        .filter(|l| !l.starts_with("cache_dir"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!("cache_dir = \"{}\"\n", cache.display());
    let config = c.dir().join("cache.toml");
    std::fs::write(&config, text_config)?;
    let (code, out, err) = run_script(
        &c,
        &config.display().to_string(),
        BUSYBOX_IMAGE,
        &["NVIDIA_VISIBLE_DEVICES=all"],
        "ls /dev | grep -c '^nvidia[0-9]'",
    )?;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "2", "discovered, not read from that cache");
    assert_eq!(
        std::fs::read_dir(&cache)?.count(),
        0,
        "nothing written into it"
    );
    assert!(
        c.log().contains("owned by uid 65534"),
        "the refusal is logged"
    );
    Ok(())
}

#[test]
fn the_shim_socket_is_root_only_like_the_runc_shims() -> Result<()> {
    let Some(c) = setup("the_shim_socket_is_root_only_like_the_runc_shims") else {
        return Ok(());
    };
    let mut modes = Vec::new();
    for runtime in ["io.containerd.nvidia.v2", "io.containerd.runc.v2"] {
        let id = unique_id("sock");
        let mut args = run_args(&id, &["-d"], &["sleep", "600"]);
        args[2] = runtime;
        let out = c.ctr(&args)?;
        assert!(out.status.success(), "{runtime}: {}", text(&out.stderr));
        let socket = leftovers::shim_socket(&c.socket(), NAMESPACE, &id);
        let mode = std::fs::metadata(&socket)?.mode() & 0o777;
        modes.push((runtime, mode));
        eprintln!("{runtime}: shim socket mode {mode:o}");
        stop_and_remove(&c, &id)?;
    }
    assert_eq!(modes[0].1, 0o600, "{modes:?}");
    assert!(
        modes[1].1 & 0o077 == 0,
        "the runc shim's is private too: {modes:?}"
    );
    Ok(())
}
