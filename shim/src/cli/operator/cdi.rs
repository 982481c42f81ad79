//! `containerd-shim-nvidia-v2 cdi generate`: writes a CDI spec for the host's GPUs from the
//! shim's own discovery, named as `nvidia-ctk cdi generate` names devices, for runtimes and
//! tools that read CDI specs from `/etc/cdi` or `/var/run/cdi`; `cdi list` prints the device
//! names that spec holds. YAML for a `.yaml`/`.yml`
//! output (or `--format yaml`), JSON otherwise; the links and ld cache as hook steps calling
//! this binary (default), the toolkit's `nvidia-cdi-hook`, or left to this shim
//! (`--hooks none`).

use std::io::Write;
use std::path::{Path, PathBuf};

use nvidia_shim_core::cdi::generate::{generate, Hooks, HOOK_PATH};
use nvidia_shim_core::request::Capabilities;
use nvidia_shim_core_host::config::load_or_default;

/// The command's usage.
pub const USAGE: &str = "usage: containerd-shim-nvidia-v2 cdi generate [--config FILE] [--output FILE] [--format json|yaml] [--hooks shim|nvidia-cdi-hook|none] [--hook-path PATH]
       containerd-shim-nvidia-v2 cdi list [--config FILE]

  --config FILE      the shim's config (driver, dev and proc roots); default /etc/containerd-shim-nvidia/config.toml
  --output FILE      where to write the spec; default standard output
  --format FORMAT    json or yaml; default yaml for a .yaml or .yml output, json otherwise
  --hooks MODE       shim (default): SONAME links, CUDA compat and the ld cache as createContainer
                     hooks calling this binary (`hook SUBCOMMAND`), for every CDI consumer
                     (runc, crun) where this project is installed; this runtime does them itself;
                     nvidia-cdi-hook: the same steps calling the NVIDIA Container Toolkit's
                     nvidia-cdi-hook, as nvidia-ctk writes them;
                     none: no hooks; this runtime makes the links and the ld cache itself, other
                     consumers get the driver files without them
  --hook-path PATH   the hook program; default this binary (shim), /usr/bin/nvidia-cdi-hook";

/// Runs `cdi generate` or `cdi list`; `args` follow `cdi`.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("generate") => generate_cmd(args),
        Some("list") => list_cmd(&args[1..]),
        _ => Err(format!("generate or list; {USAGE}")),
    }
}

/// Prints the qualified names of the devices the generated spec holds, one per line.
fn list_cmd(args: &[String]) -> Result<(), String> {
    let args = super::args::Args::parse(args, &["--config"], &[])?;
    if let Some(extra) = args.positional.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    let config = super::load_config(args.value("--config"))?;
    let inventory = crate::gpu::discover(&config).map_err(|e| e.to_string())?;
    let spec =
        generate(&inventory, Capabilities::all(), &Hooks::None, &[]).map_err(|e| e.to_string())?;
    for d in &spec.devices {
        println!("{}={}", spec.kind, d.name);
    }
    Ok(())
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// The format of `output` when none is asked for: YAML for `.yaml`/`.yml`.
fn format_for(output: Option<&Path>) -> Format {
    match output.and_then(|p| p.extension()).and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => Format::Yaml,
        _ => Format::Json,
    }
}

fn generate_cmd(args: &[String]) -> Result<(), String> {
    let mut it = args.iter();
    if it.next().map(String::as_str) != Some("generate") {
        return Err(format!("unknown command; {USAGE}"));
    }
    let (mut config_path, mut output, mut format) = (None, None, None);
    let (mut hooks, mut hook_path) = ("shim".to_owned(), None);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?
            .clone();
        match flag.as_str() {
            "--config" => config_path = Some(PathBuf::from(value)),
            "--output" => output = Some(PathBuf::from(value)),
            "--format" => {
                format = Some(match value.as_str() {
                    "json" => Format::Json,
                    "yaml" => Format::Yaml,
                    other => return Err(format!("--format {other:?}: json or yaml")),
                })
            }
            "--hooks" => hooks = value,
            "--hook-path" => hook_path = Some(value),
            _ => return Err(format!("unknown flag {flag}; {USAGE}")),
        }
    }
    let hooks = match hooks.as_str() {
        "shim" => Hooks::Shim(match hook_path {
            Some(p) => p,
            None => std::env::current_exe()
                .and_then(std::fs::canonicalize)
                .map_err(|e| format!("cannot find this binary for the hooks: {e}"))?
                .display()
                .to_string(),
        }),
        "nvidia-cdi-hook" => {
            Hooks::NvidiaCdiHook(hook_path.unwrap_or_else(|| HOOK_PATH.to_owned()))
        }
        "none" => Hooks::None,
        other => return Err(format!("--hooks {other:?}: shim, nvidia-cdi-hook or none")),
    };
    let format = format.unwrap_or_else(|| format_for(output.as_deref()));
    let config = load_or_default(config_path.as_deref()).map_err(|e| e.to_string())?;
    let inventory = crate::gpu::discover(&config).map_err(|e| e.to_string())?;
    let ipc = nvidia_shim_core_host::discover::present_endpoints(
        &config.dev_root,
        &nvidia_shim_core_host::discover::mps_pipe_dir(),
    );
    let spec =
        generate(&inventory, Capabilities::all(), &hooks, &ipc).map_err(|e| e.to_string())?;
    let text = match format {
        Format::Json => serde_json::to_string_pretty(&spec)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string()),
        Format::Yaml => spec.to_yaml(),
    }
    .map_err(|e| format!("cannot serialize the spec: {e}"))?;
    match output {
        // A new file renamed over the old: a runtime reading the spec meanwhile sees the old
        // one or the new one whole, never an empty or partial file.
        Some(path) => nvidia_shim_core_host::untrusted::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| format!("cannot write {}: {e}", path.display())),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write to stdout: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_name_picks_the_format() {
        assert_eq!(
            format_for(Some(Path::new("/etc/cdi/nvidia.yaml"))),
            Format::Yaml
        );
        assert_eq!(format_for(Some(Path::new("nvidia.yml"))), Format::Yaml);
        assert_eq!(format_for(Some(Path::new("nvidia.json"))), Format::Json);
        assert_eq!(format_for(None), Format::Json);
    }

    #[test]
    fn bad_flags_are_named() {
        let err = generate_cmd(&["generate".into(), "--hooks".into(), "maybe".into()]).unwrap_err();
        assert!(err.contains("--hooks \"maybe\""), "{err}");
        let err = generate_cmd(&["generate".into(), "--format".into(), "xml".into()]).unwrap_err();
        assert!(err.contains("json or yaml"), "{err}");
        let err = generate_cmd(&["list".into()]).unwrap_err();
        assert!(err.contains("unknown command"), "{err}");
        let err = run(&["lsit".into()]).unwrap_err();
        assert!(err.starts_with("generate or list"), "{err}");
    }
}
