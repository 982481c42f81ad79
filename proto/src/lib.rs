//! Protobuf messages that containerd hands to a shim which `containerd-shim-protos` does not
//! define, written with `prost` derives (no protoc, no build script).
#![warn(missing_docs)]

use prost::Message;

/// `runtimeoptions.v1.Options`: what containerd's CRI plugin (and `ctr --runtime-config-path`)
/// sends to every runtime type other than runc, inside `CreateTaskRequest.options` and on the
/// shim's stdin at `start`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct RuntimeOptions {
    /// Field 1, `TypeUrl`: the type of the runtime's own options, unused by this shim.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Field 2, `ConfigPath`: the runtime's configuration file.
    #[prost(string, tag = "2")]
    pub config_path: String,
}

/// The `Any.type_url` containerd writes for [`RuntimeOptions`].
pub const RUNTIME_OPTIONS_TYPE_URL: &str = "runtimeoptions.v1.Options";

/// The `Any.type_url` of the runc shim's options (`containerd.runc.v1.Options`); containerd
/// sends it when a user points a runc-style runtime entry at this shim.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// `google.protobuf.Any`, as a prost message.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ProtoAny {
    /// Field 1, the type URL.
    #[prost(string, tag = "1")]
    pub type_url: String,
    /// Field 2, the encoded message.
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `containerd.runtime.bootstrap.v1.Extension`: one typed extension of the bootstrap.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct Extension {
    /// Field 1, the extension (the runtime's options among them).
    #[prost(message, optional, tag = "1")]
    pub value: Option<ProtoAny>,
}

/// `containerd.runtime.bootstrap.v1.BootstrapParams`: what containerd 2.3 and later write on
/// a shim's stdin at `start`, instead of the runtime options alone.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct BootstrapParams {
    /// Field 1, the container (task) id; equals the `-id` flag.
    #[prost(string, tag = "1")]
    pub instance_id: String,
    /// Field 2, the containerd namespace; equals the `-namespace` flag.
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// Field 3, the log level (an enum; unused here).
    #[prost(int32, tag = "3")]
    pub log_level: i32,
    /// Field 4, containerd's version.
    #[prost(string, tag = "4")]
    pub containerd_version: String,
    /// Field 5, containerd's ttrpc address.
    #[prost(string, tag = "5")]
    pub containerd_ttrpc_address: String,
    /// Field 6, containerd's gRPC address.
    #[prost(string, tag = "6")]
    pub containerd_grpc_address: String,
    /// Field 7, containerd's binary.
    #[prost(string, tag = "7")]
    pub containerd_binary: String,
    /// Field 8, typed extensions (the runtime options among them).
    #[prost(message, repeated, tag = "8")]
    pub extensions: Vec<Extension>,
    /// Field 9, where the shim's socket goes (instead of `/run/containerd/s`).
    #[prost(string, optional, tag = "9")]
    pub socket_dir: Option<String>,
}

/// What a shim's `start` stdin carries, in either of containerd's forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartInput {
    /// containerd 2.3 and later: the bootstrap parameters.
    Bootstrap(BootstrapParams),
    /// Before 2.3: the runtime options `Any` alone (possibly empty).
    Options(ProtoAny),
}

/// Reads a shim's `start` stdin: a [`BootstrapParams`] when it decodes as one whose
/// `instance_id` and `namespace` are this shim's `-id` and `-namespace` (the old `Any`'s
/// fields 1 and 2 have the same wire types, so that is what tells them apart), else the old
/// options `Any`.
pub fn decode_start_input(
    bytes: &[u8],
    id: &str,
    namespace: &str,
) -> Result<StartInput, prost::DecodeError> {
    if let Ok(params) = BootstrapParams::decode(bytes) {
        if !id.is_empty() && params.instance_id == id && params.namespace == namespace {
            return Ok(StartInput::Bootstrap(params));
        }
    }
    ProtoAny::decode(bytes).map(StartInput::Options)
}

impl StartInput {
    /// The runtime options `Any` carried, if any: the old form's, or the bootstrap's first
    /// extension naming runtime options (this shim's or runc's).
    pub fn options(&self) -> Option<&ProtoAny> {
        match self {
            Self::Options(any) => {
                (!any.type_url.is_empty() || !any.value.is_empty()).then_some(any)
            }
            Self::Bootstrap(p) => p
                .extensions
                .iter()
                .filter_map(|e| e.value.as_ref())
                .find(|a| is_runtime_options(&a.type_url) || is_runc_options(&a.type_url)),
        }
    }

