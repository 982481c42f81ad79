//! Container lifecycle through `ctr --runtime io.containerd.nvidia.v2` against a private
//! containerd 1.6 (issue 2's acceptance tests). Each test has its own containerd.

use anyhow::Result;
use nvidia_shim_integration::checks::{
    assert_clean, ctx, eventually, remove_stopped, setup, shim_client, sleeper, stop_and_remove,
    task_status, text, EventStream,
};
use nvidia_shim_integration::containerd::{NAMESPACE, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, Group};
use nvidia_shim_integration::leftovers;
use nvidia_shim_integration::task_api::{any_request, update_request};

#[test]
fn run_prints_output_and_returns_exit_code() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let (code, out, err) = CtrRun::new("exit3").rm().sh("echo hi; exit 3").seen(&c)?;
    assert_eq!((code, out.as_str()), (Some(3), "hi\n"), "stderr: {err}");
    Ok(())
}

#[test]
fn stdin_reaches_the_container() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("stdin").rm().cmd(&["head", "-c", "3"]);
    let out = run.output_with_input(&c, Some(b"abc"))?;
    let (code, stdout) = (out.status.code(), text(&out.stdout));
    assert_eq!(
        (code, stdout.as_str()),
        (Some(0), "abc"),
        "{}",
        text(&out.stderr)
    );
    assert_clean(&c, run.id(), run.id());
    Ok(())
}

#[test]
fn detached_task_ps_metrics_pause_resume_and_sigterm() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let script = "trap 'exit 42' TERM; while true; do sleep 0.1; done";
    let id = CtrRun::new("detached").detach().sh(script).start(&c)?;
    assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

    // The header, then at least the shell and its sleep.
    let ps = c.ctr_ok(&["task", "ps", &id])?;
    assert!(ps.lines().count() >= 2, "task ps: {ps}");

    let m = c.ctr_ok(&["task", "metrics", &id])?;
    assert!(m.contains("pids.current"), "metrics output: {m}");
    assert!(m.contains("memory"), "metrics output: {m}");

    for (op, status) in [("pause", "PAUSED"), ("resume", "RUNNING")] {
        c.ctr_ok(&["task", op, &id])?;
        assert_eq!(task_status(&c, &id).as_deref(), Some(status), "{op}");
    }

    c.ctr_ok(&["task", "kill", "-s", "SIGTERM", &id])?;
    eventually("task to stop", || {
        task_status(&c, &id).as_deref() == Some("STOPPED")
    })?;
    remove_stopped(&c, &id, 42)
}

#[test]
fn missing_command_fails_clearly_and_leaves_nothing() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("nocmd").rm().cmd(&["/no/such/command"]);
    let (_, err) = run.failure(&c)?;
    assert!(
        err.contains("/no/such/command"),
        "error must name the command: {err}"
    );
    assert!(
        err.contains(run.id()),
        "error must name the container: {err}"
    );
    Ok(())
}

#[test]
fn broken_config_file_fails_create_naming_file_and_line() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let cfg = c.dir().join("shim.toml");
    std::fs::write(&cfg, "log_level = \"info\"\nno_such_key = true\n")?;
    let run = CtrRun::new("badcfg").rm().config(cfg.to_string_lossy());
    let (_, err) = run.cmd(&["true"]).failure(&c)?;
    assert!(
        err.contains("shim.toml") && err.contains("line 2"),
        "error: {err}"
    );
    assert!(err.contains("no_such_key"), "error: {err}");
    Ok(())
}

#[test]
fn fifty_cycles_leave_nothing_and_grouped_shim_keeps_its_fds() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // 50 ungrouped cycles: each its own shim, each fully cleaned up.
    for i in 0..50 {
        let (code, _, err) = CtrRun::new("cycle").rm().cmd(&["true"]).seen(&c)?;
        assert_eq!(code, Some(0), "cycle {i}: {err}");
    }

    // 50 cycles inside one long-lived grouped shim.
    let group = Group::start(&c, "grp", &["sleep", "86400"])?;
    let shim = leftovers::shim_daemon_pid(&c.socket()).expect("grouped shim");
    let run_cycle = |n: usize| -> Result<()> {
        for _ in 0..n {
            let id = group.run(&["--rm"]).cmd(&["true"]).start(&c)?;
            assert!(leftovers::cgroups_of(NAMESPACE, &id).is_empty());
            assert!(!c.bundle(&id).exists());
        }
        Ok(())
    };
    run_cycle(5)?; // warm-up: first-use allocations
                   // The shim finishes a container's cleanup (exit reaping, event publishing) just after ctr
                   // returns, so counts are read once the shim has settled; a leak never settles back.
    let settled = || {
        let mut last = leftovers::fd_count(shim);
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = leftovers::fd_count(shim);
            if now == last {
                return now;
            }
            last = now;
        }
        last
    };
    let fds_before = settled();
    run_cycle(50)?;
    let shrank = eventually("the grouped shim's fds to settle", || {
        leftovers::fd_count(shim) <= fds_before
    });
    let fds_after = leftovers::fd_count(shim);
    let open: Vec<String> = std::fs::read_dir(format!("/proc/{shim}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|t| t.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        shrank.is_ok() && fds_after <= fds_before,
        "grouped shim fds grew from {fds_before} to {fds_after}: {open:?}"
    );
    assert_eq!(
        leftovers::shim_pids(&c.socket()).len(),
        2,
        "one grouped shim (and its zygote) serves every cycle"
    );
    group.remove(&c)
}

