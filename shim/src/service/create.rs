//! Create and Start of a container's init process.

use super::*;

impl TaskService {
    /// Creates the container: rootfs, stdio, then libcontainer in the zygote.
    pub async fn create(&self, req: &CreateTaskRequest) -> Result<u32> {
        let id = req.id.as_str();
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented {
                id: id.to_owned(),
                what: "restore from checkpoint",
            });
        }
        let reservation = self.reserve(id)?;
        let started = std::time::Instant::now();
        // Start the cgroup migration grace period now, alongside the work before the attach.
        drop(tokio::task::spawn_blocking(
            crate::runtime::attach_warmup::now,
        ));
        let options = match req.options.as_ref() {
            Some(any) => create_options(id, any)?,
            None => CreateOptions::default(),
        };
        if let Some(cgroup) = &options.shim_cgroup {
            // As the runc shim does with its ShimCgroup: the shim process joins that cgroup.
            containerd_shim::cgroup::add_task_to_cgroup(cgroup, std::process::id()).map_err(
                |e| ShimError::InvalidArgument {
                    id: id.to_owned(),
                    reason: format!("cannot move the shim into ShimCgroup {cgroup:?}: {e}"),
                },
            )?;
            log::info!("container {id}: the shim joined cgroup {cgroup}");
        }
        let config_path = options.config_path.or_else(|| self.start_config.clone());
        let config = load_config(id, config_path.as_deref())?;

        let bundle = Bundle::new(&req.bundle);
        // Everything from here on is undone unless the create commits (see `CreateUndo`).
        let mut undo = CreateUndo::new(id, Arc::clone(&self.exits));
        bundle.mount_rootfs(id, &req.rootfs, &self.driver).await?;
        let rootfs_mounted = !req.rootfs.is_empty();
        if rootfs_mounted {
            undo.rootfs = Some(bundle.clone());
        }
        // The spec adapted to libcontainer (see `spec_adapt`), then GPU injection, edit
        // config.json and the rootfs before libcontainer reads them. They read files
        // (discovery, ELF headers, the image's ld cache): off the reactor.
        let injecting = std::time::Instant::now();
        let injected = {
            let (gpu, owned_id, b, cfg) = (
                Arc::clone(&self.gpu),
                id.to_owned(),
                bundle.clone(),
                config.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let adapted = b.adapt_spec(&owned_id)?;
                gpu.inject(&owned_id, &b, &cfg).map(|i| (adapted, i))
            })
            .await
            .map_err(|e| ShimError::io(id, "GPU injection task", std::io::Error::other(e)))
            .and_then(|r| r)
        };
        let (adapted, injected) = match injected {
            Ok((adapted, injected)) => (adapted, Ok(injected)),
            Err(e) => (Adapted::default(), Err(e)),
        };
        let (proc_mounts, chmods) = match injected {
            Ok(Some(done)) => {
                let ms = injecting.elapsed().as_secs_f64() * 1e3;
                if done.gpus.is_empty() && done.mounts == 0 {
                    log::info!(
                        "container {id}: its spec's GPU edits completed ({} device nodes) in {ms:.1} ms",
                        done.devices
                    );
                } else {
                    log::info!(
                        "container {id}: injected GPUs {:?} ({} device nodes, {} mounts) in {ms:.1} ms",
                        done.gpus,
                        done.devices,
                        done.mounts
                    );
                }
                (done.proc_mounts, done.chmods)
            }
            Ok(None) => (Vec::new(), Vec::new()),
            Err(e) => return Err(undo.run(e).await),
        };
        let io = {
            let (owned_id, terminal) = (id.to_owned(), req.terminal);
            let (stdin, stdout, stderr) =
                (req.stdin.clone(), req.stdout.clone(), req.stderr.clone());
            blocking(id, "open stdio", move || {
                PreparedIo::open(&owned_id, terminal, &stdin, &stdout, &stderr)
            })
            .await
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => return Err(undo.run(e).await),
        };
        let private_pid_ns = bundle.has_private_pid_namespace();
        let state_ref = StateRef {
            root: bundle.state_root(),
            id: id.to_owned(),
        };
        let (wire_io, pending) = io.split();
        let exit = Arc::new(ExitCell::default());
        let guard = self.exits.begin_create();
        let created = self
            .driver
            .create(CreateArgs {
                state: state_ref.clone(),
                bundle: bundle.path().to_owned(),
                systemd: config.systemd_cgroup,
                io: wire_io,
                after: OverlayArgs {
                    mounts: proc_mounts,
                    propagation: adapted.propagation,
                    read_only_superblocks: adapted.read_only_superblocks,
                    cgroup_flags: adapted.cgroup_flags,
                    chmods,
                    idmapped: adapted.idmapped,
                },
            })
            .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                drop(pending);
                return Err(undo.run(e).await);
            }
        };
        guard.watch(created.pid, Arc::clone(&exit));
        if created.overlay_mounts > 0 {
            log::info!(
                "container {id}: /proc/driver/nvidia overlay: {} mounts",
                created.overlay_mounts
            );
        }
        let cgroup = ContainerCgroup::new(id, created.cgroup_path.clone(), config.systemd_cgroup);
        undo.container = Some((state_ref.clone(), cgroup.clone(), created.pid));
        let io = {
            let (cgroup, pid, pids_limit, size) = (
                cgroup.clone(),
                created.pid,
                adapted.pids_limit,
                adapted.console_size,
            );
            let (owned_id, stdin, stdout) = (id.to_owned(), req.stdin.clone(), req.stdout.clone());
            blocking(id, "cgroups and stdio", move || {
                cgroup.join_hybrid(pid)?;
                // The spec's own pids limit, now that libcontainer's intermediate process is
                // gone.
                pids_limit.map_or(Ok(()), |limit| cgroup.set_pids_max(limit))?;
                // A terminal's master comes over the console socket: up to seconds.
                pending.attach(&owned_id, &stdin, &stdout, size)
            })
            .await
        };
        let io = match io {
            Ok(io) => io,
            Err(e) => return Err(undo.run(e).await),
        };

        let container = Arc::new(Container::new(
            ContainerParts {
                id: id.to_owned(),
                cgroup,
                bundle,
                state_ref,
                pid: created.pid,
                stdio: StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                },
                rootfs_mounted,
                private_pid_ns,
                plain_teardown: created.plain_teardown,
                io,
            },
            exit,
        ));
        {
            let mut t = lock(&self.table);
            t.containers.insert(id.to_owned(), Arc::clone(&container));
            t.ever_created = true;
        }
        undo.commit();
        drop(reservation);
        log::info!(
            "container {id}: created, init pid {}, in {:.1} ms",
            created.pid,
            started.elapsed().as_secs_f64() * 1e3
        );
        crate::runtime::oom::watch(&container, self.events.clone());
        let pid = u32::try_from(created.pid).unwrap_or_default();
        self.events.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            TaskCreate {
                container_id: id.to_owned(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            },
        );
        Ok(pid)
    }

    /// Starts a created container (or, with an exec id, one of its exec processes) and
    /// begins reporting its exit.
    pub async fn start(&self, req: &StartRequest) -> Result<u32> {
        let c = self.get(&req.id)?;
        if !req.exec_id.is_empty() {
            return self.start_exec(&c, &req.exec_id).await;
        }
        if let Err(found) = c.transition(TaskState::Created, TaskState::Running) {
            return Err(ShimError::FailedPrecondition {
                id: c.id.clone(),
                reason: format!("cannot start a task in state {found:?}"),
            });
        }
        if let Err(e) = self.driver.start(&c.state_ref).await {
            // Not started: the task is as it was (containerd may retry or delete it).
            let _ = c.transition(TaskState::Running, TaskState::Created);
            return Err(e);
        }
        log::info!("container {}: started", c.id);
        let pid = u32::try_from(c.pid).unwrap_or_default();
        self.events.publish(
            topics::TASK_START_EVENT_TOPIC,
            TaskStart {
                container_id: c.id.clone(),
                pid,
                ..Default::default()
            },
        );
        // Spawned after TaskStart is queued, so TaskExit always follows it.
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = c.exit.wait().await;
            c.io.drained().await;
            log::info!("container {}: exited with status {}", c.id, status.code);
            if !c.private_pid_ns {
                // No pid namespace of its own: nothing else ends the rest, so the shim does,
                // as the runc shim does.
                let rest = Arc::clone(&c);
                let _ = tokio::task::spawn_blocking(move || lifecycle::kill_remaining(&rest)).await;
            }
            events.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                TaskExit {
                    container_id: c.id.clone(),
                    id: c.id.clone(),
                    pid,
                    exit_status: status.code,
                    exited_at: MessageField::some(status.at),
                    ..Default::default()
                },
            );
        });
        Ok(pid)
    }
}