    /// Where containerd wants the shim's socket, if it says.
    pub fn socket_dir(&self) -> Option<&str> {
        match self {
            Self::Bootstrap(p) => p.socket_dir.as_deref().filter(|d| !d.is_empty()),
            Self::Options(_) => None,
        }
    }
}

/// `containerd.linux.runc.CreateOptions`, the runc options of containerd's v1 runtime, which
/// containerd's Go client (`WithShimCgroup`) sends to runtimes not named `io.containerd.runc*`.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct RuncCreateOptions {
    /// Field 1.
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    /// Field 2.
    #[prost(bool, tag = "2")]
    pub open_tcp: bool,
    /// Field 3.
    #[prost(bool, tag = "3")]
    pub external_unix_sockets: bool,
    /// Field 4.
    #[prost(bool, tag = "4")]
    pub terminal: bool,
    /// Field 5.
    #[prost(bool, tag = "5")]
    pub file_locks: bool,
    /// Field 6.
    #[prost(string, repeated, tag = "6")]
    pub empty_namespaces: Vec<String>,
    /// Field 7.
    #[prost(string, tag = "7")]
    pub cgroups_mode: String,
    /// Field 8.
    #[prost(bool, tag = "8")]
    pub no_new_keyring: bool,
    /// Field 9: the cgroup the shim process is to be placed in.
    #[prost(string, tag = "9")]
    pub shim_cgroup: String,
    /// Field 10.
    #[prost(uint32, tag = "10")]
    pub io_uid: u32,
    /// Field 11.
    #[prost(uint32, tag = "11")]
    pub io_gid: u32,
    /// Field 12.
    #[prost(string, tag = "12")]
    pub criu_work_path: String,
    /// Field 13.
    #[prost(string, tag = "13")]
    pub criu_image_path: String,
}

