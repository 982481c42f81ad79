//! Where containerd, CRI or a user can tell the runtimes apart (issue 17): each case runs the
//! same requests through this shim and through the runc shim in the same test and asserts
//! that they answer alike.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use containerd_shim_protos::api::ResizePtyRequest;
use nvidia_shim_integration::checks::{
    alike, assert_clean, ctx, setup, shim_client, sleeper, stop_and_remove, task_pid, text,
};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{CtrRun, OwnSpec};
use nvidia_shim_integration::image::{Entry, ImageSpec};
use nvidia_shim_integration::leftovers;
use nvidia_shim_integration::task_api::update_request;
use nvidia_shim_integration::unique_id;

/// A FIFO at `path` and a thread reading it to the end.
fn fifo_reader(path: &std::path::Path) -> Result<std::thread::JoinHandle<String>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; a FIFO in the test's directory.
    anyhow::ensure!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0, "mkfifo");
    let path = path.to_owned();
    Ok(std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .expect("open FIFO");
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s
    }))
}

#[test]
fn resize_pty_of_a_process_without_a_terminal_succeeds_as_with_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let succeeded = alike("ResizePty succeeded", [RUNTIME, RUNC], |runtime| {
        let id = sleeper(&c, runtime, &[])?;
        let req = ResizePtyRequest {
            id: id.clone(),
            width: 100,
            height: 30,
            ..Default::default()
        };
        let r = shim_client(&c, &id)?.resize_pty(ctx(), &req);
        stop_and_remove(&c, &id)?;
        Ok(r.is_ok())
    })?;
    assert!(succeeded);
    Ok(())
}

#[test]
fn an_exec_whose_request_asks_for_a_terminal_gets_one_as_with_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // The process spec says no terminal; the request says terminal (containerd's client sends
    // such execs).
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "test -t 1 && echo has-a-tty"],
        "env": ["PATH=/bin:/usr/bin"],
        "cwd": "/",
    });
    let seen = alike("exec with a terminal", [RUNTIME, RUNC], |runtime| {
        let id = sleeper(&c, runtime, &[])?;
        let client = shim_client(&c, &id)?;
        let stdout = c.dir().join(format!("{id}-exec.out"));
        let reader = fifo_reader(&stdout)?;
        let stdio = [&*stdout.to_string_lossy(), ""];
        client
            .exec_process((&id, "tty"), &process, stdio, true)
            .with_context(|| format!("{runtime}: exec"))?;
        client
            .start_process(&id, "tty")
            .with_context(|| format!("{runtime}: start exec"))?;
        let status = client.wait_process(&id, "tty")?.exit_status;
        client.delete_process(&id, "tty")?;
        drop(client);
        let out = reader.join().unwrap_or_default();
        stop_and_remove(&c, &id)?;
        Ok((status, out.trim().to_owned()))
    })?;
    assert_eq!(seen, (0, "has-a-tty".to_owned()));
    Ok(())
}

/// `ctr run` of a container that cannot be created, through `runtime`; its error output.
fn create_error(c: &Containerd, runtime: &str, image: &str, extra: &[&str]) -> Result<String> {
    let run = CtrRun::new("bad").runtime(runtime).rm().flags(extra);
    Ok(run.image(image).cmd(&["true"]).failure(c)?.1)
}

