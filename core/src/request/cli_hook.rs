//! containerd's own `--gpus` (`ctr run --gpus N`, nerdctl 1.x; containerd's `contrib/nvidia`)
//! asks for GPUs by adding a prestart hook that runs libnvidia-container's CLI through
//! `containerd oci-hook`:
//!
//! ```text
//! containerd oci-hook -- /usr/bin/nvidia-container-cli --load-kmods [--ldcache=F] configure
//!     [--device=0,1|all] [--compute --compat32 --graphics --utility --video --display --ngx]
//!     [--ldconfig=@/sbin/ldconfig] [--require=EXPR]... --pid={{pid}} {{rootfs}}
//! ```
//!
//! This runtime injects GPUs itself, so [`take`] turns such a hook into the request the
//! environment would make (`NVIDIA_VISIBLE_DEVICES`, `NVIDIA_DRIVER_CAPABILITIES`,
//! `NVIDIA_REQUIRE_*`) and drops it: libnvidia-container never runs, so nothing is injected
//! twice and it need not be installed. A flag it cannot translate fails the request, naming
//! it. Pure: the spec is edited in memory.

use oci_spec::runtime::{Hook, Spec};

use crate::edits::set_env;

/// The program containerd's hook runs.
const CLI: &str = "nvidia-container-cli";

/// Capability flags of `nvidia-container-cli configure` and the capability each names.
const CAPABILITY_FLAGS: [(&str, &str); 7] = [
    ("--compute", "compute"),
    ("--compat32", "compat32"),
    ("--graphics", "graphics"),
    ("--utility", "utility"),
    ("--video", "video"),
    ("--display", "display"),
    ("--ngx", "ngx"),
];

/// A flag of the hook's command line that this runtime cannot honour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "containerd's --gpus hook asks nvidia-container-cli for {flag}, which this runtime does not \
     translate; ask for the GPUs with NVIDIA_VISIBLE_DEVICES and NVIDIA_DRIVER_CAPABILITIES instead"
)]
pub struct CliHookError {
    /// The flag, quoted and bounded.
    pub flag: String,
}

/// The request a hook made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CliRequest {
    /// `--device=`: the devices, as `NVIDIA_VISIBLE_DEVICES` names them (`none` without it).
    pub devices: String,
    /// The capability flags, as `NVIDIA_DRIVER_CAPABILITIES` names them.
    pub capabilities: Vec<&'static str>,
    /// `--require=` expressions.
    pub requirements: Vec<String>,
}

/// The arguments after `oci-hook --` when `hook` is containerd's GPU hook.
fn cli_args(hook: &Hook) -> Option<&[String]> {
    let args = hook.args().as_deref()?;
    let at = args.iter().position(|a| a == "oci-hook")?;
    let rest = args.get(at + 1..)?;
    let rest = rest.strip_prefix(&["--".to_owned()]).unwrap_or(rest);
    let (program, cli_args) = rest.split_first()?;
    (std::path::Path::new(program).file_name()? == CLI).then_some(cli_args)
}

/// Reads the request of `nvidia-container-cli` arguments `args`.
fn parse(args: &[String]) -> Result<CliRequest, CliHookError> {
    let unsupported = |flag: &str| CliHookError {
        flag: crate::quote::quoted(flag),
    };
    let configure = args
        .iter()
        .position(|a| a == "configure")
        .ok_or_else(|| unsupported("a command other than configure"))?;
    for global in &args[..configure] {
        // Loading kernel modules and the host's ld cache path concern the CLI's own work.
        if global != "--load-kmods" && !global.starts_with("--ldcache=") {
            return Err(unsupported(global));
        }
    }
    let mut request = CliRequest {
        devices: "none".to_owned(),
        ..CliRequest::default()
    };
    let rest = &args[configure + 1..];
    for (i, arg) in rest.iter().enumerate() {
        if let Some(devices) = arg.strip_prefix("--device=") {
            request.devices = devices.to_owned();
        } else if let Some((_, cap)) = CAPABILITY_FLAGS.iter().find(|(f, _)| f == arg) {
            if !request.capabilities.contains(cap) {
                request.capabilities.push(cap);
            }
        } else if let Some(expr) = arg.strip_prefix("--require=") {
            request.requirements.push(expr.to_owned());
        } else if arg.starts_with("--ldconfig=") || arg.starts_with("--pid=") {
            // The ld cache is rebuilt natively; the pid is the runtime's own business.
        } else if i + 1 == rest.len() && !arg.starts_with('-') {
            // The rootfs, last.
        } else {
            return Err(unsupported(arg));
        }
    }
    Ok(request)
}

/// Moves containerd's GPU hooks out of `list` (emptied to `None`), the first one's request
/// into `found`.
fn take_from(
    list: &mut Option<Vec<Hook>>,
    found: &mut Option<CliRequest>,
) -> Result<(), CliHookError> {
    let Some(entries) = list.as_mut() else {
        return Ok(());
    };
    let mut kept = Vec::with_capacity(entries.len());
    for hook in entries.drain(..) {
        match cli_args(&hook) {
            Some(args) if found.is_none() => *found = Some(parse(args)?),
            // A second one asks again; the first stands.
            Some(_) => {}
            None => kept.push(hook),
        }
    }
    *entries = kept;
    if entries.is_empty() {
        *list = None;
    }
    Ok(())
}

