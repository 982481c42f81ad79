//! `containerd-shim-nvidia-v2 cdi generate [--config FILE] [--output FILE]`: writes a CDI spec
//! (JSON) for the host's GPUs from the shim's own discovery, named as `nvidia-ctk cdi generate`
//! names devices, for runtimes and tools that read CDI specs from `/etc/cdi` or `/var/run/cdi`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nvidia_shim_core::cdi::generate::generate;
use nvidia_shim_core::request::Capabilities;
use nvidia_shim_core::Config;

const USAGE: &str = "usage: containerd-shim-nvidia-v2 cdi generate [--config FILE] [--output FILE]";

/// Whether `args` (without the program name) is a `cdi` command.
pub fn is_cdi_command(args: &[OsString]) -> bool {
    args.first().is_some_and(|a| a == "cdi")
}

/// Runs a `cdi` command; `args` starts with `cdi`.
pub fn run(args: &[OsString]) -> ExitCode {
    match generate_cmd(args.get(1..).unwrap_or_default()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("containerd-shim-nvidia-v2 cdi: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate_cmd(args: &[OsString]) -> Result<(), String> {
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    if it.next().as_deref() != Some("generate") {
        return Err(USAGE.to_owned());
    }
    let (mut config_path, mut output) = (None, None);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--config" => config_path = Some(PathBuf::from(value)),
            "--output" => output = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}; {USAGE}")),
        }
    }
    let config = Config::load_or_default(config_path.as_deref()).map_err(|e| e.to_string())?;
    let inventory = crate::gpu::discover(&config).map_err(|e| e.to_string())?;
    let spec = generate(&inventory, Capabilities::all());
    let mut json = serde_json::to_vec_pretty(&spec).map_err(|e| e.to_string())?;
    json.push(b'\n');
    match output {
        Some(path) => std::fs::write(&path, &json)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => std::io::stdout()
            .write_all(&json)
            .map_err(|e| format!("cannot write to stdout: {e}")),
    }
}
