//! The operator commands: subcommands that containerd never passes (it calls the shim with
//! its own flags, `start` and `delete`): [`info`] (what the node offers), [`cdi`] (`cdi
//! generate`, `cdi list`), [`configure`] (containerd, Docker and the shim's own config),
//! [`doctor`] (checks a node end to end) and [`cdi_hook`] (the CDI hook steps); and what the
//! binary is when run by another name ([`legacy_hook`], [`cdi_hook`]). Each prints its usage
//! with `--help` and fails with one line and a non-zero status.

pub mod args;
pub mod cdi;
pub mod cdi_hook;
pub mod configure;
pub mod containerd_process;
pub mod doctor;
pub mod info;
pub mod legacy_hook;

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use nvidia_shim_core::Config;

/// The program name errors start with.
const PROGRAM: &str = "containerd-shim-nvidia-v2";

/// The operator commands and their usage.
const USAGE: &str = "usage: containerd-shim-nvidia-v2 COMMAND [--help]

  info        what this node offers to GPU containers (--json for machines)
  cdi         generate or list the CDI spec of this node's GPUs
  configure   register the runtime with containerd or Docker; write the shim's config
  doctor      check this node end to end, with the fix for each failure
  hook        the CDI hook steps (nvidia-cdi-hook's), for runtimes that run a CDI spec's hooks

containerd runs this binary itself (start, delete, and the shim's own flags).";

/// An operator command's body: its arguments after the command word to its exit status.
type Command = fn(&[String]) -> Result<ExitCode, String>;

/// Runs what the binary is when called by another name (`program`, its `argv[0]`): the
/// `nvidia-container-runtime-hook` Docker's `--gpus` runs, or `nvidia-cdi-hook`; `None` for
/// its own name.
pub fn by_program_name(program: &std::ffi::OsStr) -> Option<ExitCode> {
    let name = Path::new(program).file_name()?;
    if name == legacy_hook::NAME {
        return Some(legacy_hook::run());
    }
    (name == cdi_hook::NAME).then(|| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args::wants_help(&args) {
            println!("{}", cdi_hook::USAGE);
            return ExitCode::SUCCESS;
        }
        finish(cdi_hook::NAME, cdi_hook::run(&args))
    })
}

/// Runs an operator command when `args` (without the program name) is one; `None` leaves the
/// arguments to containerd's shim protocol.
pub fn run(args: &[OsString]) -> Option<ExitCode> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (command, rest) = args.split_first()?;
    let (usage, run): (&str, Command) = match command.as_str() {
        "info" => (info::USAGE, |a| info::run(a).map(|()| ExitCode::SUCCESS)),
        "cdi" => (cdi::USAGE, |a| cdi::run(a).map(|()| ExitCode::SUCCESS)),
        "configure" => (configure::USAGE, |a| {
            configure::run(a).map(|()| ExitCode::SUCCESS)
        }),
        "doctor" => (doctor::USAGE, doctor::run),
        "hook" => (cdi_hook::USAGE, cdi_hook::run),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return Some(ExitCode::SUCCESS);
        }
        _ => return None,
    };
    if args::wants_help(rest) {
        println!("{usage}");
        return Some(ExitCode::SUCCESS);
    }
    Some(finish(&format!("{PROGRAM} {command}"), run(rest)))
}

/// A command's exit status; its error on one line after `who`.
fn finish(who: &str, result: Result<ExitCode, String>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{who}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The shim's config from `path`, or the default file when it exists, else the defaults.
pub fn load_config(path: Option<&str>) -> Result<Config, String> {
    nvidia_shim_core_host::config::load_or_default(path.map(Path::new)).map_err(|e| e.to_string())
}