/// Takes containerd's GPU hook out of `spec` (prestart or createRuntime) and returns the
/// request it made, after setting it in the process environment; `None` when there is none.
pub fn take(spec: &mut Spec) -> Result<Option<CliRequest>, CliHookError> {
    let Some(hooks) = spec.hooks_mut().as_mut() else {
        return Ok(None);
    };
    let mut found = None;
    #[allow(deprecated)]
    take_from(hooks.prestart_mut(), &mut found)?;
    take_from(hooks.create_runtime_mut(), &mut found)?;
    let Some(request) = found else {
        return Ok(None);
    };
    let mut env = vec![format!("NVIDIA_VISIBLE_DEVICES={}", request.devices)];
    if !request.capabilities.is_empty() {
        env.push(format!(
            "NVIDIA_DRIVER_CAPABILITIES={}",
            request.capabilities.join(",")
        ));
    }
    for (i, expr) in request.requirements.iter().enumerate() {
        env.push(format!("NVIDIA_REQUIRE_CONTAINERD_GPUS_{i}={expr}"));
    }
    set_env(spec, &env);
    Ok(Some(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(args: &[&str]) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"cwd": "/", "user": {"uid": 0, "gid": 0}, "args": ["sh"], "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]},
            "hooks": {
                "prestart": [
                    {"path": "/usr/bin/other-hook", "args": ["other-hook"]},
                    {"path": "/usr/bin/containerd", "args": args},
                ]
            }
        }))
        .unwrap()
    }

    fn env(spec: &Spec) -> Vec<String> {
        spec.process().as_ref().unwrap().env().clone().unwrap()
    }

    const CTR_GPUS_0: [&str; 16] = [
        "containerd",
        "oci-hook",
        "--",
        "/usr/bin/nvidia-container-cli",
        "--load-kmods",
        "configure",
        "--device=0",
        "--compute",
        "--compat32",
        "--graphics",
        "--utility",
        "--video",
        "--display",
        "--require=cuda>=11.0",
        "--pid={{pid}}",
        "{{rootfs}}",
    ];

    #[test]
    fn ctrs_gpus_hook_becomes_the_environments_request_and_is_dropped() {
        let mut spec = spec_with(&CTR_GPUS_0);
        let request = take(&mut spec).unwrap().unwrap();
        assert_eq!(request.devices, "0");
        assert_eq!(
            request.capabilities,
            ["compute", "compat32", "graphics", "utility", "video", "display"]
        );
        let env = env(&spec);
        assert!(
            env.contains(&"NVIDIA_VISIBLE_DEVICES=0".to_owned()),
            "{env:?}"
        );
        assert!(!env.contains(&"NVIDIA_VISIBLE_DEVICES=void".to_owned()));
        assert!(env.contains(
            &"NVIDIA_DRIVER_CAPABILITIES=compute,compat32,graphics,utility,video,display"
                .to_owned()
        ));
        assert!(env.contains(&"NVIDIA_REQUIRE_CONTAINERD_GPUS_0=cuda>=11.0".to_owned()));
        #[allow(deprecated)]
        let prestart = spec.hooks().as_ref().unwrap().prestart().clone().unwrap();
        assert_eq!(prestart.len(), 1, "only the other hook is left");
        assert_eq!(prestart[0].path().to_str(), Some("/usr/bin/other-hook"));
    }

    #[test]
    fn without_devices_the_request_is_none_and_other_specs_are_left_alone() {
        let mut spec = spec_with(&[
            "containerd",
            "oci-hook",
            "--",
            "/opt/bin/nvidia-container-cli",
            "--load-kmods",
            "--ldcache=/etc/ld.so.cache",
            "configure",
            "--utility",
            "--ldconfig=@/sbin/ldconfig",
            "--pid=42",
            "/rootfs",
        ]);
        let request = take(&mut spec).unwrap().unwrap();
        assert_eq!(request.devices, "none");
        assert_eq!(request.capabilities, ["utility"]);
        let mut plain = spec_with(&["containerd", "oci-hook", "--", "/usr/bin/other"]);
        let before = plain.clone();
        assert_eq!(take(&mut plain).unwrap(), None);
        assert_eq!(plain, before);
    }

    #[test]
    fn a_flag_it_cannot_translate_fails_naming_it() {
        let mut args = CTR_GPUS_0.to_vec();
        args.insert(6, "--mig-config=0");
        let err = take(&mut spec_with(&args)).unwrap_err();
        assert!(err.to_string().contains("--mig-config=0"), "{err}");
        let err = take(&mut spec_with(&[
            "containerd",
            "oci-hook",
            "--",
            "nvidia-container-cli",
            "info",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("other than configure"), "{err}");
    }
}
