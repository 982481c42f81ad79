//! Container lifecycle through `ctr --runtime io.containerd.nvidia.v2` against a private
//! containerd 1.6 (issue 2's acceptance tests). Each test has its own containerd.

use anyhow::Result;
use nvidia_shim_integration::checks::{
    assert_clean, eventually, remove_stopped, run_args, setup, shim_client, stop_and_remove,
    task_status, text, EventStream,
};
use nvidia_shim_integration::containerd::NAMESPACE;
use nvidia_shim_integration::{leftovers, unique_id};

#[test]
fn run_prints_output_and_returns_exit_code() -> Result<()> {
    let Some(c) = setup("run_prints_output_and_returns_exit_code") else {
        return Ok(());
    };
    let id = unique_id("exit3");
    let out = c.ctr(&run_args(&id, &["--rm"], &["sh", "-c", "echo hi; exit 3"]))?;
    assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn stdin_reaches_the_container() -> Result<()> {
    let Some(c) = setup("stdin_reaches_the_container") else {
        return Ok(());
    };
    let id = unique_id("stdin");
    let out = c.ctr_with_input(
        &run_args(&id, &["--rm"], &["head", "-c", "3"]),
        Some(b"abc"),
    )?;
    assert_eq!(text(&out.stdout), "abc", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn detached_task_ps_metrics_pause_resume_and_sigterm() -> Result<()> {
    let Some(c) = setup("detached_task_ps_metrics_pause_resume_and_sigterm") else {
        return Ok(());
    };
    let id = unique_id("detached");
    let script = "trap 'exit 42' TERM; while true; do sleep 0.1; done";
    let out = c.ctr(&run_args(&id, &["-d"], &["sh", "-c", script]))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

    let ps = c.ctr(&["task", "ps", &id])?;
    let ps_text = text(&ps.stdout);
    // The header, then at least the shell and its sleep.
    assert!(ps.status.success(), "task ps: {}", text(&ps.stderr));
    assert!(ps_text.lines().count() >= 2, "task ps: {ps_text}");

    let metrics = c.ctr(&["task", "metrics", &id])?;
    let m = text(&metrics.stdout);
    assert!(
        metrics.status.success(),
        "metrics: {}",
        text(&metrics.stderr)
    );
    assert!(m.contains("pids.current"), "metrics output: {m}");
    assert!(m.contains("memory"), "metrics output: {m}");

    assert!(c.ctr(&["task", "pause", &id])?.status.success());
    assert_eq!(task_status(&c, &id).as_deref(), Some("PAUSED"));
    assert!(c.ctr(&["task", "resume", &id])?.status.success());
    assert_eq!(task_status(&c, &id).as_deref(), Some("RUNNING"));

    assert!(c
        .ctr(&["task", "kill", "-s", "SIGTERM", &id])?
        .status
        .success());
    eventually("task to stop", || {
        task_status(&c, &id).as_deref() == Some("STOPPED")
    })?;
    remove_stopped(&c, &id, 42)
}

#[test]
fn missing_command_fails_clearly_and_leaves_nothing() -> Result<()> {
    let Some(c) = setup("missing_command_fails_clearly_and_leaves_nothing") else {
        return Ok(());
    };
    let id = unique_id("nocmd");
    let out = c.ctr(&run_args(&id, &["--rm"], &["/no/such/command"]))?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/no/such/command"),
        "error must name the command: {err}"
    );
    assert!(err.contains(&id), "error must name the container: {err}");
    let _ = c.ctr(&["container", "rm", &id]);
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn broken_config_file_fails_create_naming_file_and_line() -> Result<()> {
    let Some(c) = setup("broken_config_file_fails_create_naming_file_and_line") else {
        return Ok(());
    };
    let id = unique_id("badcfg");
    let cfg = c.dir().join("shim.toml");
    std::fs::write(&cfg, "log_level = \"info\"\nno_such_key = true\n")?;
    let cfg_arg = cfg.to_string_lossy().into_owned();
    let out = c.ctr(&run_args(
        &id,
        &["--rm", "--runtime-config-path", &cfg_arg],
        &["true"],
    ))?;
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("shim.toml") && err.contains("line 2"),
        "error: {err}"
    );
    assert!(err.contains("no_such_key"), "error: {err}");
    let _ = c.ctr(&["container", "rm", &id]);
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn fifty_cycles_leave_nothing_and_grouped_shim_keeps_its_fds() -> Result<()> {
    let Some(c) = setup("fifty_cycles_leave_nothing_and_grouped_shim_keeps_its_fds") else {
        return Ok(());
    };
    // 50 ungrouped cycles: each its own shim, each fully cleaned up.
    for i in 0..50 {
        let id = unique_id("cycle");
        let out = c.ctr(&run_args(&id, &["--rm"], &["true"]))?;
        assert!(out.status.success(), "cycle {i}: {}", text(&out.stderr));
        assert_clean(&c, &id, &id);
    }

    // 50 cycles inside one long-lived grouped shim.
    let group = unique_id("grp");
    let ann = format!("io.containerd.nvidia.v2.group={group}");
    let anchor = unique_id("anchor");
    let out = c.ctr(&run_args(
        &anchor,
        &["-d", "--annotation", &ann],
        &["sleep", "86400"],
    ))?;
    assert!(out.status.success(), "anchor: {}", text(&out.stderr));
    let shim = leftovers::shim_daemon_pid(&c.socket()).expect("grouped shim");
    let run_cycle = |n: usize| -> Result<()> {
        for _ in 0..n {
            let id = unique_id("gcycle");
            let out = c.ctr(&run_args(&id, &["--rm", "--annotation", &ann], &["true"]))?;
            assert!(out.status.success(), "grouped cycle: {}", text(&out.stderr));
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
    assert!(c
        .ctr(&["task", "kill", "-s", "SIGKILL", &anchor])?
        .status
        .success());
    eventually("anchor to stop", || {
        task_status(&c, &anchor).as_deref() == Some("STOPPED")
    })?;
    assert!(c.ctr(&["task", "rm", &anchor])?.status.success());
    assert!(c.ctr(&["container", "rm", &anchor])?.status.success());
    assert_clean(&c, &anchor, &group);
    Ok(())
}

#[test]
fn killed_shim_is_cleaned_up_by_containerd() -> Result<()> {
    let Some(c) = setup("killed_shim_is_cleaned_up_by_containerd") else {
        return Ok(());
    };
    let id = unique_id("shimkill");
    let marker = format!("marker-{id}");
    let script = format!("sleep 86400; echo {marker}");
    let out = c.ctr(&run_args(&id, &["-d"], &["sh", "-c", &script]))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert_eq!(leftovers::processes_matching(&marker).len(), 1);
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
    let Some(c) = setup("a_quiet_shim_releases_its_start_up_code_and_still_serves") else {
        return Ok(());
    };
    let id = unique_id("quiet");
    let out = c.ctr(&run_args(&id, &["-d"], &["sleep", "600"]))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
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

    let exec = c.ctr(&["task", "exec", "--exec-id", "probe", &id, "echo", "again"])?;
    assert_eq!(
        text(&exec.stdout),
        "again\n",
        "exec: {}",
        text(&exec.stderr)
    );
    stop_and_remove(&c, &id)
}

#[test]
fn containerd_restart_keeps_task_and_reports_its_exit() -> Result<()> {
    let Some(mut c) = setup("containerd_restart_keeps_task_and_reports_its_exit") else {
        return Ok(());
    };
    let id = unique_id("restart");
    let out = c.ctr(&run_args(
        &id,
        &["-d"],
        &["sh", "-c", "read x < /dev/null; sleep 3; exit 7"],
    ))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
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
    use containerd_shim_protos::api::UpdateTaskRequest;
    use containerd_shim_protos::protobuf::well_known_types::any::Any;
    use containerd_shim_protos::protobuf::MessageField;
    use containerd_shim_protos::ttrpc;

    let Some(c) = setup("update_applies_new_resources_through_the_task_api") else {
        return Ok(());
    };
    // ctr 1.6 has no `task update`: call the shim's Task API as containerd does.
    let id = unique_id("update");
    let out = c.ctr(&run_args(&id, &["-d"], &["sleep", "86400"]))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let client = shim_client(&c, &id)?;
    let limit: u64 = 48 << 20;
    let req = UpdateTaskRequest {
        id: id.clone(),
        resources: MessageField::some(Any {
            type_url: "/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: format!(r#"{{"memory":{{"limit":{limit}}},"pids":{{"limit":77}}}}"#)
                .into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    };
    client.update(ttrpc::context::with_timeout(10_000_000_000), &req)?;
    let cgroup = leftovers::cgroups_of(NAMESPACE, &id);
    let read = |file: &str| {
        cgroup
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
    };
    let mem = read("memory.limit_in_bytes").or_else(|| read("memory.max"));
    assert_eq!(mem, Some(limit.to_string()), "cgroups {cgroup:?}");
    assert_eq!(read("pids.max"), Some("77".to_owned()));

    // A request that is not OCI JSON is refused, naming the container.
    let bad = UpdateTaskRequest {
        id: id.clone(),
        resources: MessageField::some(Any {
            type_url: "x".into(),
            value: b"nope".to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = client
        .update(ttrpc::context::with_timeout(10_000_000_000), &bad)
        .expect_err("invalid resources must fail");
    assert!(format!("{err:?}").contains(&id), "{err:?}");

    stop_and_remove(&c, &id)
}
