//! A killed helper process of the shim costs no container (issues 14 and 24): the zygote that
//! forks libcontainer's workers can die (`kill -9`, every helper at once) and exec, create,
//! pause, resume, kill and delete still work in the same shim, in the same request: the shim
//! starts a new zygote from its own binary.

use anyhow::Result;
use nvidia_shim_integration::checks::{assert_clean, eventually, run_args, setup, text};
use nvidia_shim_integration::{leftovers, unique_id};

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a pid this test found; no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn every_killed_helper_is_replaced_and_costs_no_container_of_its_shim() -> Result<()> {
    let Some(c) = setup("every_killed_helper_is_replaced_and_costs_no_container_of_its_shim")
    else {
        return Ok(());
    };
    // A grouped shim (a pod's shape): an anchor container and others joining it.
    let group = unique_id("zgrp");
    let ann = format!("io.containerd.nvidia.v2.group={group}");
    let anchor = unique_id("zanchor");
    let out = c.ctr(&run_args(
        &anchor,
        &["-d", "--annotation", &ann],
        &["sleep", "86400"],
    ))?;
    anyhow::ensure!(out.status.success(), "anchor: {}", text(&out.stderr));
    let daemon = leftovers::shim_daemon_pid(&c.socket()).expect("the grouped shim");
    // The shim's helpers: its children that are not container processes.
    let helpers = || leftovers::zygotes_of(&c.socket(), daemon);
    assert_eq!(helpers().len(), 1, "one zygote, no reserve");

    // Every helper at once, three times over: each time the next request starts a new zygote
    // from the shim's binary and goes on.
    for round in 0..3 {
        let victims = helpers();
        assert!(!victims.is_empty(), "round {round}: a zygote to kill");
        for v in &victims {
            sigkill(*v);
        }
        eventually("the killed helpers to be gone", || {
            !helpers().iter().any(|p| victims.contains(p))
        })?;
        let exec = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("after-{round}"),
            &anchor,
            "echo",
            "still-here",
        ])?;
        assert!(exec.status.success(), "exec: {}", text(&exec.stderr));
        assert_eq!(text(&exec.stdout), "still-here\n");
        let joiner = unique_id("zjoin");
        let run = c.ctr(&run_args(
            &joiner,
            &["--rm", "--annotation", &ann],
            &["true"],
        ))?;
        assert!(
            run.status.success(),
            "create in the group: {}",
            text(&run.stderr)
        );
        for op in ["pause", "resume"] {
            let out = c.ctr(&["task", op, &anchor])?;
            assert!(out.status.success(), "{op}: {}", text(&out.stderr));
        }
        // The new zygote is a fresh exec of the shim's binary, never a fork of the shim.
        let fresh = helpers();
        assert_eq!(fresh.len(), 1, "round {round}: {fresh:?}");
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", fresh[0]))?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            args.get(1).map(String::as_str),
            Some("--zygote"),
            "{args:?}"
        );
    }
    assert!(
        c.log().contains("starting a new one from the binary"),
        "the shim says what happened"
    );
    let kill = c.ctr(&["task", "kill", "-s", "SIGKILL", &anchor])?;
    assert!(kill.status.success(), "kill: {}", text(&kill.stderr));
    eventually("the anchor to stop", || {
        nvidia_shim_integration::checks::task_status(&c, &anchor).as_deref() == Some("STOPPED")
    })?;
    let rm = c.ctr(&["task", "rm", &anchor])?;
    assert!(rm.status.success(), "task rm: {}", text(&rm.stderr));
    let rm = c.ctr(&["container", "rm", &anchor])?;
    assert!(rm.status.success(), "container rm: {}", text(&rm.stderr));
    assert_clean(&c, &anchor, &group);
    Ok(())
}