impl RuncCreateOptions {
    /// The fields set that this shim does not act on, by their Go names.
    pub fn ignored_fields(&self) -> Vec<&'static str> {
        [
            (self.no_pivot_root, "NoPivotRoot"),
            (self.open_tcp, "OpenTcp"),
            (self.external_unix_sockets, "ExternalUnixSockets"),
            (self.terminal, "Terminal"),
            (self.file_locks, "FileLocks"),
            (!self.empty_namespaces.is_empty(), "EmptyNamespaces"),
            (!self.cgroups_mode.is_empty(), "CgroupsMode"),
            (self.no_new_keyring, "NoNewKeyring"),
            (self.io_uid != 0, "IoUid"),
            (self.io_gid != 0, "IoGid"),
            (!self.criu_work_path.is_empty(), "CriuWorkPath"),
            (!self.criu_image_path.is_empty(), "CriuImagePath"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect()
    }
}

/// The `Any.type_url` of [`RuncCreateOptions`].
pub const RUNC_CREATE_OPTIONS_TYPE_URL: &str = "containerd.linux.runc.CreateOptions";

/// Encodes [`RuntimeOptions`] as containerd does.
pub fn encode_runtime_options(opts: &RuntimeOptions) -> Vec<u8> {
    opts.encode_to_vec()
}

/// Whether `type_url` names [`RuntimeOptions`], with or without a `types.googleapis.com/` style
/// prefix.
pub fn is_runtime_options(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(RUNTIME_OPTIONS_TYPE_URL)
}

/// Whether `type_url` names the runc shim's options.
pub fn is_runc_options(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(RUNC_OPTIONS_TYPE_URL)
}

/// Whether `type_url` names [`RuncCreateOptions`].
pub fn is_runc_create_options(type_url: &str) -> bool {
    type_url.rsplit('/').next() == Some(RUNC_CREATE_OPTIONS_TYPE_URL)
}

/// Decodes the `value` of an `Any` carrying [`RuntimeOptions`].
pub fn decode_runtime_options(value: &[u8]) -> Result<RuntimeOptions, prost::DecodeError> {
    RuntimeOptions::decode(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_config_path() {
        let opts = RuntimeOptions {
            type_url: String::new(),
            config_path: "/etc/containerd-shim-nvidia/config.toml".into(),
        };
        let bytes = opts.encode_to_vec();
        // field 2, wire type 2 (length-delimited): tag byte 0x12.
        assert_eq!(bytes[0], 0x12);
        assert_eq!(decode_runtime_options(&bytes).unwrap(), opts);
    }

    #[test]
    fn decodes_bytes_as_containerd_writes_them() {
        // Go: proto.Marshal(&runtimeoptions.Options{TypeUrl: "x", ConfigPath: "/c"})
        let bytes = [0x0a, 0x01, b'x', 0x12, 0x02, b'/', b'c'];
        let opts = decode_runtime_options(&bytes).unwrap();
        assert_eq!(opts.type_url, "x");
        assert_eq!(opts.config_path, "/c");
    }

    #[test]
    fn rejects_truncated_input() {
        assert!(decode_runtime_options(&[0x12, 0x05, b'/']).is_err());
    }

    /// The options `Any` as containerd 2.2 and earlier write it.
    fn old_form() -> Vec<u8> {
        ProtoAny {
            type_url: RUNTIME_OPTIONS_TYPE_URL.into(),
            value: RuntimeOptions {
                type_url: String::new(),
                config_path: "/etc/nv.toml".into(),
            }
            .encode_to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn reads_stdin_as_containerd_2_2_writes_it() {
        let bytes = old_form();
        let input = decode_start_input(&bytes, "c1", "default").unwrap();
        let any = input.options().unwrap();
        assert!(is_runtime_options(&any.type_url));
        assert_eq!(
            decode_runtime_options(&any.value).unwrap().config_path,
            "/etc/nv.toml"
        );
        assert_eq!(input.socket_dir(), None);
        // Nothing on stdin: no options.
        assert_eq!(
            decode_start_input(&[], "c1", "default").unwrap().options(),
            None
        );
    }

    #[test]
    fn reads_stdin_as_containerd_2_3_writes_it() {
        // BootstrapParams as containerd 2.3 marshals it: id, namespace, log level, version,
        // addresses, binary, the runtime options as an extension, a socket dir.
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "k8s.io".into(),
            log_level: 4,
            containerd_version: "2.3.4".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            containerd_grpc_address: "/run/containerd/containerd.sock".into(),
            containerd_binary: "/usr/bin/containerd".into(),
            extensions: vec![
                Extension {
                    value: Some(ProtoAny {
                        type_url: "containerd.io/cri.v1.PodSandboxConfig".into(),
                        value: vec![1, 2, 3],
                    }),
                },
                Extension {
                    value: Some(ProtoAny::decode(old_form().as_slice()).unwrap()),
                },
            ],
            socket_dir: Some("/run/containerd/s2".into()),
        };
        let bytes = params.encode_to_vec();
        // Field 1 (instance_id), wire type 2: the same tag byte as the old Any's type_url.
        assert_eq!(bytes[0], 0x0a);
        let input = decode_start_input(&bytes, "c1", "k8s.io").unwrap();
        assert!(matches!(input, StartInput::Bootstrap(_)));
        let any = input.options().unwrap();
        assert_eq!(
            decode_runtime_options(&any.value).unwrap().config_path,
            "/etc/nv.toml"
        );
        assert_eq!(input.socket_dir(), Some("/run/containerd/s2"));
        // Another container's or namespace's parameters are not taken for ours.
        let other = decode_start_input(&bytes, "c2", "k8s.io").unwrap();
        assert!(matches!(other, StartInput::Options(_)));
    }

    #[test]
    fn decodes_the_v1_runc_create_options() {
        // Go: proto.Marshal(&runctypes.CreateOptions{ShimCgroup: "/shims", NoPivotRoot: true})
        let bytes = [0x08, 0x01, 0x4a, 0x06, b'/', b's', b'h', b'i', b'm', b's'];
        let o = RuncCreateOptions::decode(&bytes[..]).unwrap();
        assert_eq!(o.shim_cgroup, "/shims");
        assert_eq!(o.ignored_fields(), ["NoPivotRoot"]);
        assert!(is_runc_create_options(
            "containerd.linux.runc.CreateOptions"
        ));
    }

    #[test]
    fn recognises_type_urls() {
        assert!(is_runtime_options("runtimeoptions.v1.Options"));
        assert!(is_runtime_options(
            "types.googleapis.com/runtimeoptions.v1.Options"
        ));
        assert!(!is_runtime_options("containerd.runc.v1.Options"));
        assert!(is_runc_options("containerd.runc.v1.Options"));
    }
}
