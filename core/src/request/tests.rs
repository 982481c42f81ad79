use super::*;
use oci_spec::runtime::{LinuxCapabilitiesBuilder, MountBuilder, ProcessBuilder, SpecBuilder};
use std::collections::HashMap;

#[derive(Default)]
struct Case<'a> {
    env: &'a [&'a str],
    annotations: &'a [(&'a str, &'a str)],
    mounts: &'a [(&'a str, &'a str)],
    privileged: bool,
}

fn spec(case: &Case) -> Spec {
    let mut caps = vec![OciCapability::Chown];
    if case.privileged {
        caps.push(OciCapability::SysAdmin);
    }
    let process = ProcessBuilder::default()
        .env(case.env.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.into_iter().collect::<std::collections::HashSet<_>>())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mounts = case
        .mounts
        .iter()
        .map(|(src, dst)| {
            MountBuilder::default()
                .source(*src)
                .destination(*dst)
                .typ("bind")
                .build()
                .unwrap()
        })
        .collect::<Vec<_>>();
    let annotations: HashMap<String, String> = case
        .annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    SpecBuilder::default()
        .process(process)
        .mounts(mounts)
        .annotations(annotations)
        .build()
        .unwrap()
}

fn req(case: Case) -> GpuRequest {
    GpuRequest::from_spec(&spec(&case), &RequestPolicy::default()).unwrap()
}

