//! State, Kill, Wait, Delete, Pids, Pause/Resume, Stats, Update, CloseIO and ResizePty, for
//! init and exec processes alike.

use super::*;

use std::collections::HashMap;

use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::util::convert_to_any;

impl TaskService {
    /// The task's state as containerd reads it.
    pub fn state(&self, req: &StateRequest) -> Result<StateResponse> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let exit = e.exit.get();
            return Ok(StateResponse {
                id: e.exec_id.clone(),
                exec_id: e.exec_id.clone(),
                bundle: c.bundle.path().to_string_lossy().into_owned(),
                pid: e.pid(),
                status: e.state().status(),
                stdin: e.stdio.stdin.clone(),
                stdout: e.stdio.stdout.clone(),
                stderr: e.stdio.stderr.clone(),
                terminal: e.stdio.terminal,
                exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
                exited_at: MessageField::from_option(exit.map(|e| e.at)),
                ..Default::default()
            });
        }
        let exit = c.exit.get();
        Ok(StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.path().to_string_lossy().into_owned(),
            pid: u32::try_from(c.pid).unwrap_or_default(),
            status: c.state().status(),
            stdin: c.stdio.stdin.clone(),
            stdout: c.stdio.stdout.clone(),
            stderr: c.stdio.stderr.clone(),
            terminal: c.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.code).unwrap_or_default(),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            ..Default::default()
        })
    }

    /// Signals init, or every process of the container with `all`.
    pub async fn kill(&self, req: &KillRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let not_running = || ShimError::ProcessFinished {
                id: format!("{} exec {}", c.id, e.exec_id),
            };
            let started = e.started().ok_or_else(|| ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("exec {} is not started", e.exec_id),
            })?;
            if e.exit.get().is_some() {
                return Err(not_running());
            }
            let signal =
                nix::sys::signal::Signal::try_from(i32::try_from(req.signal).unwrap_or(-1))
                    .map_err(|_| ShimError::InvalidArgument {
                        id: c.id.clone(),
                        reason: format!("invalid signal {}", req.signal),
                    })?;
            // The pid stays ours until the shim reaps it, and it is reaped only once exited.
            return nix::sys::signal::kill(nix::unistd::Pid::from_raw(started.pid), signal)
                .map_err(|_| not_running());
        }
        if c.state() == TaskState::Stopped {
            return Err(ShimError::ProcessFinished { id: c.id.clone() });
        }
        match self.driver.kill(&c.state_ref, req.signal, req.all).await {
            Err(_) if c.state() == TaskState::Stopped => {
                Err(ShimError::ProcessFinished { id: c.id.clone() })
            }
            other => other,
        }
    }

    /// Waits for init to exit.
    pub async fn wait(&self, req: &WaitRequest) -> Result<WaitResponse> {
        let c = self.get(&req.id)?;
        let status = if req.exec_id.is_empty() {
            let status = c.exit.wait().await;
            c.io.drained().await;
            Self::end_the_rest(&c).await;
            status
        } else {
            let e = Self::get_exec(&c, &req.exec_id)?;
            let status = e.exit.wait().await;
            if let Some(s) = e.started() {
                s.io.drained().await;
            }
            status
        };
        Ok(WaitResponse {
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// Deletes a stopped or never-started container and everything the shim made for it.
    pub async fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let c = self.get_when_created(&req.id).await?;
        if !req.exec_id.is_empty() {
            return self.delete_exec(&c, &req.exec_id);
        }
        match c.state() {
            TaskState::Running | TaskState::Paused => {
                return Err(ShimError::FailedPrecondition {
                    id: c.id.clone(),
                    reason: "cannot delete a running task; kill it first".into(),
                })
            }
            TaskState::Created => {
                self.driver.delete(&c.state_ref, true).await?;
                if tokio::time::timeout(KILLED_INIT_WAIT, c.exit.wait())
                    .await
                    .is_err()
                {
                    log::warn!("container {}: killed init was not reaped in time", c.id);
                }
                let cgroup = c.cgroup.clone();
                let _ = tokio::task::spawn_blocking(move || cgroup.remove_hybrid()).await;
                self.unmount_rootfs(&c).await?;
            }
            TaskState::Stopped => {
                Self::end_the_rest(&c).await;
                // Independent, a few milliseconds of blocking calls each: side by side.
                let (removed, unmounted) =
                    tokio::join!(self.remove_stopped(&c), self.unmount_rootfs(&c));
                removed?;
                unmounted?;
            }
        }
        c.io.close_stdin();
        for e in c.execs() {
            if let Some(s) = e.started() {
                s.io.close_stdin();
                self.exits.forget(s.pid);
            }
            c.remove_exec(&e.exec_id);
        }
        self.exits.forget(c.pid);
        lock(&self.table).containers.remove(&c.id);
        let status = c.exit.get().unwrap_or_else(|| ExitStatus::now(137));
        let pid = u32::try_from(c.pid).unwrap_or_default();
        log::info!("container {}: deleted", c.id);
        self.events.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            TaskDelete {
                container_id: c.id.clone(),
                pid,
                exit_status: status.code,
                exited_at: MessageField::some(status.at.clone()),
                ..Default::default()
            },
        );
        Ok(DeleteResponse {
            pid,
            exit_status: status.code,
            exited_at: MessageField::some(status.at),
            ..Default::default()
        })
    }

    /// For a container without a pid namespace of its own, ends what its init left behind
    /// before a Wait answers or a Delete removes the cgroup, as the runc shim kills them
    /// before it reports the exit; the exit watch does the same before TaskExit, so this is
    /// usually one read of an empty cgroup.
    async fn end_the_rest(c: &Arc<Container>) {
        if c.private_pid_ns {
            return;
        }
        let rest = Arc::clone(c);
        let _ = tokio::task::spawn_blocking(move || kill_remaining(&rest)).await;
    }

    /// Unmounts the rootfs the shim mounted at create, on the blocking pool: the kernel's
    /// teardown of an overlay syncs its upper filesystem, about 2 ms.
    async fn unmount_rootfs(&self, c: &Container) -> Result<()> {
        if !c.rootfs_mounted {
            return Ok(());
        }
        let (bundle, id) = (c.bundle.clone(), c.id.clone());
        tokio::task::spawn_blocking(move || bundle.unmount_rootfs(&id))
            .await
            .map_err(|e| ShimError::io(&c.id, "unmount task", std::io::Error::other(e)))?
    }

    /// Removes a stopped container's cgroup and libcontainer state.
    ///
    /// When that is all libcontainer's delete would do ([`Container::plain_teardown`]), the
    /// shim does it in place: a zygote worker plus libcgroups' per-controller lookups cost
    /// about 5 ms of every `ctr run --rm` on a cgroup v1 host. Anything unexpected, such as
    /// a process left in the cgroup by a container sharing the host's pid namespace, falls
    /// back to libcontainer, which kills it and retries.
    async fn remove_stopped(&self, c: &Container) -> Result<()> {
        if c.plain_teardown {
            let (id, cgroup, state_dir) = (c.id.clone(), c.cgroup.clone(), c.state_ref.dir());
            let removed = tokio::task::spawn_blocking(move || {
                cgroup.remove_emptied()?;
                match std::fs::remove_dir_all(&state_dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ShimError::io(
                        &id,
                        format!("removing {}", state_dir.display()),
                        e,
                    )),
                    _ => Ok(()),
                }
            })
            .await;
            match removed {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => log::info!("{e}; deleting through libcontainer"),
                Err(e) => log::warn!("container {}: teardown task: {e}", c.id),
            }
        }
        self.driver.delete(&c.state_ref, true).await?;
        let cgroup = c.cgroup.clone();
        let _ = tokio::task::spawn_blocking(move || cgroup.remove_hybrid()).await;
        Ok(())
    }

    /// Every process in the container's cgroup.
    pub async fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let c = self.get(&req.id)?;
        let cgroup = c.cgroup.clone();
        let pids = tokio::task::spawn_blocking(move || cgroup.pids())
            .await
            .map_err(|e| ShimError::io(&c.id, "pids", std::io::Error::other(e)))??;
        // As the runc shim does, an exec process's entry names its exec id.
        let execs: HashMap<i32, String> = c
            .execs()
            .into_iter()
            .filter_map(|e| e.started().map(|s| (s.pid, e.exec_id.clone())))
            .collect();
        let processes = pids
            .into_iter()
            .filter_map(|p| {
                let info = match execs.get(&p) {
                    Some(exec_id) => {
                        let details = ProcessDetails {
                            exec_id: exec_id.clone(),
                            ..Default::default()
                        };
                        convert_to_any(Box::new(details)).ok()
                    }
                    None => None,
                };
                Some(ProcessInfo {
                    pid: u32::try_from(p).ok()?,
                    info: MessageField::from_option(info),
                    ..Default::default()
                })
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    /// Freezes (`pause = true`) or thaws the container.
    pub async fn set_paused(&self, id: &str, pause: bool) -> Result<()> {
        let c = self.get(id)?;
        let (from, to) = if pause {
            (TaskState::Running, TaskState::Paused)
        } else {
            (TaskState::Paused, TaskState::Running)
        };
        if let Err(found) = c.transition(from, to) {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!(
                    "cannot {} a task in state {found:?}",
                    if pause { "pause" } else { "resume" }
                ),
            });
        }
        let done = if pause {
            self.driver.pause(&c.state_ref).await
        } else {
            self.driver.resume(&c.state_ref).await
        };
        if let Err(e) = done {
            let _ = c.transition(to, from);
            return Err(e);
        }
        if pause {
            self.events.publish(
                topics::TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            );
        } else {
            self.events.publish(
                topics::TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: c.id.clone(),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Cgroup metrics (v1 or v2 message, as the host has).
    pub async fn stats(&self, req: &StatsRequest) -> Result<StatsResponse> {
        let c = self.get(&req.id)?;
        let cgroup = c.cgroup.clone();
        let any = tokio::task::spawn_blocking(move || cgroup.metrics())
            .await
            .map_err(|e| ShimError::io(&c.id, "stats", std::io::Error::other(e)))??;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    /// Applies new resource limits.
    pub async fn update(&self, req: &UpdateTaskRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| ShimError::InvalidArgument {
                id: c.id.clone(),
                reason: "update without resources".into(),
            })?;
        let resources = decode_resources(&c.id, any)?;
        let cgroup = c.cgroup.clone();
        tokio::task::spawn_blocking(move || cgroup.update(&resources))
            .await
            .map_err(|e| ShimError::io(&c.id, "update", std::io::Error::other(e)))?
    }

    /// Closes init's stdin.
    pub fn close_io(&self, req: &CloseIORequest) -> Result<()> {
        let c = self.get(&req.id)?;
        if !req.stdin {
            return Ok(());
        }
        if req.exec_id.is_empty() {
            c.io.close_stdin();
        } else if let Some(s) = Self::get_exec(&c, &req.exec_id)?.started() {
            s.io.close_stdin();
        }
        Ok(())
    }

    /// Resizes the terminal of init or of an exec process.
    pub fn resize_pty(&self, req: &ResizePtyRequest) -> Result<()> {
        let c = self.get(&req.id)?;
        // A process without a terminal has nothing to resize: success, as with the runc shim.
        if req.exec_id.is_empty() {
            return match c.io.console() {
                Some(console) => console.resize(&c.id, req.width, req.height),
                None => Ok(()),
            };
        }
        let exec = Self::get_exec(&c, &req.exec_id)?;
        match exec.started().as_ref().and_then(|s| s.io.console()) {
            Some(console) => console.resize(&c.id, req.width, req.height),
            None => Ok(()),
        }
    }
}

/// How long [`kill_remaining`] waits for the container's cgroup to empty.
const KILL_REMAINING_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGKILLs every process left in the container's cgroup and waits, bounded, until none is
/// left, killing again whatever a dying process forked meanwhile; so that the delete that
/// follows finds an empty cgroup to remove (on cgroup v1 a killed process stays listed until
/// it has exited, which takes a while on a loaded host).
pub(super) fn kill_remaining(c: &Container) {
    let deadline = std::time::Instant::now() + KILL_REMAINING_LIMIT;
    loop {
        let pids = match c.cgroup.pids() {
            Ok(pids) => pids,
            Err(e) => {
                log::warn!("{e}");
                return;
            }
        };
        if pids.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            log::warn!(
                "container {}: {} process(es) still in its cgroup after SIGKILL",
                c.id,
                pids.len()
            );
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
