//! The OCI runtime features document (`runc features`' format) that `-info` returns inside
//! containerd's `RuntimeInfo`, as the runc shim passes on `runc features`: containerd 2.x asks
//! every handler for it and, without one, treats recursive read-only mounts and user
//! namespaces as unsupported (2.2 even crashed on a pod asking for a recursive read-only mount).
//! It lists what this shim, through libcontainer 0.7, really implements.

use libcontainer::oci_spec::runtime::{
    Apparmor, Arch, CgroupBuilder, Features, FeaturesBuilder, IDMapBuilder, LinuxFeatureBuilder,
    LinuxNamespaceType, LinuxSeccompAction, MountExtensionsBuilder, SeccompBuilder, Selinux,
};

/// The type URL containerd's `typeurl` gives the runtime-spec `Features` (JSON-encoded).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

/// The mount options libcontainer's mount parsing recognises (`syscall/linux.rs`,
/// `rootfs/utils.rs` in libcontainer 0.7).
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "idmap",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "ridmap",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// The features document.
pub fn features() -> Features {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    let mut caps = caps;
    caps.sort();
    let linux = LinuxFeatureBuilder::default()
        .namespaces(vec![
            LinuxNamespaceType::Cgroup,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::User,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Time,
        ])
        .capabilities(caps)
        .cgroup(
            CgroupBuilder::default()
                .v1(true)
                .v2(true)
                .systemd(true)
                .systemd_user(false)
                .rdma(false)
                .build()
                .unwrap_or_default(),
        )
        .seccomp(
            SeccompBuilder::default()
                .enabled(true)
                .actions(vec![
                    LinuxSeccompAction::ScmpActAllow,
                    LinuxSeccompAction::ScmpActErrno,
                    LinuxSeccompAction::ScmpActKill,
                    LinuxSeccompAction::ScmpActKillProcess,
                    LinuxSeccompAction::ScmpActKillThread,
                    LinuxSeccompAction::ScmpActLog,
                    LinuxSeccompAction::ScmpActNotify,
                    LinuxSeccompAction::ScmpActTrace,
                    LinuxSeccompAction::ScmpActTrap,
                ])
                .operators(
                    [
                        "SCMP_CMP_EQ",
                        "SCMP_CMP_GE",
                        "SCMP_CMP_GT",
                        "SCMP_CMP_LE",
                        "SCMP_CMP_LT",
                        "SCMP_CMP_MASKED_EQ",
                        "SCMP_CMP_NE",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )
                .archs(vec![
                    Arch::ScmpArchX86_64,
                    Arch::ScmpArchX86,
                    Arch::ScmpArchX32,
                    Arch::ScmpArchAarch64,
                    Arch::ScmpArchArm,
                ])
                .known_flags(
                    [
                        "SECCOMP_FILTER_FLAG_TSYNC",
                        "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )
                .supported_flags(
                    [
                        "SECCOMP_FILTER_FLAG_TSYNC",
                        "SECCOMP_FILTER_FLAG_LOG",
                        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )
                .build()
                .unwrap_or_default(),
        )
        .apparmor({
            let mut a = Apparmor::default();
            a.set_enabled(Some(true));
            a
        })
        .selinux({
            let mut s = Selinux::default();
            s.set_enabled(Some(false));
            s
        })
        .mount_extensions(
            MountExtensionsBuilder::default()
                .idmap(
                    IDMapBuilder::default()
                        .enabled(true)
                        .build()
                        .unwrap_or_default(),
                )
                .build()
                .unwrap_or_default(),
        )
        .build()
        .unwrap_or_default();
    FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max("1.2.1")
        .hooks(
            [
                "prestart",
                "createRuntime",
                "createContainer",
                "startContainer",
                "poststart",
                "poststop",
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .mount_options(
            MOUNT_OPTIONS
                .iter()
                .map(|o| (*o).to_owned())
                .collect::<Vec<_>>(),
        )
        .linux(linux)
        .build()
        .unwrap_or_default()
}

/// The features as the `Any` value containerd decodes: JSON.
pub fn features_json() -> Vec<u8> {
    serde_json::to_vec(&features()).unwrap_or_default()
}

/// Writes containerd's `RuntimeInfo` for `-info` to stdout: the runtime's name and version,
/// and the features document.
pub fn print_info() -> std::process::ExitCode {
    use containerd_shim::protos::protobuf::{Message, MessageField};
    use containerd_shim::protos::types::introspection::{RuntimeInfo, RuntimeVersion};
    let info = RuntimeInfo {
        name: super::RUNTIME_ID.to_owned(),
        version: MessageField::some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        }),
        features: MessageField::some(
            containerd_shim::protos::protobuf::well_known_types::any::Any {
                type_url: FEATURES_TYPE_URL.to_owned(),
                value: features_json(),
                ..Default::default()
            },
        ),
        ..Default::default()
    };
    match info
        .write_to_bytes()
        .map_err(std::io::Error::other)
        .and_then(|b| std::io::Write::write_all(&mut std::io::stdout(), &b))
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}: {e}", super::RUNTIME_ID);
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_says_what_containerd_asks_about() {
        let json: serde_json::Value = serde_json::from_slice(&features_json()).unwrap();
        assert_eq!(json["ociVersionMin"], "1.0.0");
        let opts = json["mountOptions"].as_array().unwrap();
        assert!(
            opts.iter().any(|o| o == "rro"),
            "recursive read-only mounts"
        );
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n == "user"), "{ns:?}");
        assert_eq!(json["linux"]["mountExtensions"]["idmap"]["enabled"], true);
        assert_eq!(json["linux"]["seccomp"]["enabled"], true);
        let caps = json["linux"]["capabilities"].as_array().unwrap();
        assert!(caps.iter().any(|c| c == "CAP_SYS_ADMIN"), "{caps:?}");
    }
}