/// The devices a list selection names, as written.
fn listed(devices: &DeviceSelection) -> Vec<String> {
    match devices {
        DeviceSelection::List(ids) => ids.iter().map(ToString::to_string).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

/// Why `case`'s request is refused under the default policy.
fn req_err(case: Case) -> RequestError {
    GpuRequest::from_spec(&spec(&case), &RequestPolicy::default()).unwrap_err()
}

#[test]
fn no_variables_means_nothing() {
    let r = req(Case::default());
    assert_eq!(r.devices, DeviceSelection::Void);
    assert_eq!(r.source, RequestSource::Nothing);
    assert_eq!(r.capabilities, Capabilities::default_set());
}

#[test]
fn env_request_with_later_entries_winning() {
    let r = req(Case {
        env: &["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=1,2"],
        ..Default::default()
    });
    assert_eq!(
        r.devices,
        DeviceSelection::List(vec![DeviceId::Index(1), DeviceId::Index(2)])
    );
    assert_eq!(r.source, RequestSource::Env);
}

#[test]
fn legacy_image_gets_all_and_a_cuda_requirement() {
    let r = req(Case {
        env: &["CUDA_VERSION=11.8.0"],
        ..Default::default()
    });
    assert_eq!(r.devices, DeviceSelection::All);
    assert_eq!(r.capabilities, Capabilities::all());
    assert_eq!(
        r.requirements.get("CUDA_VERSION").map(String::as_str),
        Some("cuda>=11.8")
    );
    // Not legacy once NVIDIA_REQUIRE_CUDA is set.
    let r = req(Case {
        env: &["CUDA_VERSION=12.2.0", "NVIDIA_REQUIRE_CUDA=cuda>=12.2"],
        ..Default::default()
    });
    assert_eq!(r.devices, DeviceSelection::Void);
    assert_eq!(r.requirements.len(), 1);
}

#[test]
fn unprivileged_env_request_follows_the_policy() {
    let case = || Case {
        env: &["NVIDIA_VISIBLE_DEVICES=all"],
        ..Default::default()
    };
    assert_eq!(req(case()).devices, DeviceSelection::All);
    let strict = RequestPolicy {
        accept_envvar_when_unprivileged: false,
        ..Default::default()
    };
    let r = GpuRequest::from_spec(&spec(&case()), &strict).unwrap();
    assert_eq!(r.devices, DeviceSelection::Void);
    assert_eq!(r.env_ignored, ["NVIDIA_VISIBLE_DEVICES"]);
    let privileged = Case {
        privileged: true,
        ..case()
    };
    let r = GpuRequest::from_spec(&spec(&privileged), &strict).unwrap();
    assert_eq!(r.devices, DeviceSelection::All);
    assert!(r.privileged);
}

#[test]
fn annotations_win_over_env_and_must_be_qualified() {
    let r = req(Case {
        env: &["NVIDIA_VISIBLE_DEVICES=all"],
        annotations: &[
            ("cdi.k8s.io/b_plugin", "nvidia.com/gpu=1"),
            (
                "cdi.k8s.io/a_plugin",
                "k8s.device-plugin.nvidia.com/gpu=GPU-x,nvidia.com/gpu=0",
            ),
            ("other/key", "nvidia.com/gpu=7"),
        ],
        ..Default::default()
    });
    assert_eq!(r.source, RequestSource::Annotations);
    let names = listed(&r.devices);
    assert_eq!(
        names,
        [
            "k8s.device-plugin.nvidia.com/gpu=GPU-x",
            "nvidia.com/gpu=0",
            "nvidia.com/gpu=1"
        ]
    );

    let err = req_err(Case {
        annotations: &[("cdi.k8s.io/x", "0")],
        ..Default::default()
    });
    assert!(err.to_string().contains("cdi.k8s.io/x"), "{err}");
}

#[test]
fn volume_mounts_are_opt_in() {
    let case = || Case {
        env: &["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"],
        mounts: &[
            ("/dev/null", "/var/run/nvidia-container-devices/GPU-abc"),
            ("/dev/null", "/var/run/nvidia-container-devices/0"),
            (
                "/dev/null",
                "/var/run/nvidia-container-devices/cdi/nvidia.com/gpu/1",
            ),
            (
                "/dev/null",
                "/var/run/nvidia-container-devices/cdi/nvidia.com/gpu=2",
            ),
            ("/dev/null", "/var/run/nvidia-container-devices/imex/3"),
            ("/tmp/file", "/var/run/nvidia-container-devices/5"),
        ],
        ..Default::default()
    };
    // Off by default: the sentinel env value is not a device either.
    let r = req(case());
    assert_eq!(r.devices, DeviceSelection::Void);
    let on = RequestPolicy {
        accept_volume_mounts: true,
        ..Default::default()
    };
    let r = GpuRequest::from_spec(&spec(&case()), &on).unwrap();
    assert_eq!(r.source, RequestSource::VolumeMounts);
    let names = listed(&r.devices);
    assert_eq!(
        names,
        ["GPU-abc", "0", "nvidia.com/gpu=1", "nvidia.com/gpu=2"]
    );
}

#[test]
fn requirements_and_disable_switch() {
    let r = req(Case {
        env: &[
            "NVIDIA_REQUIRE_CUDA=cuda>=12.0 brand=tesla,driver>=535",
            "NVIDIA_REQUIRE_ARCH=arch>=8.0",
            "NVIDIA_REQUIRE_JETPACK=csv-mounts=all",
            "NVIDIA_DISABLE_REQUIRE=true",
        ],
        ..Default::default()
    });
    assert_eq!(
        r.requirements.keys().collect::<Vec<_>>(),
        ["NVIDIA_REQUIRE_ARCH", "NVIDIA_REQUIRE_CUDA"]
    );
    assert!(r.disable_require);
    for (v, want) in [
        ("1", true),
        ("T", true),
        ("yes", false),
        ("0", false),
        ("", false),
    ] {
        assert_eq!(go_true(v), want, "{v}");
    }
}

#[test]
fn invalid_values_are_refused_naming_them() {
    for (env, named) in [
        (&["CUDA_VERSION=twelve"][..], "twelve"),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "NVIDIA_DRIVER_CAPABILITIES=compute,cuda",
            ],
            "cuda",
        ),
        (&["NVIDIA_VISIBLE_DEVICES=0,gpu7"], "gpu7"),
    ] {
        let err = req_err(Case {
            env,
            ..Default::default()
        });
        assert!(err.to_string().contains(named), "{env:?}: {err}");
        if named == "cuda" {
            assert!(matches!(err, RequestError::Capability { .. }), "{err}");
        }
    }
}

#[test]
fn clean_resolves_dot_dot() {
    assert_eq!(clean("/dev/../dev/./null"), PathBuf::from("/dev/null"));
    assert_eq!(
        clean("/var/run/nvidia-container-devices/x/../0"),
        PathBuf::from("/var/run/nvidia-container-devices/0")
    );
}