#[test]
fn killed_shim_is_cleaned_up_by_containerd() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("shimkill").detach();
    let marker = format!("marker-{}", run.id());
    let id = run.sh(&format!("sleep 86400; echo {marker}")).start(&c)?;
    // The start returns once the process is created; its command line is the container's
    // once it has exec'd.
    eventually("the container's process to run", || {
        leftovers::processes_matching(&marker).len() == 1
    })?;
    let shim = leftovers::shim_daemon_pid(&c.socket()).expect("shim running");
    // SAFETY: signalling the shim by pid.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    eventually("container process to be killed", || {
        leftovers::processes_matching(&marker).is_empty()
    })?;
    eventually("task to be gone", || task_status(&c, &id).is_none())?;
    let _ = c.ctr(&["container", "rm", &id]);
    assert_clean(&c, &id, &id);
    Ok(())
}

/// A quiet shim drops the code it ran to create and start the container from its resident set
/// (`shim/src/working_set.rs`), and still serves exec, kill and delete afterwards: that code
/// faults back in when it runs again.
#[test]
fn a_quiet_shim_releases_its_start_up_code_and_still_serves() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let id = sleeper(&c, RUNTIME, &[])?;
    let shim = leftovers::shim_daemon_pid(&c.socket()).expect("shim running");
    let fresh = leftovers::resident_shim_code_kb(shim);
    // Well past the shim's 300 ms quiet spell.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (resident, mapped) = leftovers::resident_shim_code_kb(shim);
    assert!(mapped > 0, "no code mapping found in pid {shim}");
    assert!(
        resident * 3 < mapped,
        "quiet shim keeps {resident} of {mapped} kB of its code resident (just after start: \
         {fresh:?})"
    );

    let exec = c.exec(&id, "probe", &["echo", "again"])?;
    assert_eq!(text(&exec.stdout), "again\n", "{}", text(&exec.stderr));
    stop_and_remove(&c, &id)
}

#[test]
fn containerd_restart_keeps_task_and_reports_its_exit() -> Result<()> {
    let Some(mut c) = setup() else { return Ok(()) };
    let script = "read x < /dev/null; sleep 3; exit 7";
    let id = CtrRun::new("restart").detach().sh(script).start(&c)?;
    c.restart()?;
    assert_eq!(
        task_status(&c, &id).as_deref(),
        Some("RUNNING"),
        "{}",
        c.log()
    );
    let events = EventStream::start(&c)?;
    eventually("task to stop after the restart", || {
        task_status(&c, &id).as_deref() == Some("STOPPED")
    })?;
    // The shim's publisher reconnects to the restarted containerd and retries, so the event
    // may trail the state by a second or two.
    let exit_line = events.wait_for("/tasks/exit", &id)?;
    assert!(exit_line.contains("\"exit_status\":7"), "{exit_line}");
    remove_stopped(&c, &id, 7)
}

#[test]
fn update_applies_new_resources_through_the_task_api() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // ctr 1.6 has no `task update`: call the shim's Task API as containerd does.
    let id = sleeper(&c, RUNTIME, &[])?;
    let client = shim_client(&c, &id)?;
    let limit: u64 = 48 << 20;
    let resources = format!(r#"{{"memory":{{"limit":{limit}}},"pids":{{"limit":77}}}}"#);
    client.update(ctx(), &update_request(&id, &resources))?;
    let read = |file: &str| leftovers::cgroup_file(NAMESPACE, &id, file);
    let mem = read("memory.limit_in_bytes")?.or(read("memory.max")?);
    let cgroup = leftovers::cgroups_of(NAMESPACE, &id);
    assert_eq!(mem, Some(limit.to_string()), "cgroups {cgroup:?}");
    assert_eq!(read("pids.max")?, Some("77".to_owned()));

    // A request that is not OCI JSON is refused, naming the container.
    let err = client
        .update(ctx(), &any_request(&id, "x", b"nope"))
        .expect_err("invalid resources must fail");
    assert!(format!("{err:?}").contains(&id), "{err:?}");

    stop_and_remove(&c, &id)
}

/// The daemon is `start` forked, not executed afresh: `ps` shows it, and its zygote, with the
/// flags containerd gives a shim daemon, not `start`'s.
#[test]
fn the_daemon_and_its_zygote_show_the_daemons_command_line() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let id = sleeper(&c, RUNTIME, &[])?;
    let socket = c.socket().display().to_string();
    let shims = leftovers::shim_pids(&c.socket());
    assert_eq!(shims.len(), 2, "the daemon and its zygote: {shims:?}");
    for pid in shims {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        // The rewritten command line's zeroed rest shows as empty arguments at its end.
        let end = raw.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let args: Vec<String> = raw[..end]
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(args[0].ends_with("containerd-shim-nvidia-v2"), "{args:?}");
        // containerd adds `-debug` when its own log level is debug, as the tests' is.
        let mut flags = vec!["-namespace", NAMESPACE, "-id", &id, "-address", &socket];
        if args.last().is_some_and(|a| a == "-debug") {
            flags.push("-debug");
        }
        assert_eq!(args[1..], flags, "process {pid}");
    }
    stop_and_remove(&c, &id)
}
