//! The shim's log (containerd's `log` FIFO in the bundle, served by containerd-shim's logger
//! through the `log` facade; libcontainer's `tracing` events arrive through tracing's `log`
//! feature) and the `-info` reply.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
use containerd_shim::Flags;
use nvidia_shim_core::Config;

use crate::options::CONFIG_PATH_ENV;
use crate::shim::RUNTIME_ID;

/// Opens the shim log at the level from the config file (`-debug` raises it to debug).
pub fn init(flags: &Flags) {
    let path = std::env::var_os(CONFIG_PATH_ENV).map(PathBuf::from);
    let level = Config::load_or_default(path.as_deref())
        .map(|c| c.log_level.as_str())
        .unwrap_or("info");
    if let Err(e) = containerd_shim::logger::init(flags.debug, level, &flags.namespace, &flags.id) {
        eprintln!("{RUNTIME_ID}: cannot open the shim log: {e}");
    }
}

/// Writes containerd's `RuntimeInfo` for `-info` to stdout.
pub fn print_info() -> ExitCode {
    let info = RuntimeInfo {
        name: RUNTIME_ID.to_owned(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match info
        .write_to_bytes()
        .map_err(std::io::Error::other)
        .and_then(|b| std::io::stdout().write_all(&b))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: {e}");
            ExitCode::FAILURE
        }
    }
}