#[test]
fn imex_channels_from_env_and_volume_mounts() {
    let r = req(Case {
        env: &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_IMEX_CHANNELS=0,channel3,3",
        ],
        ..Default::default()
    });
    assert_eq!(r.imex_channels, [0, 3]);
    // `all` is ignored, as the toolkit ignores it.
    let r = req(Case {
        env: &["NVIDIA_IMEX_CHANNELS=all"],
        ..Default::default()
    });
    assert!(r.imex_channels.is_empty());
    for bad in ["1048576", "chan1", "-1", "+2"] {
        let env = format!("NVIDIA_IMEX_CHANNELS={bad}");
        let err = req_err(Case {
            env: &[env.as_str()],
            ..Default::default()
        })
        .to_string();
        assert!(err.contains(bad) && err.contains("IMEX"), "{err}");
    }
    // Volume mounts win when accepted; the env is then not read.
    let policy = RequestPolicy {
        accept_volume_mounts: true,
        ..RequestPolicy::default()
    };
    let s = spec(&Case {
        env: &["NVIDIA_IMEX_CHANNELS=9"],
        mounts: &[
            ("/dev/null", "/var/run/nvidia-container-devices/imex/5"),
            ("/dev/null", "/var/run/nvidia-container-devices/0"),
        ],
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&s, &policy).unwrap();
    assert_eq!(r.imex_channels, [5]);
    assert_eq!(r.devices, DeviceSelection::List(vec![DeviceId::Index(0)]));
    // Unprivileged under the strict profile: the env cannot ask.
    let strict = RequestPolicy {
        accept_envvar_when_unprivileged: false,
        ..RequestPolicy::default()
    };
    let s = spec(&Case {
        env: &["NVIDIA_IMEX_CHANNELS=1"],
        ..Default::default()
    });
    assert!(GpuRequest::from_spec(&s, &strict)
        .unwrap()
        .imex_channels
        .is_empty());
}

#[test]
fn gated_features_need_exactly_enabled() {
    let r = req(Case {
        env: &[
            "NVIDIA_VISIBLE_DEVICES=all",
            "NVIDIA_GDS=enabled",
            "NVIDIA_MOFED=true",
            "NVIDIA_NVSWITCH=enabled",
            "NVIDIA_GDRCOPY=ENABLED",
        ],
        ..Default::default()
    });
    assert_eq!(r.gated, [GatedFeature::Gds, GatedFeature::NvSwitch]);
}

#[test]
fn mig_config_and_monitor_need_privilege() {
    for var in ["NVIDIA_MIG_CONFIG_DEVICES", "NVIDIA_MIG_MONITOR_DEVICES"] {
        let env = [format!("{var}=all")];
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let err = req_err(Case {
            env: &env,
            ..Case::default()
        });
        assert_eq!(
            err.to_string(),
            format!("cannot set {var} in a non-privileged container (it needs CAP_SYS_ADMIN)")
        );
        let ok = GpuRequest::from_spec(
            &spec(&Case {
                env: &env,
                privileged: true,
                ..Case::default()
            }),
            &RequestPolicy::default(),
        )
        .unwrap();
        let sel = if var.contains("CONFIG") {
            ok.mig_config
        } else {
            ok.mig_monitor
        };
        assert_eq!(sel, DeviceSelection::All);
    }
    // Unset or empty: nothing, privileged or not.
    let r = GpuRequest::from_spec(
        &spec(&Case {
            env: &["NVIDIA_MIG_CONFIG_DEVICES="],
            ..Case::default()
        }),
        &RequestPolicy::default(),
    )
    .unwrap();
    assert!(r.mig_config.is_void() && r.mig_monitor.is_void());
}

/// Every variable that asks for something, set at once.
/// Every environment request of a container but `CUDA_VERSION` (a legacy image's), in the
/// order the request reads them.
const REQUEST_VARIABLES: [&str; 8] = [
    "NVIDIA_VISIBLE_DEVICES=all",
    "NVIDIA_IMEX_CHANNELS=1,2",
    "NVIDIA_MIG_CONFIG_DEVICES=all",
    "NVIDIA_MIG_MONITOR_DEVICES=0",
    "NVIDIA_GDS=enabled",
    "NVIDIA_MOFED=enabled",
    "NVIDIA_NVSWITCH=enabled",
    "NVIDIA_GDRCOPY=enabled",
];

/// [`REQUEST_VARIABLES`] with what shapes a granted request: its capabilities and requirements.
fn every_env_request() -> Vec<&'static str> {
    let shaping = [
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video",
        "NVIDIA_REQUIRE_CUDA=cuda>=12.0",
    ];
    [REQUEST_VARIABLES.as_slice(), &shaping].concat()
}

