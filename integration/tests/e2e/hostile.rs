//! Hostile input through containerd (issues 14 and 22): configuration paths that are not
//! files, huge request values, a cache directory another user controls; the shim's sockets;
//! and what a container itself controls: the fds of its stdio, concurrent execs, pid reuse.
//! Each case must fail (or be refused) quickly, say what and why, and leave nothing behind;
//! where the runc shim has the behaviour, the same case runs through it and is compared.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use anyhow::Result;
use containerd_shim_protos::api::CreateTaskRequest;
use nvidia_shim_core_host::fixture::FakeDriver;
use nvidia_shim_integration::checks::{
    alike, assert_clean, assert_failed, ctx, eventually, kill_and_remove, setup, setup_from,
    shim_client, sleeper, stop_and_remove, stop_and_remove_in_group, task_pid, text,
};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, NAMESPACE, RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::{busybox_rootfs, oci_spec, CtrRun, OwnSpec};
use nvidia_shim_integration::gpu::{write_config, Gpus};
use nvidia_shim_integration::image::ImageSpec;
use nvidia_shim_integration::task_api::update_request;
use nvidia_shim_integration::{leftovers, unique_id};

#[test]
fn config_paths_that_are_not_small_regular_files_fail_create_naming_the_file() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
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
        let run = CtrRun::new("cfg").rm().config(&path).cmd(&["true"]);
        let (_, err) = run.failure(&c)?;
        assert!(
            err.contains(&format!("{path} {says}")) && err.contains(run.id()),
            "{path}: {err}"
        );
    }
    Ok(())
}

#[test]
fn huge_request_values_give_bounded_errors() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let gpus = Gpus::of(c.dir(), FakeDriver::builder().gpus(1).build())?;
    // 1 MiB of GPU ids, from the image's config (ctr's arguments and env files take far less).
    let devices = "7,".repeat(1 << 19);
    let mut image = ImageSpec::busybox()?;
    image.env.push(format!("NVIDIA_VISIBLE_DEVICES={devices}"));
    let huge = "docker.io/library/nvtest-huge-env:latest";
    c.import(&image, huge)?;
    let run = gpus.ctr_run().rm().image(huge).cmd(&["true"]);
    let (_, err) = run.failure(&c)?;
    assert!(err.len() < 6000, "{} bytes of error", err.len());
    assert!(err.contains("bytes") && err.contains(run.id()), "{err}");
    // A 12 kB requirement expression.
    let expression = format!("cuda>=99.0 {}", "driver>=999,driver<1000 ".repeat(500));
    let require = format!("NVIDIA_REQUIRE_CUDA={expression}");
    let env = ["NVIDIA_VISIBLE_DEVICES=all", &require];
    let seen = gpus.run(&c, BUSYBOX_IMAGE, &env, "true")?;
    let err = assert_failed(seen, &["unsatisfied condition: cuda>=99.0"]);
    assert!(err.len() < 6000, "{} bytes of error: {err:.300}", err.len());
    // containerd's log holds the shim's record of it, bounded too.
    let longest = c.log().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 10_000, "a log line of {longest} bytes");
    Ok(())
}