#[test]
fn create_failures_say_their_cause_as_runc_does() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // An image whose /dev is a regular file.
    let mut image = ImageSpec::busybox()?;
    image
        .entries
        .retain(|e| !matches!(e, Entry::Dir(d) if d == "dev"));
    let dev = Entry::File("dev".into(), 0o644, b"not a directory".to_vec());
    image.entries.push(dev);
    let dev_file = "docker.io/library/nvtest-devfile:latest";
    c.import(&image, dev_file)?;
    let missing = c.dir().join("no-such-source").display().to_string();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("/dev is a file", vec![], "not a directory"),
        (
            "missing mount source",
            vec![
                "--mount".into(),
                format!("type=bind,src={missing},dst=/x,options=rbind:ro"),
            ],
            "no such file or directory",
        ),
        (
            "unknown filesystem type",
            vec!["--mount".into(), "type=nosuchfs,src=none,dst=/x".into()],
            "no such device",
        ),
        (
            "cwd is a file",
            vec!["--cwd".into(), "/bin/busybox".into()],
            "not a directory",
        ),
    ];
    for (what, flags, cause) in cases {
        let image = if what == "/dev is a file" {
            dev_file
        } else {
            BUSYBOX_IMAGE
        };
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let runc = create_error(&c, RUNC, image, &flags)?;
        let ours = create_error(&c, RUNTIME, image, &flags)?;
        eprintln!("{what}:\n  runc:   {runc}\n  nvidia: {ours}");
        eprintln!(
            "LOG {}",
            c.log()
                .lines()
                .filter(|l| l.contains("level=error"))
                .collect::<Vec<_>>()
                .join("\nLOG ")
        );
        assert!(
            runc.to_lowercase().contains(cause),
            "{what}: runc says {runc}"
        );
        assert!(
            ours.to_lowercase().contains(cause),
            "{what}: the cause reaches containerd like runc's ({cause}): {ours}"
        );
    }
    Ok(())
}

/// The optional fields (propagation) of the mountinfo lines of `/` and `/x` inside a
/// container of `runtime` with a bind mount at `/x` with `options`.
fn propagation(c: &Containerd, runtime: &str, options: &str) -> Result<Vec<String>> {
    // A shared mount as the source, as a volume on a systemd host is: a mount that does not
    // ask for it must not receive what the host mounts there later.
    let src = c.dir().join(unique_id("src"));
    std::fs::create_dir_all(&src)?;
    for args in [
        vec![
            "--bind",
            src.to_str().unwrap_or_default(),
            src.to_str().unwrap_or_default(),
        ],
        vec!["--make-shared", src.to_str().unwrap_or_default()],
    ] {
        let status = std::process::Command::new("mount").args(&args).status()?;
        anyhow::ensure!(status.success(), "mount {args:?}");
    }
    let mount = format!("type=bind,src={},dst=/x,options={options}", src.display());
    let run = CtrRun::new("prop")
        .runtime(runtime)
        .rm()
        .flags(&["--mount", &mount]);
    let out = run.cmd(&["cat", "/proc/self/mountinfo"]).ok(c);
    let _ = std::process::Command::new("umount").arg(&src).status();
    Ok(out?
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mount_point = *f.get(4)?;
            if mount_point != "/x" {
                return None;
            }
            // Fields 6.. up to the "-" separator are the optional (propagation) fields.
            let optional: Vec<&str> = f[6..].iter().take_while(|x| **x != "-").copied().collect();
            // Peer group numbers differ between runs; their kinds must not.
            let kinds: Vec<&str> = optional
                .iter()
                .map(|o| o.split(':').next().unwrap_or(o))
                .collect();
            Some(format!("{mount_point} [{}]", kinds.join(" ")))
        })
        .collect())
}

#[test]
fn a_mounts_propagation_option_is_honoured_as_by_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    for options in [
        "rbind:rprivate",
        "rbind:ro:rprivate",
        "rbind:rslave",
        "rbind",
    ] {
        alike(options, [RUNTIME, RUNC], |r| propagation(&c, r, options))?;
    }
    Ok(())
}

/// The `/proc/self/cgroup` lines of an exec'd process and of the init process of a container
/// of `runtime`, with the container's id in place of itself.
fn cgroup_lines(c: &Containerd, runtime: &str) -> Result<Vec<String>> {
    let id = sleeper(c, runtime, &[])?;
    let exec = c.exec(&id, "cg", &["cat", "/proc/self/cgroup"])?;
    let init = c.exec(&id, "cg1", &["cat", "/proc/1/cgroup"])?;
    stop_and_remove(c, &id)?;
    Ok(text(&exec.stdout)
        .lines()
        .chain(text(&init.stdout).lines())
        .map(|l| l.replace(&id, "ID"))
        .collect())
}

#[test]
fn a_container_is_placed_in_every_hierarchy_as_by_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    alike("cgroups", [RUNTIME, RUNC], |r| cgroup_lines(&c, r))?;
    Ok(())
}

