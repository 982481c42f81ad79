//! Exec processes: Exec, their Start and Delete.

use libcontainer::oci_spec::runtime::{Process, Spec};

use super::*;
use crate::runtime::executor::ShimExecutor;

/// An exec's process as libcontainer is given it.
struct ExecProcessSpec {
    /// Its OCI `Process` JSON.
    process: Vec<u8>,
    /// What runs before its program.
    executor: ShimExecutor,
    /// Its terminal's size (width, height), when it asks for one.
    console_size: Option<(u32, u32)>,
}

impl TaskService {
    pub(super) fn get_exec(c: &Container, exec_id: &str) -> Result<Arc<ExecProcess>> {
        c.exec(exec_id).ok_or_else(|| ShimError::NotFound {
            id: format!("{} exec {exec_id}", c.id),
        })
    }

    /// Registers an exec process (`Exec`); `Start` with its id runs it.
    pub async fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if c.state() == TaskState::Stopped {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot exec {}: the container is not running", req.exec_id),
            });
        }
        let any = req
            .spec
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!("exec {} has no process spec", req.exec_id),
            })?;
        // Validate now, so a malformed spec fails Exec rather than Start.
        serde_json::from_slice::<oci_spec::runtime::Process>(&any.value).map_err(|e| {
            ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: format!(
                    "exec {}: process spec is not OCI Process JSON: {e}",
                    req.exec_id
                ),
            }
        })?;
        let exec = Arc::new(ExecProcess::new(
            &req.exec_id,
            any.value.clone(),
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        ));
        if !c.add_exec(exec) {
            return Err(ShimError::AlreadyExists {
                id: format!("{} exec {}", c.id, req.exec_id),
            });
        }
        self.events.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            },
        );
        Ok(())
    }

    /// The process JSON libcontainer is given for exec `process` of `c` (with a terminal when
    /// the request asks for one), its executor and its terminal's size.
    fn exec_process(
        &self,
        c: &Container,
        process: &[u8],
        terminal: bool,
    ) -> Result<ExecProcessSpec> {
        let invalid = |reason: String| ShimError::InvalidArgument {
            id: c.id.clone(),
            reason,
        };
        let config = c.bundle.path().join("config.json");
        let spec: Spec = std::fs::read(&config)
            .map_err(|err| ShimError::io(&c.id, format!("read {}", config.display()), err))
            .and_then(|b| {
                serde_json::from_slice(&b)
                    .map_err(|err| invalid(format!("cannot parse {}: {err}", config.display())))
            })?;
        let mut process: Process = serde_json::from_slice(process)
            .map_err(|err| invalid(format!("exec process spec: {err}")))?;
        // containerd's client may ask for a terminal in the request and not in the process
        // spec; as with the runc shim, the request's flag wins.
        process.set_terminal(Some(terminal));
        let size = process.console_size().as_ref().map(|b| {
            (
                u32::try_from(b.width()).unwrap_or(u32::MAX),
                u32::try_from(b.height()).unwrap_or(u32::MAX),
            )
        });
        let (process, executor) = crate::runtime::executor::for_exec(&spec, process);
        let bytes = serde_json::to_vec(&process)
            .map_err(|err| invalid(format!("exec process spec: {err}")))?;
        Ok(ExecProcessSpec {
            process: bytes,
            executor,
            console_size: size,
        })
    }

    pub(super) async fn start_exec(&self, c: &Arc<Container>, exec_id: &str) -> Result<u32> {
        let e = Self::get_exec(c, exec_id)?;
        if c.state() == TaskState::Stopped {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot start exec {exec_id}: the container is not running"),
            });
        }
        if !e.claim_start() {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("exec {exec_id} was already started"),
            });
        }
        // libcontainer gives an exec'd process the container's namespaces and cgroup but not
        // its seccomp profile: the executor loads it (see `executor`).
        let ExecProcessSpec {
            process,
            executor,
            console_size: size,
        } = self.exec_process(c, &e.process, e.stdio.terminal)?;
        let spec_file = c.bundle.path().join(format!(".exec-{exec_id}.json"));
        // The spec file, the stdio (a logging binary may take seconds to be ready) and room
        // under the pids limit: blocking calls, off the async thread.
        let prepared = {
            let (id, spec_file, stdio, cgroup) = (
                c.id.clone(),
                spec_file.clone(),
                e.stdio.clone(),
                c.cgroup.clone(),
            );
            blocking(&c.id, "prepare exec", move || {
                std::fs::write(&spec_file, &process).map_err(|err| {
                    ShimError::io(&id, format!("write {}", spec_file.display()), err)
                })?;
                let io = PreparedIo::open(
                    &id,
                    stdio.terminal,
                    &stdio.stdin,
                    &stdio.stdout,
                    &stdio.stderr,
                );
                let io = match io {
                    Ok(io) => io,
                    Err(err) => {
                        let _ = std::fs::remove_file(&spec_file);
                        return Err(err);
                    }
                };
                // An exec is admitted under any pids limit, as with runc (see
                // `make_room_for_exec`).
                Ok((io, cgroup.make_room_for_exec()))
            })
            .await?
        };
        let (io, exec_room) = prepared;
        let (wire_io, pending) = io.split();
        let guard = self.exits.begin_create();
        let pid = self
            .driver
            .exec(ExecArgs {
                state: c.state_ref.clone(),
                process: spec_file.clone(),
                io: wire_io,
                executor,
                hybrid_cgroups: c.cgroup.hybrid(),
            })
            .await;
        let _ = tokio::task::spawn_blocking(move || {
            let _ = std::fs::remove_file(&spec_file);
            drop(exec_room);
        })
        .await;
        let pid = match pid {
            Ok(pid) => pid,
            Err(err) => {
                drop(pending);
                // containerd deletes the exec next; report it as failed to run.
                e.exit.set(ExitStatus::now(127));
                return Err(err);
            }
        };
        guard.watch(pid, Arc::clone(&e.exit));
        let io = {
            let (id, stdin, stdout) = (c.id.clone(), e.stdio.stdin.clone(), e.stdio.stdout.clone());
            blocking(&c.id, "attach stdio", move || {
                pending.attach(&id, &stdin, &stdout, size)
            })
            .await
        };
        let io = match io {
            Ok(io) => Arc::new(io),
            Err(err) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(err);
            }
        };
        e.set_started(Started {
            pid,
            io: Arc::clone(&io),
        });
        let upid = u32::try_from(pid).unwrap_or_default();
        log::info!("container {}: exec {exec_id} started, pid {pid}", c.id);
        self.events.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskExecStarted {
                container_id: c.id.clone(),
                exec_id: exec_id.to_owned(),
                pid: upid,
                ..Default::default()
            },
        );
        let events = self.events.clone();
        let container_id = c.id.clone();
        tokio::spawn(async move {
            let status = e.exit.wait().await;
            io.drained().await;
            log::info!(
                "container {container_id}: exec {} exited with status {}",
                e.exec_id,
                status.code
            );
            events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id,
                    id: e.exec_id.clone(),
                    pid: upid,
                    exit_status: status.code,
                    exited_at: MessageField::some(status.at),
                    ..Default::default()
                },
            );
        });
        Ok(upid)
    }

    pub(super) fn delete_exec(&self, c: &Container, exec_id: &str) -> Result<DeleteResponse> {
        let e = Self::get_exec(c, exec_id)?;
        if e.state() == TaskState::Running {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot delete running exec {exec_id}"),
            });
        }
        c.remove_exec(exec_id);
        if let Some(s) = e.started() {
            s.io.close_stdin();
            self.exits.forget(s.pid);
        }
        let status = e.exit.get().unwrap_or_else(|| ExitStatus::now(0));
        Ok(DeleteResponse {
            pid: e.pid(),
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }
}
