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