#[test]
fn a_cache_directory_another_user_owns_is_not_trusted() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
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
    let config = write_config(c.dir(), &text_config)?;
    let run = CtrRun::new("gpu")
        .rm()
        .config(&config)
        .env(&["NVIDIA_VISIBLE_DEVICES=all"]);
    let (code, out, err) = run.sh("ls /dev | grep -c '^nvidia[0-9]'").seen(&c)?;
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
    let Some(c) = setup() else { return Ok(()) };
    let mut modes = Vec::new();
    for runtime in [RUNTIME, RUNC] {
        let id = sleeper(&c, runtime, &[])?;
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

/// What a container of `runtime` does to the host log file behind its stdout (`--log-uri
/// file://`): what its fds point at, and the log's content, mode and owner afterwards.
fn attack_the_log_file(c: &Containerd, runtime: &str) -> Result<(String, String, u32, u32)> {
    let log = c.dir().join(format!("log-{}.txt", unique_id("l")));
    std::fs::write(&log, "secret line\n")?;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o640))?;
    let uri = format!("file://{}", log.display());
    let script = "for fd in 1 2; do readlink /proc/self/fd/$fd | sed 's/:.*//'; done; \
        [ $(readlink /proc/$$/fd/1) != $(readlink /proc/$$/fd/2) ] && echo apart; \
        : > /proc/self/fd/1; chmod 4755 /proc/self/fd/1 /proc/self/fd/2; \
        chown 65534 /proc/self/fd/1; timeout 1 head -1 /proc/self/fd/2; echo done";
    let run = CtrRun::new("stdio")
        .runtime(runtime)
        .rm()
        .flags(&["--log-uri", &uri]);
    let (code, stdout, err) = run.sh(script).seen(c)?;
    assert_eq!(code, Some(0), "{runtime}: {err}");
    // The runc shim may still be copying the last line when the exit is reported.
    let _ = eventually("the container's last line in its log", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("done\n"))
    });
    let meta = std::fs::metadata(&log)?;
    Ok((
        std::fs::read_to_string(&log)?,
        stdout,
        meta.mode() & 0o7777,
        meta.uid(),
    ))
}

#[test]
fn a_container_reaches_no_host_file_through_its_stdio() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    for runtime in [RUNC, RUNTIME] {
        let (log, _, mode, uid) = attack_the_log_file(&c, runtime)?;
        eprintln!("{runtime}: log {log:?} mode {mode:o} uid {uid}");
        // The log keeps what it had, its mode and its owner; the container's output is added.
        assert!(log.starts_with("secret line\n"), "{runtime}: {log:?}");
        assert_eq!(
            log.matches("secret").count(),
            1,
            "{runtime}: read back: {log:?}"
        );
        // stdout and stderr are copied apart: the shell's "Terminated" (stderr, for the
        // `timeout`) may land before or after "done" (stdout), under either shim.
        // stdout and stderr are two pipes, also to one file: stderr opened for reading
        // (`head`) gives nothing of stdout.
        assert!(
            log.contains("pipe\npipe\napart\n") && log.contains("done\n"),
            "{runtime}: {log:?}"
        );
        assert_eq!((mode, uid), (0o640, 0), "{runtime}");
    }
    // With containerd's FIFOs too, the container holds pipes of the shim's only.
    let script = "for fd in 1 2; do readlink /proc/self/fd/$fd | sed 's/:.*//'; done";
    for runtime in [RUNC, RUNTIME] {
        let run = CtrRun::new("fifo").runtime(runtime).rm().sh(script);
        let (_, out, err) = run.seen(&c)?;
        assert_eq!(out, "pipe\npipe\n", "{runtime}: {err}");
    }
    Ok(())
}

/// `pids.max` of a sleeper through `runtime` whose limit was set to `limit` (through the Task
/// API's Update, as containerd sends it), after `rounds` rounds of `parallel` execs at once.
fn pids_max_after_parallel_execs(
    c: &Containerd,
    runtime: &str,
    limit: i64,
    parallel: usize,
    rounds: usize,
) -> Result<String> {
    let id = sleeper(c, runtime, &[])?;
    let pids = format!(r#"{{"pids":{{"limit":{limit}}}}}"#);
    shim_client(c, &id)?.update(ctx(), &update_request(&id, &pids))?;
    for round in 0..rounds {
        std::thread::scope(|s| {
            for n in 0..parallel {
                let id = &id;
                s.spawn(move || {
                    let exec = format!("p{round}-{n}");
                    let _ = c.ctr(&["task", "exec", "--exec-id", &exec, id, "true"]);
                });
            }
        });
    }
    let pids_max = leftovers::cgroup_file(NAMESPACE, &id, "pids.max")?;
    stop_and_remove(c, &id)?;
    Ok(pids_max.unwrap_or_default())
}

#[test]
fn concurrent_execs_leave_the_pids_limit_as_it_was_set() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let what = "pids.max after 2 rounds of 24 concurrent execs";
    let runc = alike(what, [RUNC, RUNTIME], |r| {
        pids_max_after_parallel_execs(&c, r, 4, 24, 2)
    })?;
    assert_eq!(runc, "4");
    Ok(())
}