/// A sleeper through `runtime` whose pids limit is set, through the Task API's Update as
/// containerd sends it, to `limit`.
fn sleeper_with_pids_limit(c: &Containerd, runtime: &str, limit: i64) -> Result<String> {
    let id = sleeper(c, runtime, &[])?;
    let pids = format!(r#"{{"pids":{{"limit":{limit}}}}}"#);
    shim_client(c, &id)?.update(ctx(), &update_request(&id, &pids))?;
    Ok(id)
}

/// Runs `cmd` as an exec in a sleeper through `runtime` whose pids limit is `limit`, checks
/// that the limit is the one set after the exec as before, and removes the sleeper; returns
/// the exec's output.
fn exec_under_pids_limit(
    c: &Containerd,
    runtime: &str,
    limit: i64,
    cmd: &[&str],
) -> Result<std::process::Output> {
    let id = sleeper_with_pids_limit(c, runtime, limit)?;
    let exec = c.exec(&id, "p", cmd)?;
    let pids_max = leftovers::cgroup_file(NAMESPACE, &id, "pids.max");
    stop_and_remove(c, &id)?;
    assert_eq!(
        pids_max?,
        Some(limit.to_string()),
        "{runtime}: pids.max after the exec"
    );
    Ok(exec)
}

/// How many processes an exec (a shell) can start beside a sleeper through `runtime` whose
/// pids limit is `limit`: it starts background `sleep`s, counting each, until a fork fails
/// (the shell then exits on the error), or 64. Returns the last count printed. The shell
/// first spins a while on builtins (no fork; about 70 ms here): until the runtime has reaped
/// what made the exec (libcontainer's intermediate process, runc's init stages), those count
/// against the limit too.
fn processes_under_pids_limit(c: &Containerd, runtime: &str, limit: i64) -> Result<usize> {
    let script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; \
        n=0; while [ $n -lt 64 ]; do sleep 600 >/dev/null 2>&1 & n=$((n+1)); echo $n; done";
    let exec = exec_under_pids_limit(c, runtime, limit, &["sh", "-c", script])?;
    let out = text(&exec.stdout);
    let last = out.lines().last().unwrap_or("0");
    last.parse()
        .with_context(|| format!("{runtime}: the count printed under pids.max {limit}: {out:?}"))
}

/// Whether a container whose spec sets `pids.limit = 1` runs its process through `runtime`
/// (`ctr run --config` with a spec of its own over a directory rootfs).
fn create_under_pids_limit_one(c: &Containerd, runtime: &str) -> Result<(bool, String)> {
    let echo = ["/bin/busybox", "echo", "alone"];
    let mut alone = OwnSpec::new(c, ("pids", runtime), &["--rm"], &echo)?;
    alone.spec["linux"]["resources"]["pids"] = serde_json::json!({ "limit": 1 });
    let out = alone.run()?.output(c)?;
    let id = alone.id();
    let _ = c.ctr(&["container", "rm", id]);
    assert_clean(c, id, id);
    Ok((out.status.success(), text(&out.stdout)))
}

#[test]
fn a_pids_limit_admits_as_many_processes_as_under_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // With room for runc's exec to start (its init's stages and Go threads count while it
    // starts), a container reaches exactly its limit under both: the sleeper, the exec's
    // shell and 14 more.
    let limit = 16;
    let started = alike(
        format!("processes under pids.max {limit}"),
        [RUNTIME, RUNC],
        |r| processes_under_pids_limit(&c, r, limit),
    )?;
    assert_eq!(
        started, 14,
        "background processes beside the sleeper and the shell"
    );
    // An exec into a container at its limit. The shim raises `pids.max` for the exec's making
    // and puts it back (`make_room_for_exec`; `exec_under_pids_limit` checks it is back), so it
    // is admitted. runc moves its `runc init` there while that is still starting, a move the
    // pids controller does not count, but its forks and threads are; so whether runc admits it
    // is a race between the kernel's cgroup migration and runc init's own forks and threads:
    // runc wins it on a host where the first migration after a quiet spell waits for an RCU
    // grace period, and mostly loses it where migrations do not wait (cgroup v1 after a
    // `favordynmods` mount, cgroup v2 with it). runc's answer is printed, not compared.
    for limit in [2, 1] {
        let ours = exec_under_pids_limit(&c, RUNTIME, limit, &["true"])?;
        let runc = exec_under_pids_limit(&c, RUNC, limit, &["true"])?;
        eprintln!(
            "exec under a reached pids.max {limit}: runc {}: {:?}",
            runc.status,
            text(&runc.stderr)
        );
        assert!(
            ours.status.success(),
            "exec under pids.max {limit}: {} {:?}",
            ours.status,
            text(&ours.stderr)
        );
    }
    let what = "a container whose spec sets pids.limit 1";
    let ours = alike(what, [RUNTIME, RUNC], |r| {
        create_under_pids_limit_one(&c, r)
    })?;
    assert_eq!(ours, (true, "alone\n".to_owned()));
    Ok(())
}