/// What a Create has done so far, undone unless it commits: the rootfs it mounted, the
/// container libcontainer created (its init killed, its state and cgroups removed) and the exit
/// watch on that init. [`CreateUndo::run`] undoes on an error return, off the async thread;
/// should the create's task be dropped half-way, `Drop` does the same in place.
struct CreateUndo {
    id: String,
    exits: Arc<ExitRouter>,
    rootfs: Option<Bundle>,
    container: Option<(StateRef, ContainerCgroup, i32)>,
}

impl CreateUndo {
    fn new(id: &str, exits: Arc<ExitRouter>) -> Self {
        Self {
            id: id.to_owned(),
            exits,
            rootfs: None,
            container: None,
        }
    }

    /// The create succeeded: nothing is undone.
    fn commit(&mut self) {
        self.rootfs = None;
        self.container = None;
    }

    /// Undoes what was done, then returns the create's error.
    async fn run(mut self, error: ShimError) -> ShimError {
        let work = Self {
            id: std::mem::take(&mut self.id),
            exits: Arc::clone(&self.exits),
            rootfs: self.rootfs.take(),
            container: self.container.take(),
        };
        // Dropped on a blocking thread: unmounting and removing cgroups block.
        let _ = tokio::task::spawn_blocking(move || drop(work)).await;
        error
    }
}

impl Drop for CreateUndo {
    fn drop(&mut self) {
        if let Some((state, cgroup, pid)) = self.container.take() {
            if let Err(e) = crate::runtime::driver::delete_in_process(&state, true) {
                log::warn!("{e}");
            }
            cgroup.remove_hybrid();
            self.exits.forget(pid);
        }
        if let Some(bundle) = self.rootfs.take() {
            if let Err(e) = bundle.unmount_rootfs(&self.id) {
                log::warn!("{e}");
            }
        }
    }
}
