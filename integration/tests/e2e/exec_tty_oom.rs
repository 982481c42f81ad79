//! Task API parity with the runc shim (issue 3): exec, terminals and resize, OOM, log URIs,
//! concurrent execs, and a failing exec.

use anyhow::Result;
use containerd_shim_protos::api::ResizePtyRequest;
use nvidia_shim_integration::checks::{
    assert_clean, ctx, eventually, setup, shim_client, sleeper, stop_and_remove, task_pid, text,
    EventStream,
};
use nvidia_shim_integration::containerd::{Containerd, NAMESPACE, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::CtrRun;
use nvidia_shim_integration::leftovers;
use nvidia_shim_integration::pty::PtyChild;

/// `ctr task exec -t --exec-id EXEC_ID ID CMD` on a 24x80 terminal.
fn exec_tty(c: &Containerd, id: &str, exec_id: &str, cmd: &str) -> Result<PtyChild> {
    let exec = ["task", "exec", "-t", "--exec-id", exec_id, id, cmd];
    PtyChild::spawn(c.ctr_cmd(&exec), 24, 80)
}

/// `ResizePty` of process `exec_id` (empty: init) of task `id` to `height` x `width`, through
/// the Task API.
fn resize(c: &Containerd, id: &str, exec_id: &str, (height, width): (u32, u32)) -> Result<()> {
    shim_client(c, id)?.resize_pty(
        ctx(),
        &ResizePtyRequest {
            id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            width,
            height,
            ..Default::default()
        },
    )?;
    Ok(())
}

#[test]
fn exec_returns_its_exit_code_output_and_gets_a_tty() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let id = sleeper(&c, RUNTIME, &[])?;
    let out = c.exec(&id, "e1", &["sh", "-c", "echo from-exec; exit 7"])?;
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-exec\n");

    let mut tty = exec_tty(&c, &id, "e2", "tty")?;
    tty.expect("/dev/pts/")?;
    assert!(tty.wait()?.success());

    // The process spec is honoured (user, cwd) and the exec joins every namespace of init.
    let script = "id -u; pwd; for n in mnt pid uts ipc net; do readlink /proc/self/ns/$n; done";
    let out = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e3",
        "--user",
        "65534",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        script,
    ])?;
    let got: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(got[0], "65534");
    assert_eq!(got[1], "/tmp");
    let init_pid = task_pid(&c, &id).expect("task pid");
    for (i, n) in ["mnt", "pid", "uts", "ipc", "net"].iter().enumerate() {
        let init_ns = std::fs::read_link(format!("/proc/{init_pid}/ns/{n}"))?;
        assert_eq!(got[2 + i], init_ns.display().to_string(), "{n} namespace");
    }

    // stdin reaches an exec process.
    let out = c.ctr_with_input(
        &["task", "exec", "--exec-id", "in", &id, "head", "-c", "3"],
        Some(b"xyz"),
    )?;
    assert_eq!(text(&out.stdout), "xyz", "stderr: {}", text(&out.stderr));

    // An exec terminal follows ResizePty (addressed by exec id) through the Task API.
    let mut tty = exec_tty(&c, &id, "sh", "sh")?;
    tty.expect("/ # ")?;
    tty.retry_until("stty size\n", "24 80")?;
    resize(&c, &id, "sh", (50, 120))?;
    tty.retry_until("stty size\n", "50 120")?;
    tty.send("exit 4\n")?;
    assert_eq!(tty.wait()?.code(), Some(4));

    // Pids names exec processes by exec id, as the runc shim does.
    c.ctr_ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "slow",
        &id,
        "sleep",
        "30",
    ])?;
    let ps = c.ctr_ok(&["task", "ps", &id])?;
    assert!(ps.contains("slow"), "task ps: {ps}");
    stop_and_remove(&c, &id)
}

#[test]
fn init_tty_follows_resize_through_the_task_api() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("tty").flags(&["-t"]).rm().cmd(&["sh"]);
    let id = run.id().to_owned();
    let mut cmd = run.command(&c);
    cmd.env("TERM", "dumb");
    let mut tty = PtyChild::spawn(cmd, 24, 80)?;
    // The shell's prompt; ctr then sets the container's terminal size from its own.
    tty.expect("/ # ")?;
    tty.retry_until("stty size\n", "24 80")?;
    resize(&c, &id, "", (40, 100))?;
    tty.retry_until("stty size\n", "40 100")?;
    tty.send("tty; exit 5\n")?;
    tty.expect("/dev/pts/")?;
    assert_eq!(tty.wait()?.code(), Some(5));
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn oom_kill_is_reported_with_status_137() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    eprintln!(
        "exercising the cgroup {} OOM watcher",
        if v2 { "v2" } else { "v1" }
    );
    let events = EventStream::start(&c)?;
    let run = CtrRun::new("oom")
        .rm()
        .flags(&["--memory-limit", "33554432"]);
    let run = run.sh("head -c 268435456 /dev/zero | tail");
    let (code, _, err) = run.seen(&c)?;
    assert_eq!(code, Some(137), "stderr: {err}");
    events.wait_for("/tasks/oom", run.id())?;
    Ok(())
}

#[test]
fn file_log_uri_receives_stdout() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("logfile").rm();
    let log = c.dir().join("logs").join(format!("{}.log", run.id()));
    let uri = format!("file://{}", log.display());
    let run = run.flags(&["--log-uri", &uri]);
    let (code, _, err) = run.sh("echo to-the-log; echo err >&2").seen(&c)?;
    assert_eq!(code, Some(0), "stderr: {err}");
    let written = std::fs::read_to_string(&log)?;
    assert!(written.contains("to-the-log"), "log file holds {written:?}");
    Ok(())
}

