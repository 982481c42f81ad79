//! Task API parity with the runc shim (issue 3): exec, terminals and resize, OOM, log URIs,
//! concurrent execs, and a failing exec.

use anyhow::Result;
use containerd_shim_protos::api::ResizePtyRequest;
use containerd_shim_protos::ttrpc;
use nvidia_shim_integration::checks::{
    assert_clean, eventually, run_args, setup, shim_client, stop_and_remove, text, EventStream,
};
use nvidia_shim_integration::containerd::{Containerd, NAMESPACE};
use nvidia_shim_integration::pty::PtyChild;
use nvidia_shim_integration::{leftovers, unique_id};

/// Starts a detached `sleep` container.
fn sleeper(c: &Containerd, prefix: &str) -> Result<String> {
    let id = unique_id(prefix);
    let out = c.ctr(&run_args(&id, &["-d"], &["sleep", "86400"]))?;
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    Ok(id)
}

#[test]
fn exec_returns_its_exit_code_output_and_gets_a_tty() -> Result<()> {
    let Some(c) = setup("exec_returns_its_exit_code_output_and_gets_a_tty") else {
        return Ok(());
    };
    let id = sleeper(&c, "exec")?;
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &id,
        "sh",
        "-c",
        "echo from-exec; exit 7",
    ])?;
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "from-exec\n");

    let mut tty = PtyChild::spawn(
        c.ctr_cmd(&["task", "exec", "-t", "--exec-id", "e2", &id, "tty"]),
        24,
        80,
    )?;
    tty.expect("/dev/pts/")?;
    assert!(tty.wait()?.success());

    // The process spec is honoured (user, cwd) and the exec joins every namespace of init.
    let out = c.ctr(&[
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
        "id -u; pwd; for n in mnt pid uts ipc net; do readlink /proc/self/ns/$n; done",
    ])?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let got: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(got[0], "65534");
    assert_eq!(got[1], "/tmp");
    let init_pid = task_pid(&c, &id);
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
    let mut tty = PtyChild::spawn(
        c.ctr_cmd(&["task", "exec", "-t", "--exec-id", "sh", &id, "sh"]),
        24,
        80,
    )?;
    tty.expect("/ # ")?;
    tty.retry_until("stty size\n", "24 80")?;
    shim_client(&c, &id)?.resize_pty(
        ttrpc::context::with_timeout(10_000_000_000),
        &ResizePtyRequest {
            id: id.clone(),
            exec_id: "sh".into(),
            width: 120,
            height: 50,
            ..Default::default()
        },
    )?;
    tty.retry_until("stty size\n", "50 120")?;
    tty.send("exit 4\n")?;
    assert_eq!(tty.wait()?.code(), Some(4));

    // Pids names exec processes by exec id, as the runc shim does.
    let out = c.ctr(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "slow",
        &id,
        "sleep",
        "30",
    ])?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let ps = c.ctr(&["task", "ps", &id])?;
    assert!(
        text(&ps.stdout).contains("slow"),
        "task ps: {}",
        text(&ps.stdout)
    );
    stop_and_remove(&c, &id)
}