#[test]
fn a_slow_container_does_not_hold_up_the_others_of_its_shim() -> Result<()> {
    let Some(c) = setup("a_slow_container_does_not_hold_up_the_others_of_its_shim") else {
        return Ok(());
    };
    let group = unique_id("sgrp");
    let ann = format!("io.containerd.nvidia.v2.group={group}");
    let anchor = unique_id("sanchor");
    let out = c.ctr(&run_args(
        &anchor,
        &["-d", "--annotation", &ann],
        &["sleep", "86400"],
    ))?;
    anyhow::ensure!(out.status.success(), "anchor: {}", text(&out.stderr));
    // A logging binary that is not ready until the test says so: the Create of a container
    // using it waits for it (as containerd's shims do).
    let logger = c.dir().join("slow-logger.sh");
    let go = c.dir().join("logger-may-start");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nwhile [ ! -e {go} ]; do sleep 0.05; done\nexec 5>&-\n\
             cat <&3 >/dev/null &\ncat <&4 >/dev/null &\nwait\n",
            go = go.display()
        ),
    )?;
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let slow = unique_id("slow");
    let uri = format!("binary://{}", logger.display());
    let mut slow_run = c
        .ctr_cmd(&run_args(
            &slow,
            &["--rm", "--annotation", &ann, "--log-uri", &uri],
            &["true"],
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    eventually("the slow container's logger to start", || {
        !leftovers::processes_matching(&logger.to_string_lossy()).is_empty()
    })?;
    // While that Create waits, the shim still serves the group's other containers.
    let exec = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "meanwhile",
        &anchor,
        "echo",
        "served",
    ])?;
    assert!(exec.status.success(), "exec: {}", text(&exec.stderr));
    assert_eq!(text(&exec.stdout), "served\n");
    let other = unique_id("other");
    let run = c.ctr(&run_args(
        &other,
        &["--rm", "--annotation", &ann],
        &["echo", "too"],
    ))?;
    assert!(run.status.success(), "create: {}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "too\n");
    assert!(
        slow_run.try_wait()?.is_none(),
        "the slow container's Create was still waiting for its logger"
    );
    std::fs::write(&go, "")?;
    let slow_out = nvidia_shim_integration::containerd::wait_output(
        &mut slow_run,
        std::time::Duration::from_secs(60),
    )?;
    assert!(
        slow_out.status.success(),
        "slow: {}",
        text(&slow_out.stderr)
    );
    nvidia_shim_integration::checks::stop_and_remove_in_group(&c, &anchor, &group)?;
    Ok(())
}

/// Bytes free in the filesystem of `path`.
fn free_bytes(path: &std::path::Path) -> Result<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: an all-zero statvfs is a valid out-buffer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    anyhow::ensure!(rc == 0, "statvfs {}", path.display());
    Ok(st.f_bavail * st.f_frsize)
}

#[test]
fn a_start_on_a_full_state_filesystem_leaves_no_process_or_socket() -> Result<()> {
    use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE, RUNTIME};
    if setup("a_start_on_a_full_state_filesystem_leaves_no_process_or_socket").is_none() {
        return Ok(());
    }
    // containerd's state directory (bundles, shim logs and addresses) on a small tmpfs of its
    // own mount namespace.
    let c = Containerd::start_in(|dir| {
        let state = dir.join("state");
        std::fs::create_dir_all(&state)?;
        Ok(vec![
            "unshare".into(),
            "-m".into(),
            "--propagation".into(),
            "private".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "set -e; mount -t tmpfs -o size=1m tmpfs {}; exec \"$@\"",
                state.display()
            ),
            "sh".into(),
        ])
    })?;
    c.import_busybox()?;
    let pid = c.pid().expect("containerd runs");
    // The state directory as containerd sees it.
    let state = std::path::PathBuf::from(format!("/proc/{pid}/root{}", c.state_dir().display()));
    let mut outcomes = Vec::new();
    for (runtime, room) in [
        (RUNTIME, 4096u64),
        (RUNTIME, 8192),
        ("io.containerd.runc.v2", 4096),
        ("io.containerd.runc.v2", 8192),
    ] {
        let filler = state.join("filler");
        let _ = std::fs::remove_file(&filler);
        let free = free_bytes(&state)?;
        std::fs::write(&filler, vec![0u8; free.saturating_sub(room) as usize])?;
        let id = unique_id("full");
        let run = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            BUSYBOX_IMAGE,
            &id,
            "true",
        ])?;
        std::fs::remove_file(&filler)?;
        let answer = if run.status.success() {
            "ran".to_owned()
        } else {
            text(&run.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let _ = c.ctr(&["task", "rm", "-f", &id]);
        let _ = c.ctr(&["container", "rm", &id]);
        let socket = leftovers::shim_socket(&c.socket(), NAMESPACE, &id);
        let gone = eventually("no shim process or socket", || {
            leftovers::shim_pids(&c.socket()).is_empty()
                && leftovers::processes_of("containerd-shim-runc-v2", &c.socket().to_string_lossy())
                    .is_empty()
                && !socket.exists()
        });
        outcomes.push(format!(
            "{runtime}, {room} bytes free: {answer}; left {}",
            if gone.is_ok() {
                "nothing"
            } else {
                "a shim or its socket"
            }
        ));
        if runtime == RUNTIME {
            assert!(gone.is_ok(), "{runtime} {room}: {answer}\n{}", c.log());
            assert_clean(&c, &id, &id);
        }
    }
    // The runc shim's leftovers are shown for the record.
    eprintln!("{outcomes:#?}");
    Ok(())
}