#[test]
fn twenty_concurrent_execs_report_their_own_exit_codes() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let id = sleeper(&c, RUNTIME, &[])?;
    let children: Vec<_> = (0..20)
        .map(|i| {
            let script = format!("sleep 0.2; echo exec-{i}; exit {}", i + 10);
            let exec_id = format!("x{i}");
            let mut cmd = c.ctr_cmd(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                &id,
                "sh",
                "-c",
                &script,
            ]);
            cmd.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().map(|child| (i, child))
        })
        .collect::<std::io::Result<_>>()?;
    for (i, child) in children {
        let out = child.wait_with_output()?;
        assert_eq!(
            out.status.code(),
            Some(i + 10),
            "exec x{i}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), format!("exec-{i}\n"));
    }
    stop_and_remove(&c, &id)
}

#[test]
fn exec_of_a_missing_binary_fails_clearly_and_leaves_nothing() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let id = sleeper(&c, RUNTIME, &[])?;
    let out = c.exec(&id, "bad", &["/no/such/binary"])?;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("/no/such/binary") && err.contains(&id),
        "error: {err}"
    );
    // Only init is left in the container, and no exec spec file stays in the bundle.
    let ps = c.ctr(&["task", "ps", &id])?;
    assert_eq!(
        text(&ps.stdout).lines().count(),
        2,
        "task ps: {}",
        text(&ps.stdout)
    );
    let stray: Vec<_> = std::fs::read_dir(c.bundle(&id))?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".exec-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // The same exec id is free again.
    c.exec_ok(&id, "bad", &["true"])?;
    stop_and_remove(&c, &id)
}

#[test]
fn binary_log_uri_feeds_the_logging_binary() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let run = CtrRun::new("logbin").rm();
    let id = run.id().to_owned();
    let logger = c.dir().join("logger.sh");
    let out = c.dir().join(format!("{id}.log"));
    std::fs::write(
        &logger,
        "#!/bin/sh\n# containerd logging-binary protocol: stdout on fd 3, stderr on fd 4, ready on fd 5\n\
         echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > \"$2.meta\"\n\
         exec 5>&-\ncat <&3 > \"$2\" &\ncat <&4 > \"$2.err\" &\nwait\n",
    )?;
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let uri = format!("binary://{}?file={}", logger.display(), out.display());
    let run = run.flags(&["--log-uri", &uri]);
    run.sh("echo to-logger; echo oops >&2").start(&c)?;
    eventually("the logger to write both streams", || {
        std::fs::read_to_string(&out).unwrap_or_default() == "to-logger\n"
            && std::fs::read_to_string(out.with_extension("log.err")).unwrap_or_default()
                == "oops\n"
    })?;
    let meta = std::fs::read_to_string(out.with_extension("log.meta"))?;
    assert_eq!(meta.trim(), format!("{NAMESPACE}/{id}"));
    eventually("the logger to exit", || {
        leftovers::processes_matching(&logger.to_string_lossy()).is_empty()
    })?;
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn a_logging_binary_that_is_not_a_program_fails_the_start_as_under_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // Executable, but neither ELF nor script: the exec itself fails (ENOEXEC), which the
    // shim must report rather than take the logger as started.
    let logger = c.dir().join("not-a-program");
    std::fs::write(&logger, "this is not a program\n")?;
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let uri = format!("binary://{}", logger.display());
    let mut seen = Vec::new();
    for runtime in [RUNC, RUNTIME] {
        let run = CtrRun::new("lognoexec")
            .rm()
            .runtime(runtime)
            .flags(&["--log-uri", &uri])
            .cmd(&["true"]);
        // `failure` also checks that nothing of the container is left.
        let (_, err) = run.failure(&c)?;
        assert!(
            err.to_lowercase().contains("exec format error")
                && err.contains(&*logger.to_string_lossy()),
            "{runtime}: {err}"
        );
        seen.push(runtime);
    }
    assert_eq!(seen, [RUNC, RUNTIME]);
    Ok(())
}

/// A `sleep` duration unique to this test process, to find its processes on the host.
fn unique_sleep(offset: u32) -> String {
    (100_000 + std::process::id() * 4 + offset).to_string()
}

#[test]
fn host_pid_namespace_leftovers_die_with_init_and_kill_all_reaches_every_process() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // Init leaves a background child behind: without a pid namespace of its own nothing else
    // would end it, so the shim does, as the runc shim does.
    // The test's own pid namespace is the host's (pid 1's is not readable in some sandboxes).
    let host_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    let orphan = unique_sleep(0);
    let run = CtrRun::new("hostpid").rm().flags(&["--with-ns", &host_ns]);
    let id = run.sh(&format!("sleep {orphan} & exit 0")).start(&c)?;
    eventually("the orphan to be killed", || {
        leftovers::processes_matching(&format!("sleep {orphan}")).is_empty()
    })?;
    assert_clean(&c, &id, &id);

    // kill --all signals every process of the container, not only init.
    let (a, b) = (unique_sleep(1), unique_sleep(2));
    let run = CtrRun::new("killall")
        .detach()
        .flags(&["--with-ns", &host_ns]);
    let id = run.sh(&format!("sleep {a} & sleep {b}")).start(&c)?;
    eventually("both sleeps to run", || {
        leftovers::processes_matching(&format!("sleep {a}")).len() == 1
            && leftovers::processes_matching(&format!("sleep {b}")).len() == 1
    })?;
    c.ctr_ok(&["task", "kill", "--all", "-s", "SIGKILL", &id])?;
    eventually("every process to die", || {
        leftovers::processes_matching(&format!("sleep {a}")).is_empty()
            && leftovers::processes_matching(&format!("sleep {b}")).is_empty()
    })?;
    stop_and_remove(&c, &id)
}