/// The pid of containerd's first child of `parent` (containerd under `unshare --fork`).
fn child_of(parent: u32) -> Result<u32> {
    let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))?;
    children
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{parent} has no child"))
}

/// Runs `script` in the pid namespace of process `pid` (`nsenter -p`); its stdout.
fn in_pid_namespace(pid: u32, script: &str) -> Result<String> {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-p", "sh", "-c", script])
        .output()?;
    anyhow::ensure!(out.status.success(), "nsenter: {}", text(&out.stderr));
    Ok(text(&out.stdout))
}

/// Exit codes of `sh -c 'exit 7'` execs in a container of a grouped shim of `runtime` while
/// another container of the group is being created (its createRuntime hook sleeps), each exec
/// made to take a pid number that an unrelated process the shim reaped during that create
/// had: in containerd's own pid namespace, a burst of orphans (reaped by the shim as their
/// subreaper, status 0) takes a range of pids, and `ns_last_pid` is put back before each exec
/// so that its processes are given pids from that range.
fn exec_codes_under_pid_reuse(c: &Containerd, ns_pid: u32, runtime: &str) -> Result<Vec<i32>> {
    let group = unique_id("reuse");
    let groups = [
        format!("io.containerd.nvidia.v2.group={group}"),
        format!("io.containerd.runc.v2.group={group}"),
    ];
    let with_ns = ["--with-ns", "pid:/proc/1/ns/pid"];
    let a = sleeper(
        c,
        runtime,
        &[
            "--annotation",
            &groups[0],
            "--annotation",
            &groups[1],
            with_ns[0],
            with_ns[1],
        ],
    )?;
    // The slow create: a spec of its own over a directory rootfs, in the same group.
    let sleep = ["/bin/busybox", "sleep", "600"];
    let mut slow = OwnSpec::new(c, ("slow", runtime), &["-d"], &sleep)?;
    let b = slow.id().to_owned();
    slow.spec["annotations"] = serde_json::json!({
        "io.containerd.nvidia.v2.group": group,
        "io.containerd.runc.v2.group": group,
    });
    slow.spec["hooks"] = serde_json::json!({
        "createRuntime": [{ "path": "/bin/sleep", "args": ["sleep", "10"] }]
    });
    let slow_run = slow
        .run()?
        .command(c)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut codes = Vec::new();
    for round in 0..6 {
        let last = in_pid_namespace(ns_pid, "cat /proc/sys/kernel/ns_last_pid")?;
        let last: u32 = last.trim().parse()?;
        let burst = ["sh", "-c", "for i in $(seq 40); do sleep 0 & done"];
        c.exec_ok(&a, &format!("burst{round}"), &burst)?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        in_pid_namespace(
            ns_pid,
            &format!("echo {last} > /proc/sys/kernel/ns_last_pid"),
        )?;
        let exec = c.exec(&a, &format!("e{round}"), &["sh", "-c", "exit 7"])?;
        codes.push(exec.status.code().unwrap_or(-1));
    }
    let slow_out = slow_run.wait_with_output()?;
    anyhow::ensure!(
        slow_out.status.success(),
        "{runtime}: the slow create: {}",
        text(&slow_out.stderr)
    );
    kill_and_remove(c, &b)?;
    stop_and_remove_in_group(c, &a, &group)?;
    Ok(codes)
}