/// Each mount inside a sleeper through `runtime`, from its init's mount table, read from the
/// host (`/proc/PID/mountinfo` shows paths from that process's root, as the container sees
/// them; an exec's output is not used: the runc shim loses a short exec's output now and then
/// under load, see `exec_output_survives_parallel_load`): mount point, mount options,
/// filesystem type and superblock options (ids, sources and sizes, which differ from one
/// container to the next, left out).
fn mounts(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<Vec<String>> {
    let id = sleeper(c, runtime, extra)?;
    let table = task_pid(c, &id)
        .context("the sleeper's pid")
        .and_then(|pid| Ok(std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?));
    stop_and_remove(c, &id)?;
    Ok(table
        .with_context(|| format!("{runtime}: the sleeper's mount table"))?
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let super_options: Vec<&str> = right
                .get(2)?
                .split(',')
                .filter(|o| !o.starts_with("size=") && !o.starts_with("nr_inodes="))
                .filter(|o| !o.starts_with("lowerdir=") && !o.starts_with("upperdir="))
                .filter(|o| !o.starts_with("workdir="))
                .collect();
            Some(format!(
                "{} {} {} {}",
                left.get(4)?,
                left.get(5)?,
                right.first()?,
                super_options.join(",")
            ))
        })
        .collect())
}

#[test]
fn mounts_and_their_flags_are_those_of_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // With a network namespace of its own a container has its own sysfs superblock, which
    // runc leaves read-only; with the host's, the host's sysfs, which stays as it is.
    let host_sysfs = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.split(' ').nth(4) == Some("/sys"))
            .map(str::to_owned)
    };
    let before = host_sysfs();
    // The cgroup filesystem as containerd's CRI asks for it, for an unprivileged container
    // and a privileged one: every hierarchy with the spec's flags.
    let cgroup_ro =
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=nosuid:noexec:nodev:relatime:ro";
    let cgroup_rw =
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=nosuid:noexec:nodev:relatime:rw";
    for extra in [
        &[][..],
        &["--net-host"][..],
        &["--mount", cgroup_ro][..],
        &["--mount", cgroup_rw][..],
    ] {
        alike(format_args!("{extra:?}"), [RUNTIME, RUNC], |r| {
            mounts(&c, r, extra)
        })?;
        assert_eq!(host_sysfs(), before, "the host's /sys after {extra:?}");
    }
    assert!(
        before.as_deref().is_some_and(|l| l.ends_with(" rw")) || before.is_none(),
        "{before:?}"
    );
    Ok(())
}

/// Runs `total` `ctr task exec … echo` in a sleeper through `runtime`, `parallel` at a time;
/// returns how many exited 0 with output other than their own line (lost or torn output),
/// and the first such case.
fn lost_exec_output(
    c: &Containerd,
    runtime: &str,
    total: usize,
    parallel: usize,
) -> Result<(usize, Option<String>)> {
    let id = sleeper(c, runtime, &[])?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let lost = std::sync::Mutex::new((0usize, None::<String>));
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let exec_id = format!("e{i}");
                let line = format!("output-of-exec-{i}");
                let Ok(out) = c.exec(&id, &exec_id, &["echo", &line]) else {
                    continue;
                };
                let stdout = text(&out.stdout);
                if out.status.success() && stdout != format!("{line}\n") {
                    let mut l = lost.lock().unwrap_or_else(|e| e.into_inner());
                    l.0 += 1;
                    l.1.get_or_insert_with(|| format!("{exec_id}: stdout {stdout:?}"));
                }
            });
        }
    });
    stop_and_remove(c, &id)?;
    Ok(lost.into_inner().unwrap_or_else(|e| e.into_inner()))
}

