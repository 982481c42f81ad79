//! `containerd-shim-nvidia-v2`: the containerd shim v2 runtime `io.containerd.nvidia.v2`.
//!
//! `main` stays synchronous until the zygote is forked, so that the process which runs
//! libcontainer never inherits another thread's locks; only then does tokio start.

mod cli;
mod error;
mod gpu;
mod io;
mod logging;
mod runtime;
mod service;
mod working_set;

use std::io::Write;
use std::process::ExitCode;

use containerd_shim::protos::protobuf::Message;
use containerd_shim::Config;

use crate::cli::shim_commands::shim::NvidiaShim;
use crate::cli::shim_commands::RUNTIME_ID;
use crate::runtime::driver::Driver;

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
        return logging::print_info();
    }
    // `start` and `delete` are synchronous and single-threaded: containerd waits for them on
    // every container's create and delete. Only serving needs the zygote and a runtime.
    let reply = match flags.action.as_str() {
        "" => None,
        "start" => {
            runtime::attach_warmup::start();
            Some(
                cli::shim_commands::shim::start_command(&flags.namespace, &flags.id, &flags.address, flags.debug)
                    .map(String::into_bytes),
            )
        }
        "delete" => {
            logging::init_stderr();
            Some(
                cli::shim_commands::shim::delete_command(&flags.namespace, &flags.id, &flags.address)
                    .and_then(|r| Ok(r.write_to_bytes()?)),
            )
        }
        other => Some(Err(containerd_shim::Error::InvalidArgument(format!(
            "unknown action {other:?}"
        )))),
    };
    if let Some(reply) = reply {
        let written = reply.and_then(|bytes| {
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|e| containerd_shim::Error::Other(format!("write stdout: {e}")))
        });
        return match written {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{RUNTIME_ID}: {}: {e}", flags.action);
                ExitCode::FAILURE
            }
        };
    }
    // Before the zygote forks, so libcontainer's logs from the zygote reach containerd too.
    logging::init(&flags);
    Driver::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(working_set::BLOCKING_KEEP_ALIVE)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        no_setup_logger: true,
        ..Config::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<NvidiaShim>(
        RUNTIME_ID,
        Some(config),
    ));
    cli::shim_commands::shim::remove_served_socket();
    // A blocking task that cannot finish (a FIFO open nobody answers) must not keep the shim.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::SUCCESS
}