#[test]
fn an_exit_is_never_given_to_a_later_process_with_the_same_pid() -> Result<()> {
    // containerd, its shims and their containers in a pid namespace of their own, whose pid
    // allocation the test steers without touching the host's.
    let Some(c) = setup_from(Containerd::builder().pid_namespace()) else {
        return Ok(());
    };
    let ns_pid = child_of(c.pid().ok_or_else(|| anyhow::anyhow!("no containerd"))?)?;
    let runc = alike("exit codes", [RUNC, RUNTIME], |r| {
        exec_codes_under_pid_reuse(&c, ns_pid, r)
    })?;
    assert_eq!(runc, vec![7; 6]);
    Ok(())
}

/// What a root process of container `anchor` (default capabilities: no `CAP_SYS_PTRACE`) can
/// see of the file descriptors of a container created, through `anchor`'s shim, in `anchor`'s
/// pid namespace but not started: its init waits there for Start, before its exec, with the
/// runtime's own descriptors still open (a pod's containers share a pid namespace with
/// `shareProcessNamespace`). Two answers, `readable` or `denied`: the anchor's init's fds
/// (the control), then the sibling's.
fn fds_of_a_created_sibling(c: &Containerd, runtime: &str) -> Result<String> {
    let anchor = sleeper(c, runtime, &[])?;
    let pid = task_pid(c, &anchor).ok_or_else(|| anyhow::anyhow!("no pid for {anchor}"))?;
    let id = unique_id("sibling");
    let bundle = c.dir().join(format!("bundle-{id}"));
    busybox_rootfs(&bundle.join("rootfs"), &["sh", "sleep"])?;
    let mut spec = oci_spec(c, &id, std::path::Path::new("rootfs"), &["sleep", "600"])?;
    spec["process"]["terminal"] = serde_json::json!(false);
    for ns in spec["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
    {
        if ns["type"] == "pid" {
            ns["path"] = serde_json::json!(format!("/proc/{pid}/ns/pid"));
        }
    }
    std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
    let api = shim_client(c, &anchor)?;
    api.create(
        ctx(),
        &CreateTaskRequest {
            id: id.clone(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        },
    )
    .map_err(|e| anyhow::anyhow!("{runtime}: create {id}: {e}"))?;
    // The sibling's init is the one process of the namespace that is neither the anchor's
    // init (1) nor the probe; the glob is expanded by the shell itself, which starts nothing
    // before the test. Following a `/proc/PID/fd` link takes the ptrace read check; the
    // anchor's init, which has run its program, is the control.
    let probe = "for p in /proc/[0-9]*; do n=${p#/proc/}; \
                 [ \"$n\" = 1 ] || [ \"$n\" = $$ ] || s=\"$s $n\"; done; \
                 set -- $s; [ $# = 1 ] || { echo \"not one sibling: $s\"; exit 0; }; \
                 for p in 1 $1; do [ -e /proc/$p/fd/0 ] && echo readable || echo denied; done";
    let seen = c.exec_ok(&anchor, "probe", &["sh", "-c", probe]);
    // A created container's Delete ends its init.
    let deleted = api.delete_process(&id, "");
    kill_and_remove(c, &anchor)?;
    deleted.map_err(|e| anyhow::anyhow!("{runtime}: delete {id}: {e}"))?;
    let cgroups = leftovers::cgroups_of("nvtest", &id);
    anyhow::ensure!(cgroups.is_empty(), "{runtime}: {id} left {cgroups:?}");
    assert_clean(c, &anchor, &anchor);
    let _ = std::fs::remove_dir_all(&bundle);
    Ok(seen?.trim().to_owned())
}

#[test]
fn a_created_containers_init_is_not_readable_by_its_pid_namespace_as_under_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    let runc = fds_of_a_created_sibling(&c, RUNC)?;
    let ours = fds_of_a_created_sibling(&c, RUNTIME)?;
    // The sibling's init holds the runtime's descriptors until its exec (here: the procfs the
    // shim's zygote opened in the host's pid namespace, see `runtime/zygote.rs`); the
    // container's root processes must not reach them, while the control shows that they can
    // follow the fds of a process that has run its program.
    assert_eq!(
        (runc.as_str(), ours.as_str()),
        ("readable\ndenied", "readable\ndenied"),
        "runc, nvidia"
    );
    Ok(())
}

/// The mount table of process `pid`, as bytes (a path need not be UTF-8).
fn mount_table_of(pid: u32) -> Result<Vec<u8>> {
    Ok(std::fs::read(format!("/proc/{pid}/mountinfo"))?)
}

/// A mount table line that is not UTF-8 must not stop containers: libcontainer reads the
/// table as UTF-8 in every create, runc reads bytes. Such a line comes from a mount at a path
/// that is not UTF-8 (a pod with a `Bidirectional` volume can make one) or from a bind mount
/// whose source directory was renamed to such a name (its root field follows the rename).
/// Run, exec and remove through both runtimes in a containerd whose mount namespace has both
/// kinds, which must still be there afterwards. A container whose own bind source lies on
/// such a mount fails with a clear error through this shim (libcontainer could not create it
/// either way), where runc runs it.
#[test]
fn mount_table_lines_that_are_not_utf8_stop_no_other_container_as_under_runc() -> Result<()> {
    let builder = Containerd::builder().mount_namespace(|dir| {
        let d = dir.join("latin1");
        std::fs::create_dir_all(d.join("src"))?;
        std::fs::create_dir_all(d.join("sub"))?;
        // `\351` is é in Latin-1: a byte that starts no UTF-8 sequence here.
        Ok(format!(
            "d={d}; p=\"$(printf \"$d/caf\\351\")\"; mkdir \"$p\"; \
             mount -t tmpfs -o size=4k nvtest \"$p\"; \
             s=\"$(printf \"$d/src/caf\\351\")\"; mkdir \"$s\"; echo data > \"$s/f\"; \
             mount --bind \"$s\" \"$d/sub\"",
            d = d.display()
        ))
    });
    let Some(c) = setup_from(builder) else {
        return Ok(());
    };
    let pid = c.pid().expect("containerd runs");
    let mounted = |needle: &[u8]| -> Result<bool> {
        let table = mount_table_of(pid)?;
        Ok(table.windows(needle.len()).any(|w| w == needle))
    };
    let (latin1, renamed): (&[u8], &[u8]) = (b"/latin1/caf\xe9 ", b"/latin1/src/caf\xe9 ");
    assert!(
        mounted(latin1)? && mounted(renamed)?,
        "the test's mounts are missing"
    );
    alike("run, exec and remove", [RUNC, RUNTIME], |runtime| {
        let seen = CtrRun::new("latin1")
            .runtime(runtime)
            .rm()
            .sh("echo ran")
            .seen(&c)?;
        let id = sleeper(&c, runtime, &[])?;
        let exec = c.exec(&id, "e1", &["echo", "exec"])?;
        kill_and_remove(&c, &id)?;
        assert_clean(&c, &id, &id);
        Ok((seen, exec.status.code(), text(&exec.stdout)))
    })?;
    assert!(
        c.log()
            .contains("whose mount table line is not UTF-8 left out of its mount namespace"),
        "the shim did not say what it left out:\n{}",
        c.log()
    );
    let sub = c.dir().join("latin1/sub");
    let bind = format!("type=bind,src={},dst=/sub,options=rbind:ro", sub.display());
    let uses = |runtime: &str| {
        CtrRun::new("uses")
            .runtime(runtime)
            .rm()
            .flags(&["--mount", &bind])
            .sh("cat /sub/f")
    };
    let (_, runc_out, runc_err) = uses(RUNC).seen(&c)?;
    assert_eq!(runc_out, "data\n", "runc: {runc_err}");
    let (_, err) = uses(RUNTIME).failure(&c)?;
    eprintln!("{RUNTIME}: {err}");
    for needed in [
        sub.display().to_string(),
        "whose line in the mount table is not UTF-8, which libcontainer cannot read".to_owned(),
    ] {
        assert!(err.contains(&needed), "missing {needed:?} in: {err}");
    }
    assert!(
        mounted(latin1)? && mounted(renamed)?,
        "a mount was taken from containerd's namespace"
    );
    Ok(())
}
