//! What containerd runs: the shim protocol's [`start`] (find or spawn the daemon of a
//! container's group) and [`delete`] (clean up after a dead daemon) commands, the `-info`
//! reply ([`features`]), and the daemon `start` spawns ([`serve`]).

pub mod delete;
pub mod features;
pub mod serve;
pub mod start;

use std::ffi::OsString;
use std::path::PathBuf;

/// The runtime type containerd knows this shim by.
pub const RUNTIME_ID: &str = "io.containerd.nvidia.v2";

/// The flag through which `start` gives the daemon the configuration file the runtime options
/// name (containerd's own flags come after it; containerd never passes it).
pub const CONFIG_FLAG: &str = "-nvidia-config";

/// Takes [`CONFIG_FLAG`] and its value out of `args` (the arguments after the program name);
/// returns the path and the arguments left, containerd's.
pub fn take_config_flag(args: &[OsString]) -> (Option<PathBuf>, Vec<OsString>) {
    let mut config = None;
    let mut rest = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == CONFIG_FLAG {
            config = it.next().map(PathBuf::from);
        } else {
            rest.push(arg.clone());
        }
    }
    (config, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_flag_is_taken_out_of_containerds_flags() {
        let args: Vec<OsString> = [
            "-namespace",
            "k8s.io",
            CONFIG_FLAG,
            "/etc/c.toml",
            "-id",
            "c1",
        ]
        .map(OsString::from)
        .to_vec();
        let (config, rest) = take_config_flag(&args);
        assert_eq!(config, Some(PathBuf::from("/etc/c.toml")));
        assert_eq!(
            rest,
            ["-namespace", "k8s.io", "-id", "c1"].map(OsString::from)
        );
        let flags = containerd_shim::parse(&rest).unwrap();
        assert_eq!(
            (flags.namespace.as_str(), flags.id.as_str()),
            ("k8s.io", "c1")
        );
        assert_eq!(take_config_flag(&rest), (None, rest.clone()));
    }
}
