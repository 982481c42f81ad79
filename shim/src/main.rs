//! `containerd-shim-nvidia-v2`: the containerd shim v2 runtime `io.containerd.nvidia.v2`.
//!
//! `main` is synchronous: it dispatches what the binary is asked to be (a zygote started
//! afresh, a hook, an operator command, containerd's `start`, `delete`, `-v`, `-info`, or the
//! daemon). The daemon ([`cli::shim_commands::serve`]) forks its zygote before any other
//! thread exists, so that the process which runs libcontainer never inherits another thread's
//! locks; only then does tokio start.
//!
//! Layers, each importing only those below it: `cli` (commands) > `service` (ttrpc) > `task`
//! (processes) > `runtime` (libcontainer, host work) > `io` > `error`, `logging`,
//! `working_set`; `gpu` (the runtime's spec editor, and the GPU commands') sits above
//! `runtime` and is wired in by the daemon.

mod cli;
mod error;
mod gpu;
mod io;
mod logging;
mod proc_title;
mod runtime;
mod service;
mod task;
mod working_set;

use std::io::Write;
use std::process::ExitCode;

use containerd_shim::protos::protobuf::Message;

use crate::cli::shim_commands::{self, RUNTIME_ID};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    // A zygote the shim started afresh (its first one died): nothing else runs in it.
    if args
        .get(1)
        .is_some_and(|a| a == runtime::zygote::ZYGOTE_FLAG)
    {
        let level = args.get(2).and_then(|l| l.to_str()).unwrap_or("info");
        runtime::zygote::serve_inherited(level);
    }
    if let Some(code) = args.first().and_then(|a| cli::operator::by_program_name(a)) {
        return code;
    }
    if let Some(code) = cli::operator::run(args.get(1..).unwrap_or_default()) {
        return code;
    }
    let flags = match containerd_shim::parse(args.get(1..).unwrap_or_default()) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if flags.version {
        println!("{}:", env!("CARGO_BIN_NAME"));
        println!("  Runtime: {RUNTIME_ID}");
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if flags.info {
        return shim_commands::features::print_info();
    }
    // `start` and `delete` are synchronous and single-threaded: containerd waits for them on
    // every container's create and delete. Only serving needs the zygote and a runtime.
    let reply = match flags.action.as_str() {
        // The daemon run by hand (`start` forks its own): the default configuration.
        "" => return shim_commands::serve::run(&flags, None),
        "start" => {
            runtime::attach_warmup::start();
            shim_commands::start::start_command(&flags).map(String::into_bytes)
        }
        "delete" => {
            logging::init_stderr();
            shim_commands::delete::delete_command(&flags.namespace, &flags.id, &flags.address)
                .and_then(|r| Ok(r.write_to_bytes()?))
        }
        other => Err(containerd_shim::Error::InvalidArgument(format!(
            "unknown action {other:?}"
        ))),
    };
    let written = reply.and_then(|bytes| {
        std::io::stdout()
            .write_all(&bytes)
            .map_err(|e| containerd_shim::Error::Other(format!("write stdout: {e}")))
    });
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {}: {e}", flags.action);
            ExitCode::FAILURE
        }
    }
}
