//! An exec's start: the process spec the request carried, given the container's seccomp
//! profile (which libcontainer's tenant builder drops; see `executor`), written where
//! libcontainer reads it; stdio opened; room made under the pids limit; libcontainer's tenant
//! builder run in a zygote worker; the I/O attached.

use std::sync::Arc;

use crate::error::{Result, ShimError};
use crate::io::procio::PreparedIo;
use crate::runtime::exit::ExitCell;
use crate::runtime::libcontainer::{unexpected, LcContainer, Libcontainer};
use crate::runtime::ops::{Done, ExecArgs, Op};
use crate::runtime::{ExecRequest, Spawned};

/// Starts the process `req` asks for in container `c`; `exit` receives its exit.
pub(super) fn exec(
    rt: &Libcontainer,
    c: &LcContainer,
    req: &ExecRequest,
    exit: &Arc<ExitCell>,
) -> Result<Spawned> {
    // libcontainer 0.7's exec joins the init's namespaces but not its user namespace (its
    // tenant builder leaves `user` out of the ones it joins): the process would run as the
    // host's root beside a container whose root is an unprivileged host id.
    if c.user_ns {
        return Err(ShimError::FailedPrecondition {
            id: c.id.clone(),
            reason: format!(
                "exec {}: the container has a user namespace, which this runtime's exec cannot join yet (the process would run as the host's root); refused",
                req.exec_id
            ),
        });
    }
    let size = req.process.console_size().as_ref().map(|b| {
        (
            u32::try_from(b.width()).unwrap_or(u32::MAX),
            u32::try_from(b.height()).unwrap_or(u32::MAX),
        )
    });
    let (process, executor) =
        crate::runtime::executor::for_exec(c.seccomp.clone(), req.process.clone());
    let process = serde_json::to_vec(&process).map_err(|err| ShimError::InvalidArgument {
        id: c.id.clone(),
        reason: format!("exec process spec: {err}"),
    })?;
    // libcontainer's tenant builder reads the process from a file.
    let spec_file = c.bundle.path().join(format!(".exec-{}.json", req.exec_id));
    std::fs::write(&spec_file, &process)
        .map_err(|err| ShimError::io(&c.id, format!("write {}", spec_file.display()), err))?;
    let io = match PreparedIo::open(&c.id, &rt.namespace, &req.stdio) {
        Ok(io) => io,
        Err(err) => {
            let _ = std::fs::remove_file(&spec_file);
            return Err(err);
        }
    };
    // An exec is admitted under any pids limit, as with runc (see `make_room_for_exec`).
    let exec_room = c.cgroup.make_room_for_exec();
    let (wire_io, pending) = io.split();
    let guard = rt.exits.begin_create();
    let args = ExecArgs {
        state: c.state.clone(),
        process: spec_file.clone(),
        io: wire_io,
        executor,
        hybrid_cgroups: c.cgroup.hybrid(),
    };
    let done = rt.call(&c.id, "exec", Op::Exec(Box::new(args)));
    let _ = std::fs::remove_file(&spec_file);
    drop(exec_room);
    let pid = match done? {
        Done::Execed(pid) => pid,
        other => return Err(unexpected(&c.id, "exec", &other)),
    };
    let route = guard.watch(pid, Arc::clone(exit));
    match pending.attach(&c.id, &req.stdio, size) {
        Ok(io) => Ok(Spawned { pid, io, route }),
        Err(err) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(err)
        }
    }
}
