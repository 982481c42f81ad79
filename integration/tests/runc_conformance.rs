//! Where containerd, CRI or a user can tell the runtimes apart (issue 17): each case runs the
//! same requests through this shim and through the runc shim in the same test and asserts
//! that they answer alike.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use anyhow::{Context, Result};
use containerd_shim_protos::api::{
    DeleteRequest, ExecProcessRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::ttrpc;
use nvidia_shim_integration::checks::{setup, shim_client, stop_and_remove, text};
use nvidia_shim_integration::containerd::{Containerd, BUSYBOX_IMAGE, RUNTIME};
use nvidia_shim_integration::unique_id;

const RUNC: &str = "io.containerd.runc.v2";

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

/// Starts `sleep 600` detached through `runtime`; returns its id.
fn sleeper(c: &Containerd, runtime: &str, extra: &[&str]) -> Result<String> {
    let id = unique_id("conf");
    let mut args = vec!["run", "-d", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX_IMAGE, &id, "sleep", "600"]);
    let out = c.ctr(&args)?;
    anyhow::ensure!(out.status.success(), "{runtime}: {}", text(&out.stderr));
    Ok(id)
}

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
    let Some(c) = setup("resize_pty_of_a_process_without_a_terminal_succeeds") else {
        return Ok(());
    };
    let mut answers = Vec::new();
    for runtime in [RUNTIME, RUNC] {
        let id = sleeper(&c, runtime, &[])?;
        let r = shim_client(&c, &id)?.resize_pty(
            ctx(),
            &ResizePtyRequest {
                id: id.clone(),
                width: 100,
                height: 30,
                ..Default::default()
            },
        );
        answers.push((runtime, r.is_ok()));
        stop_and_remove(&c, &id)?;
    }
    assert_eq!(answers[0].1, answers[1].1, "{answers:?}");
    assert!(answers[0].1, "{answers:?}");
    Ok(())
}

#[test]
fn an_exec_whose_request_asks_for_a_terminal_gets_one_as_with_runc() -> Result<()> {
    let Some(c) = setup("an_exec_whose_request_asks_for_a_terminal_gets_one") else {
        return Ok(());
    };
    // The process spec says no terminal; the request says terminal (containerd's client sends
    // such execs).
    let process = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "test -t 1 && echo has-a-tty"],
        "env": ["PATH=/bin:/usr/bin"],
        "cwd": "/",
    });
    let mut seen = Vec::new();
    for runtime in [RUNTIME, RUNC] {
        let id = sleeper(&c, runtime, &[])?;
        let client = shim_client(&c, &id)?;
        let stdout = c.dir().join(format!("{id}-exec.out"));
        let reader = fifo_reader(&stdout)?;
        client
            .exec(
                ctx(),
                &ExecProcessRequest {
                    id: id.clone(),
                    exec_id: "tty".into(),
                    terminal: true,
                    stdout: stdout.display().to_string(),
                    spec: Some(Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process"
                            .into(),
                        value: serde_json::to_vec(&process)?,
                        ..Default::default()
                    })
                    .into(),
                    ..Default::default()
                },
            )
            .with_context(|| format!("{runtime}: exec"))?;
        client
            .start(
                ctx(),
                &StartRequest {
                    id: id.clone(),
                    exec_id: "tty".into(),
                    ..Default::default()
                },
            )
            .with_context(|| format!("{runtime}: start exec"))?;
        let status = client
            .wait(
                ctx(),
                &WaitRequest {
                    id: id.clone(),
                    exec_id: "tty".into(),
                    ..Default::default()
                },
            )?
            .exit_status;
        client.delete(
            ctx(),
            &DeleteRequest {
                id: id.clone(),
                exec_id: "tty".into(),
                ..Default::default()
            },
        )?;
        drop(client);
        let out = reader.join().unwrap_or_default();
        seen.push((status, out.trim().to_owned()));
        stop_and_remove(&c, &id)?;
    }
    assert_eq!(seen[0], seen[1], "nvidia vs runc");
    assert_eq!(seen[0], (0, "has-a-tty".to_owned()));
    Ok(())
}