/// Host pid of container `id`'s init, from `ctr task ls`.
fn task_pid(c: &Containerd, id: &str) -> u32 {
    let out = c.ctr(&["task", "ls"]).expect("ctr task ls");
    text(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("task pid")
}

#[test]
fn init_tty_follows_resize_through_the_task_api() -> Result<()> {
    let Some(c) = setup("init_tty_follows_resize_through_the_task_api") else {
        return Ok(());
    };
    let id = unique_id("tty");
    let mut cmd = c.ctr_cmd(&run_args(&id, &["-t", "--rm"], &["sh"]));
    cmd.env("TERM", "dumb");
    let mut tty = PtyChild::spawn(cmd, 24, 80)?;
    // The shell's prompt; ctr then sets the container's terminal size from its own.
    tty.expect("/ # ")?;
    tty.retry_until("stty size\n", "24 80")?;
    shim_client(&c, &id)?.resize_pty(
        ttrpc::context::with_timeout(10_000_000_000),
        &ResizePtyRequest {
            id: id.clone(),
            width: 100,
            height: 40,
            ..Default::default()
        },
    )?;
    tty.retry_until("stty size\n", "40 100")?;
    tty.send("tty; exit 5\n")?;
    tty.expect("/dev/pts/")?;
    assert_eq!(tty.wait()?.code(), Some(5));
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn oom_kill_is_reported_with_status_137() -> Result<()> {
    let Some(c) = setup("oom_kill_is_reported_with_status_137") else {
        return Ok(());
    };
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    eprintln!(
        "exercising the cgroup {} OOM watcher",
        if v2 { "v2" } else { "v1" }
    );
    let events = EventStream::start(&c)?;
    let id = unique_id("oom");
    let out = c.ctr(&run_args(
        &id,
        &["--rm", "--memory-limit", "33554432"],
        &["sh", "-c", "head -c 268435456 /dev/zero | tail"],
    ))?;
    assert_eq!(
        out.status.code(),
        Some(137),
        "stderr: {}",
        text(&out.stderr)
    );
    events.wait_for("/tasks/oom", &id)?;
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn file_log_uri_receives_stdout() -> Result<()> {
    let Some(c) = setup("file_log_uri_receives_stdout") else {
        return Ok(());
    };
    let id = unique_id("logfile");
    let log = c.dir().join("logs").join(format!("{id}.log"));
    let uri = format!("file://{}", log.display());
    let out = c.ctr(&run_args(
        &id,
        &["--rm", "--log-uri", &uri],
        &["sh", "-c", "echo to-the-log; echo err >&2"],
    ))?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let written = std::fs::read_to_string(&log)?;
    assert!(written.contains("to-the-log"), "log file holds {written:?}");
    assert_clean(&c, &id, &id);
    Ok(())
}

#[test]
fn twenty_concurrent_execs_report_their_own_exit_codes() -> Result<()> {
    let Some(c) = setup("twenty_concurrent_execs_report_their_own_exit_codes") else {
        return Ok(());
    };
    let id = sleeper(&c, "execs")?;
    let children: Vec<_> = (0..20)
        .map(|i| {
            let script = format!("sleep 0.2; echo exec-{i}; exit {}", i + 10);
            let mut cmd = c.ctr_cmd(&[
                "task",
                "exec",
                "--exec-id",
                &format!("x{i}"),
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
    let Some(c) = setup("exec_of_a_missing_binary_fails_clearly_and_leaves_nothing") else {
        return Ok(());
    };
    let id = sleeper(&c, "execmiss")?;
    let out = c.ctr(&["task", "exec", "--exec-id", "bad", &id, "/no/such/binary"])?;
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
    let again = c.ctr(&["task", "exec", "--exec-id", "bad", &id, "true"])?;
    assert!(again.status.success(), "{}", text(&again.stderr));
    stop_and_remove(&c, &id)
}

#[test]
fn binary_log_uri_feeds_the_logging_binary() -> Result<()> {
    let Some(c) = setup("binary_log_uri_feeds_the_logging_binary") else {
        return Ok(());
    };
    let id = unique_id("logbin");
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
    let run = c.ctr(&run_args(
        &id,
        &["--rm", "--log-uri", &uri],
        &["sh", "-c", "echo to-logger; echo oops >&2"],
    ))?;
    assert!(run.status.success(), "stderr: {}", text(&run.stderr));
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

/// A `sleep` duration unique to this test process, to find its processes on the host.
fn unique_sleep(offset: u32) -> String {
    (100_000 + std::process::id() * 4 + offset).to_string()
}

#[test]
fn host_pid_namespace_leftovers_die_with_init_and_kill_all_reaches_every_process() -> Result<()> {
    let Some(c) =
        setup("host_pid_namespace_leftovers_die_with_init_and_kill_all_reaches_every_process")
    else {
        return Ok(());
    };
    // Init leaves a background child behind: without a pid namespace of its own nothing else
    // would end it, so the shim does, as the runc shim does.
    // The test's own pid namespace is the host's (pid 1's is not readable in some sandboxes).
    let host_ns = format!("pid:/proc/{}/ns/pid", std::process::id());
    let orphan = unique_sleep(0);
    let id = unique_id("hostpid");
    let script = format!("sleep {orphan} & exit 0");
    let out = c.ctr(&run_args(
        &id,
        &["--rm", "--with-ns", &host_ns],
        &["sh", "-c", &script],
    ))?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    eventually("the orphan to be killed", || {
        leftovers::processes_matching(&format!("sleep {orphan}")).is_empty()
    })?;
    assert_clean(&c, &id, &id);

    // kill --all signals every process of the container, not only init.
    let (a, b) = (unique_sleep(1), unique_sleep(2));
    let id = unique_id("killall");
    let script = format!("sleep {a} & sleep {b}");
    let out = c.ctr(&run_args(
        &id,
        &["-d", "--with-ns", &host_ns],
        &["sh", "-c", &script],
    ))?;
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    eventually("both sleeps to run", || {
        leftovers::processes_matching(&format!("sleep {a}")).len() == 1
            && leftovers::processes_matching(&format!("sleep {b}")).len() == 1
    })?;
    assert!(c
        .ctr(&["task", "kill", "--all", "-s", "SIGKILL", &id])?
        .status
        .success());
    eventually("every process to die", || {
        leftovers::processes_matching(&format!("sleep {a}")).is_empty()
            && leftovers::processes_matching(&format!("sleep {b}")).is_empty()
    })?;
    stop_and_remove(&c, &id)
}
