//! A killed helper process of the shim costs no container (issues 14 and 24): the zygote that
//! forks libcontainer's workers can die (`kill -9`, every helper at once) and exec, create,
//! pause, resume, kill and delete still work in the same shim, in the same request: the shim
//! starts a new zygote from its own binary.

use anyhow::Result;
use nvidia_shim_integration::checks::{
    assert_clean, eventually, free_bytes, remove_leftover, setup, setup_from, text,
};
use nvidia_shim_integration::command::{answer, wait_output};
use nvidia_shim_integration::containerd::{Containerd, NAMESPACE, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, Group};
use nvidia_shim_integration::leftovers;

#[test]
fn every_killed_helper_is_replaced_and_costs_no_container_of_its_shim() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // A grouped shim (a pod's shape): an anchor container and others joining it.
    let group = Group::start(&c, "zgrp", &["sleep", "86400"])?;
    let anchor = &group.anchor;
    let daemon = leftovers::shim_daemon_pid(&c.socket()).expect("the grouped shim");
    // The shim's helpers: its children that are not container processes.
    let helpers = || leftovers::zygotes_of(&c.socket(), daemon);
    assert_eq!(helpers().len(), 1, "one zygote, no reserve");

    // Every helper at once, three times over: each time the next request starts a new zygote
    // from the shim's binary and goes on.
    for round in 0..3 {
        let victims = helpers();
        assert!(!victims.is_empty(), "round {round}: a zygote to kill");
        victims.iter().copied().for_each(leftovers::kill);
        eventually("the killed helpers to be gone", || {
            !helpers().iter().any(|p| victims.contains(p))
        })?;
        let exec_id = format!("after-{round}");
        let exec = c.exec_ok(anchor, &exec_id, &["echo", "still-here"])?;
        assert_eq!(exec, "still-here\n");
        // A create in the group.
        group.run(&["--rm"]).cmd(&["true"]).start(&c)?;
        for op in ["pause", "resume"] {
            c.ctr_ok(&["task", op, anchor])?;
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
    group.remove(&c)
}

#[test]
fn a_slow_container_does_not_hold_up_the_others_of_its_shim() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let group = Group::start(&c, "sgrp", &["sleep", "86400"])?;
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
    let uri = format!("binary://{}", logger.display());
    let mut slow_run = group
        .run(&["--rm", "--log-uri", &uri])
        .cmd(&["true"])
        .command(&c)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    eventually("the slow container's logger to start", || {
        !leftovers::processes_matching(&logger.to_string_lossy()).is_empty()
    })?;
    // While that Create waits, the shim still serves the group's other containers.
    let anchor = &group.anchor;
    let exec = c.exec_ok(anchor, "meanwhile", &["echo", "served"])?;
    assert_eq!(exec, "served\n");
    let run = group.run(&["--rm"]).cmd(&["echo", "too"]).output(&c)?;
    assert!(run.status.success(), "create: {}", text(&run.stderr));
    assert_eq!(text(&run.stdout), "too\n");
    assert!(
        slow_run.try_wait()?.is_none(),
        "the slow container's Create was still waiting for its logger"
    );
    std::fs::write(&go, "")?;
    let slow_out = wait_output(&mut slow_run, std::time::Duration::from_secs(60))?;
    let slow_err = text(&slow_out.stderr);
    assert!(slow_out.status.success(), "slow: {slow_err}");
    group.remove(&c)
}

#[test]
fn a_start_on_a_full_state_filesystem_leaves_no_process_or_socket() -> Result<()> {
    // containerd's state directory (bundles, shim logs and addresses) on a small tmpfs of its
    // own mount namespace.
    let Some(c) = setup_from(Containerd::builder().tmpfs("state", "1m")) else {
        return Ok(());
    };
    let pid = c.pid().expect("containerd runs");
    // The state directory as containerd sees it.
    let state = std::path::PathBuf::from(format!("/proc/{pid}/root{}", c.state_dir().display()));
    let mut outcomes = Vec::new();
    for (runtime, room) in [
        (RUNTIME, 4096u64),
        (RUNTIME, 8192),
        (RUNC, 4096),
        (RUNC, 8192),
    ] {
        let filler = state.join("filler");
        let _ = std::fs::remove_file(&filler);
        let free = free_bytes(&state)?;
        std::fs::write(&filler, vec![0u8; free.saturating_sub(room) as usize])?;
        let run = CtrRun::new("full").runtime(runtime).rm().cmd(&["true"]);
        let out = run.output(&c)?;
        std::fs::remove_file(&filler)?;
        let answer = answer(&out, "ran");
        let id = run.id();
        remove_leftover(&c, id);
        let socket = leftovers::shim_socket(&c.socket(), NAMESPACE, id);
        let gone = eventually("no shim process or socket", || {
            leftovers::shims_of(&c.socket()).is_empty() && !socket.exists()
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
            assert_clean(&c, id, id);
        }
    }
    // The runc shim's leftovers are shown for the record.
    eprintln!("{outcomes:#?}");
    Ok(())
}
