//! `containerd-shim-nvidia-v2`: the containerd shim v2 runtime `io.containerd.nvidia.v2`.
//!
//! `main` stays synchronous until the zygote is forked, so that the process which runs
//! libcontainer never inherits another thread's locks; only then does tokio start.

mod attach_warmup;
mod bundle;
mod cdi_cli;
mod cgroup;
mod console;
mod container;
mod driver;
mod error;
mod events;
mod exec;
mod exit;
mod gpu;
mod ldplan;
mod logdriver;
mod logging;
mod oom;
mod options;
mod proc_overlay;
mod procio;
mod shim;
mod stdio;
mod task;
mod working_set;

use std::process::ExitCode;

use containerd_shim::Config;

use crate::driver::Driver;
use crate::shim::{NvidiaShim, RUNTIME_ID};

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if cdi_cli::is_cdi_command(args.get(1..).unwrap_or_default()) {
        return cdi_cli::run(&args[1..]);
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
    let serve = flags.action.is_empty();
    if serve {
        // Before the zygote forks, so libcontainer's logs from the zygote reach containerd too.
        logging::init(&flags);
    }
    // `delete` needs libcontainer only when a container's state is left (the shim died).
    let orphaned_state = flags.action == "delete"
        && std::env::current_dir()
            .map(|d| bundle::Bundle::new(d).state_root().join(&flags.id).exists())
            .unwrap_or(false);
    if serve || orphaned_state {
        Driver::init();
    }
    if flags.action == "start" {
        attach_warmup::start();
    }
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
    // A blocking task that cannot finish (a FIFO open nobody answers) must not keep the shim.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    ExitCode::SUCCESS
}
