//! Runtime options from containerd (`runtimeoptions.v1.Options` in an `Any`, on `start`'s stdin
//! and in Create): the shim's configuration file they point at, and the v1 runc options'
//! `ShimCgroup`.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use nvidia_shim_core::quote::quoted;
use nvidia_shim_proto::{
    decode_runtime_options, decode_start_input, is_runc_create_options, is_runc_options,
    is_runtime_options, RuncCreateOptions,
};
use prost::Message;

use crate::error::{Result, ShimError};
use crate::task::CreateOptions;

/// What containerd's options `Any` asks, by its type: `runtimeoptions.v1.Options` gives the
/// config file; the runc shim's options (sent when a runc style runtime entry points at this
/// shim) carry nothing this shim uses; the v1 runc `CreateOptions` (containerd's Go client
/// sends them with `WithShimCgroup` to runtimes not named `io.containerd.runc*`) give the shim
/// cgroup, as the runc shim honours it, the other fields logged as ignored. Any other type is
/// refused, so a misconfigured runtime entry is reported instead of silently ignored.
pub fn create_options(id: &str, any: &Any) -> Result<CreateOptions> {
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(CreateOptions::default());
    }
    let undecodable = |e: prost::DecodeError| ShimError::InvalidArgument {
        id: id.to_owned(),
        reason: format!("cannot decode runtime options ({}): {e}", any.type_url),
    };
    if is_runtime_options(&any.type_url) {
        let opts = decode_runtime_options(&any.value).map_err(undecodable)?;
        return Ok(CreateOptions {
            config_path: (!opts.config_path.is_empty()).then(|| PathBuf::from(opts.config_path)),
            shim_cgroup: None,
        });
    }
    if is_runc_options(&any.type_url) {
        log::warn!("container {id}: runc options are ignored by io.containerd.nvidia.v2; use runtimeoptions ConfigPath");
        return Ok(CreateOptions::default());
    }
    if is_runc_create_options(&any.type_url) {
        let opts = RuncCreateOptions::decode(any.value.as_slice()).map_err(undecodable)?;
        let ignored = opts.ignored_fields();
        if !ignored.is_empty() {
            log::warn!(
                "container {id}: {} of the runc CreateOptions are ignored by io.containerd.nvidia.v2",
                ignored.join(", ")
            );
        }
        return Ok(CreateOptions {
            config_path: None,
            shim_cgroup: (!opts.shim_cgroup.is_empty()).then_some(opts.shim_cgroup),
        });
    }
    Err(ShimError::InvalidArgument {
        id: id.to_owned(),
        reason: format!(
            "unsupported runtime options type {} (expected runtimeoptions.v1.Options)",
            quoted(&any.type_url)
        ),
    })
}

/// The config path carried by containerd's options, if any (see [`create_options`]).
pub fn config_path_from_any(id: &str, any: &Any) -> Result<Option<PathBuf>> {
    create_options(id, any).map(|o| o.config_path)
}

/// What `start` learns from its stdin: the config file the runtime options name, and where
/// containerd wants the shim's socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartInput {
    /// The runtime options' `ConfigPath`.
    pub config_path: Option<PathBuf>,
    /// containerd 2.3's `BootstrapParams.socket_dir`.
    pub socket_dir: Option<PathBuf>,
}