#[test]
fn every_env_request_of_an_unprivileged_container_follows_the_isolation_profile() {
    let strict = RequestPolicy {
        accept_envvar_when_unprivileged: false,
        ..Default::default()
    };
    // The device plugin's allocation, as an annotation, with the image's own variables.
    let ann = [(
        "cdi.k8s.io/nvidia-device-plugin_1",
        "k8s.device-plugin.nvidia.com/gpu=1",
    )];
    let unprivileged = spec(&Case {
        env: &every_env_request(),
        annotations: &ann,
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&unprivileged, &strict).unwrap();
    assert_eq!(r.source, RequestSource::Annotations);
    assert!(r.gated.is_empty(), "{:?}", r.gated);
    assert!(r.imex_channels.is_empty());
    assert!(r.mig_config.is_void() && r.mig_monitor.is_void());
    // Every request variable set, by name, in order.
    let names = REQUEST_VARIABLES.map(|v| v.split_once('=').map_or(v, |(name, _)| name));
    assert_eq!(r.env_ignored, names);
    // What a granted request brings, and the image's own requirements, are still read.
    assert!(r.capabilities.has(Capability::Video));
    assert!(r.requirements.contains_key("NVIDIA_REQUIRE_CUDA"));
    // MOFED alone (the case found): ignored, and said.
    let mofed = spec(&Case {
        env: &["NVIDIA_MOFED=enabled"],
        annotations: &ann,
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&mofed, &strict).unwrap();
    assert!(r.gated.is_empty());
    assert_eq!(r.env_ignored, ["NVIDIA_MOFED"]);
    // A privileged container's variables all count, under either policy.
    let privileged = spec(&Case {
        env: &every_env_request(),
        annotations: &ann,
        privileged: true,
        ..Default::default()
    });
    for policy in [&strict, &RequestPolicy::default()] {
        let r = GpuRequest::from_spec(&privileged, policy).unwrap();
        assert_eq!(
            r.gated,
            [
                GatedFeature::Gds,
                GatedFeature::Mofed,
                GatedFeature::NvSwitch,
                GatedFeature::GdrCopy
            ]
        );
        assert_eq!(r.imex_channels, [1, 2]);
        assert_eq!(r.mig_config, DeviceSelection::All);
        assert_eq!(
            r.mig_monitor,
            DeviceSelection::List(vec![DeviceId::Index(0)])
        );
        assert!(r.env_ignored.is_empty());
    }
    // The default policy keeps the toolkit's rules for an unprivileged container: gated
    // features and IMEX channels count, MIG administration is refused.
    let default_gated = spec(&Case {
        env: &["NVIDIA_MOFED=enabled", "NVIDIA_IMEX_CHANNELS=3"],
        annotations: &ann,
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&default_gated, &RequestPolicy::default()).unwrap();
    assert_eq!(r.gated, [GatedFeature::Mofed]);
    assert_eq!(r.imex_channels, [3]);
    assert!(GpuRequest::from_spec(&unprivileged, &RequestPolicy::default()).is_err());
}

#[test]
fn a_legacy_image_and_the_volume_mount_sentinel_under_the_isolation_profile() {
    let strict = RequestPolicy {
        accept_envvar_when_unprivileged: false,
        accept_volume_mounts: true,
        ..Default::default()
    };
    // A legacy CUDA image would get every GPU from CUDA_VERSION alone: not here.
    let legacy = spec(&Case {
        env: &["CUDA_VERSION=12.2.0"],
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&legacy, &strict).unwrap();
    assert_eq!(r.devices, DeviceSelection::Void);
    assert_eq!(r.env_ignored, ["CUDA_VERSION"]);
    // The device plugin's volume-mount strategy: its sentinel value is not an ignored request.
    let mounts = spec(&Case {
        env: &["NVIDIA_VISIBLE_DEVICES=/var/run/nvidia-container-devices"],
        mounts: &[("/dev/null", "/var/run/nvidia-container-devices/0")],
        ..Default::default()
    });
    let r = GpuRequest::from_spec(&mounts, &strict).unwrap();
    assert_eq!(r.devices, DeviceSelection::List(vec![DeviceId::Index(0)]));
    assert!(r.env_ignored.is_empty());
}