#[test]
fn exec_output_survives_parallel_load() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // NVIDIA_TEST_EXEC_LOAD=total,parallel runs another load (more parallel execs than CPUs
    // is what makes a client's reader late).
    let (total, parallel): (usize, usize) = std::env::var("NVIDIA_TEST_EXEC_LOAD")
        .ok()
        .and_then(|v| {
            let (a, b) = v.split_once(',')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .unwrap_or((600, 16));
    let ours = lost_exec_output(&c, RUNTIME, total, parallel)?;
    let runc = lost_exec_output(&c, RUNC, total, parallel)?;
    // runc's shim is measured in the same run, for the record; it is not the bar here: not
    // one exec may lose its output.
    eprintln!(
        "exec output lost, {total} execs {parallel} at a time: nvidia {}, runc {} ({:?})",
        ours.0, runc.0, runc.1
    );
    assert_eq!(ours.0, 0, "{ours:?}");
    Ok(())
}

/// An exec of `echo` through `runtime` whose stdout reader, like containerd's client, stops
/// reading once the exit has been reported (its `Delete` cancels the FIFO copy), and is slow
/// to start reading; returns what it read.
fn output_read_before_the_exit_is_reported(c: &Containerd, runtime: &str) -> Result<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let id = sleeper(c, runtime, &[])?;
    let client = shim_client(c, &id)?;
    let stdout = c.dir().join(format!("{id}-slow.out"));
    let path = std::ffi::CString::new(stdout.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid C string; a FIFO in the test's directory.
    anyhow::ensure!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) } == 0, "mkfifo");
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&stdout)?;
    let reported = std::sync::Arc::new(AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&reported);
    let read = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        if seen.load(Ordering::SeqCst) {
            return String::new(); // cancelled, as the client's Delete does
        }
        let mut s = String::new();
        let _ = reader.read_to_string(&mut s);
        s
    });
    let process = serde_json::json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["echo", "the-last-line"],
        "env": ["PATH=/bin"],
        "cwd": "/",
    });
    let path = stdout.display().to_string();
    client.exec_process((&id, "slow"), &process, [&path, &path], false)?;
    client.start_process(&id, "slow")?;
    client.wait_process(&id, "slow")?;
    reported.store(true, Ordering::SeqCst);
    client.delete_process(&id, "slow")?;
    drop(client);
    let out = read.join().unwrap_or_default();
    stop_and_remove(c, &id)?;
    Ok(out)
}

#[test]
fn an_execs_exit_is_reported_once_a_reading_client_has_its_output() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let ours = output_read_before_the_exit_is_reported(&c, RUNTIME)?;
    let runc = output_read_before_the_exit_is_reported(&c, RUNC)?;
    // The runc shim reports the exit at once; shown for the record, not asserted.
    eprintln!("a slow reader's output: nvidia {ours:?}, runc {runc:?}");
    assert_eq!(ours, "the-last-line\n");
    Ok(())
}

/// How a container of `image` whose process is `cmd` fares through `runtime` (`ctr run
/// --rm`): ctr's exit code (the process's, once it ran), and its error output.
fn run_outcome(c: &Containerd, runtime: &str, image: &str, cmd: &[&str]) -> Result<(i32, String)> {
    let run = CtrRun::new("noexec").runtime(runtime).rm().image(image);
    run.cmd(cmd).failure(c)
}