/// Decodes what containerd writes on the stdin of `start`: a `BootstrapParams` (containerd
/// 2.3 and later, with the runtime options among its extensions) or the runtime options `Any`
/// alone (before 2.3).
pub fn start_input(id: &str, namespace: &str, bytes: &[u8]) -> Result<StartInput> {
    if bytes.is_empty() {
        return Ok(StartInput::default());
    }
    let input =
        decode_start_input(bytes, id, namespace).map_err(|e| ShimError::InvalidArgument {
            id: id.to_owned(),
            reason: format!("cannot decode the runtime options on stdin: {e}"),
        })?;
    let config_path = match input.options() {
        Some(any) => config_path_from_any(
            id,
            &Any {
                type_url: any.type_url.clone(),
                value: any.value.clone(),
                ..Default::default()
            },
        )?,
        None => None,
    };
    Ok(StartInput {
        config_path,
        socket_dir: input.socket_dir().map(PathBuf::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvidia_shim_proto::RuntimeOptions;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    #[test]
    fn reads_config_path() {
        let value = prost_encode("/etc/shim.toml");
        let a = any("runtimeoptions.v1.Options", value);
        assert_eq!(
            config_path_from_any("c", &a).unwrap(),
            Some(PathBuf::from("/etc/shim.toml"))
        );
        use containerd_shim::protos::protobuf::Message;
        let bytes = a.write_to_bytes().unwrap();
        assert_eq!(
            start_input("c", "default", &bytes).unwrap().config_path,
            Some(PathBuf::from("/etc/shim.toml"))
        );
    }

    fn prost_encode(path: &str) -> Vec<u8> {
        nvidia_shim_proto::encode_runtime_options(&RuntimeOptions {
            type_url: String::new(),
            config_path: path.into(),
        })
    }

    #[test]
    fn empty_options_mean_defaults() {
        assert_eq!(config_path_from_any("c", &Any::default()).unwrap(), None);
        assert_eq!(
            start_input("c", "default", &[]).unwrap(),
            StartInput::default()
        );
    }

    #[test]
    fn runc_options_are_tolerated() {
        let a = any("containerd.runc.v1.Options", vec![0x10, 0x01]);
        assert_eq!(config_path_from_any("c", &a).unwrap(), None);
    }

    #[test]
    fn unknown_type_is_invalid() {
        let err = config_path_from_any("c3", &any("example.Other", vec![1])).unwrap_err();
        assert!(err.to_string().contains("container c3"));
        assert!(err.to_string().contains("example.Other"));
    }

    #[test]
    fn garbage_is_invalid() {
        let err = config_path_from_any("c4", &any("runtimeoptions.v1.Options", vec![0x12, 0x09]))
            .unwrap_err();
        assert!(matches!(err, ShimError::InvalidArgument { .. }));
    }

    #[test]
    fn containerd_2_3s_bootstrap_gives_the_config_path_and_socket_dir() {
        use nvidia_shim_proto::{BootstrapParams, Extension, ProtoAny};
        use prost::Message;
        let params = BootstrapParams {
            instance_id: "c".into(),
            namespace: "k8s.io".into(),
            extensions: vec![Extension {
                value: Some(ProtoAny {
                    type_url: "runtimeoptions.v1.Options".into(),
                    value: prost_encode("/etc/shim.toml"),
                }),
            }],
            socket_dir: Some("/run/containerd/s".into()),
            ..Default::default()
        };
        let got = start_input("c", "k8s.io", &params.encode_to_vec()).unwrap();
        assert_eq!(got.config_path, Some(PathBuf::from("/etc/shim.toml")));
        assert_eq!(got.socket_dir, Some(PathBuf::from("/run/containerd/s")));
        // The option type containerd 2.3 refused before: "nv1" was the id read as a type.
        let err = config_path_from_any("c", &any("nv1", vec![])).unwrap_err();
        assert!(err.to_string().contains("nv1"));
    }

    #[test]
    fn the_v1_runc_create_options_give_the_shim_cgroup() {
        let value = nvidia_shim_proto::RuncCreateOptions {
            shim_cgroup: "/shims/nv".into(),
            io_uid: 1000,
            ..Default::default()
        }
        .encode_to_vec();
        let o = create_options("c", &any("containerd.linux.runc.CreateOptions", value)).unwrap();
        assert_eq!(o.shim_cgroup.as_deref(), Some("/shims/nv"));
        assert_eq!(o.config_path, None);
        let err = create_options("c", &any("example.Other", vec![])).unwrap_err();
        assert!(err.to_string().contains("\"example.Other\""), "{err}");
    }
}