#[test]
fn a_process_that_cannot_be_executed_fails_as_with_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // An environment variable over the kernel's 128 KiB limit on one string.
    let mut image = ImageSpec::busybox()?;
    image.env.push(format!("BIG={}", "a".repeat(140_000)));
    let big_env = "docker.io/library/nvtest-big-env:latest";
    c.import(&image, big_env)?;
    // A file the kernel cannot execute: a script without an interpreter line.
    let mut image = ImageSpec::busybox()?;
    let script = b"echo no interpreter line\n".to_vec();
    image
        .entries
        .push(Entry::File("bin/script".into(), 0o755, script));
    let script = "docker.io/library/nvtest-script:latest";
    c.import(&image, script)?;
    // Found missing or unrunnable before the container is created, the create fails; a
    // program the kernel refuses at the last moment fails with its reason on the container's
    // stderr and exit status 1.
    let cases: [(&str, &str, &[&str], &str); 5] = [
        (
            "a file without execute bits",
            BUSYBOX_IMAGE,
            &["/etc/passwd"],
            "permission denied",
        ),
        ("a directory", BUSYBOX_IMAGE, &["/etc"], "permission denied"),
        (
            "a missing program",
            BUSYBOX_IMAGE,
            &["/no/such/program"],
            "no such file or directory",
        ),
        (
            "an environment over 128 KiB",
            big_env,
            &["true"],
            "argument list too long",
        ),
        (
            "a script without an interpreter",
            script,
            &["/bin/script"],
            "exec format error",
        ),
    ];
    for (what, image, cmd, cause) in cases {
        let runc = run_outcome(&c, RUNC, image, cmd)?;
        let ours = run_outcome(&c, RUNTIME, image, cmd)?;
        eprintln!("{what}:\n  runc:   {runc:?}\n  nvidia: {ours:?}");
        assert!(
            runc.0 != 0 && runc.1.to_lowercase().contains(cause),
            "{what}: runc {runc:?}"
        );
        assert!(
            ours.1.to_lowercase().contains(cause),
            "{what}: the cause reaches the user as runc's ({cause}): {}",
            ours.1
        );
        // Where runc names the program, so does the shim.
        if let Some(quoted) = runc
            .1
            .split("exec: ")
            .nth(1)
            .and_then(|r| r.split(':').next())
        {
            assert!(ours.1.contains(quoted), "{what}: {quoted} in {}", ours.1);
        }
        // Failed at create alike (ctr's 1), or run and exited alike.
        let created = |out: &(i32, String)| !out.1.contains("failed to create shim task");
        assert_eq!(created(&ours), created(&runc), "{what}: {ours:?} {runc:?}");
        if created(&runc) {
            assert_eq!(ours, runc, "{what}");
        }
    }
    Ok(())
}

/// Runs a container with a poststart hook through `runtime`; what the hook saw (the state's
/// status, and whether its id was the container's and its pid set) and the container's output.
fn run_with_a_poststart_hook(c: &Containerd, runtime: &str) -> Result<(String, bool, String)> {
    let dir = tempfile::tempdir()?;
    let seen = dir.path().join("state.json");
    let echo = ["/bin/busybox", "echo", "started"];
    let mut own = OwnSpec::new(c, ("poststart", runtime), &["--rm"], &echo)?;
    let hook = format!("cat > {}", seen.display());
    own.spec["hooks"] = serde_json::json!({
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]
    });
    let out = own.run()?.output(c)?;
    let id = own.id();
    let _ = c.ctr(&["container", "rm", id]);
    assert_clean(c, id, id);
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&seen)?)?;
    let status = state["status"].as_str().unwrap_or_default().to_owned();
    let its_own = state["id"] == id && state["pid"].as_i64().is_some_and(|p| p > 0);
    Ok((status, its_own, text(&out.stdout)))
}

/// A container with a poststart hook (the shim starts it in a worker, which runs the hook;
/// one without starts in place): the hook runs once started, with the state runc gives it
/// (libcontainer's own start gave it the state after, status `running`).
#[test]
fn a_poststart_hook_runs_with_the_state_runc_gives_it() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let seen = alike("a poststart hook", [RUNTIME, RUNC], |r| {
        run_with_a_poststart_hook(&c, r)
    })?;
    // runc gives the hooks the state from before the start.
    assert_eq!(seen, ("created".to_owned(), true, "started\n".to_owned()));
    Ok(())
}
