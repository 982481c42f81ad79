//! `NVIDIA_VISIBLE_DEVICES` values and device identifiers, with the toolkit's rules
//! (`cuda_image.go` `devicesFromEnvvars`, `devices.go` `NewVisibleDevices`, libnvidia-container
//! `select_devices`).

use std::fmt;

/// What a container asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelection {
    /// Nothing: the container is left as plain runc would run it (unset, empty or `void`).
    Void,
    /// Driver files and control nodes, but no GPU (`none`).
    NoGpu,
    /// Every GPU and every MIG device (`all`).
    All,
    /// The listed devices, in order, duplicates removed.
    List(Vec<DeviceId>),
}

/// One requested device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceId {
    /// A GPU by NVML index.
    Index(u32),
    /// A MIG device by `<gpu index>:<mig index>`.
    MigIndex(u32, u32),
    /// A GPU by UUID (`GPU-...`).
    GpuUuid(String),
    /// A MIG device by UUID (`MIG-...`).
    MigUuid(String),
    /// A GPU by PCI bus id, normalised to `dddddddd:bb:dd.0` (lower case).
    BusId(String),
    /// A fully qualified CDI device name `vendor/class=name`.
    Cdi {
        /// `vendor/class`.
        kind: String,
        /// The device name.
        name: String,
    },
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "{i}"),
            Self::MigIndex(g, m) => write!(f, "{g}:{m}"),
            Self::GpuUuid(u) | Self::MigUuid(u) | Self::BusId(u) => f.write_str(u),
            Self::Cdi { kind, name } => write!(f, "{kind}={name}"),
        }
    }
}

/// A device identifier that matches none of the accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device identifier {}: expected an index, i:j, GPU-/MIG- UUID, PCI bus id or vendor/class=name", crate::quote::quoted(.value))]
pub struct InvalidDeviceId {
    /// The offending identifier.
    pub value: String,
}

/// The CDI kind the toolkit's jit-cdi mode uses; `runtime.nvidia.com/gpu=X` means `X`.
const RUNTIME_KIND: &str = "runtime.nvidia.com/gpu";

impl DeviceId {
    /// Parses one identifier.
    pub fn parse(raw: &str) -> Result<Self, InvalidDeviceId> {
        let invalid = || InvalidDeviceId {
            value: raw.to_owned(),
        };
        let s = raw.trim();
        if let Some((kind, name)) = s.split_once('=') {
            if kind == RUNTIME_KIND {
                return Self::parse(name).map_err(|_| invalid());
            }
            if is_cdi_kind(kind) && !name.is_empty() {
                return Ok(Self::Cdi {
                    kind: kind.to_owned(),
                    name: name.to_owned(),
                });
            }
            return Err(invalid());
        }
        if let Ok(i) = s.parse::<u32>() {
            return Ok(Self::Index(i));
        }
        if let Some((g, m)) = s.split_once(':') {
            if let (Ok(g), Ok(m)) = (g.parse::<u32>(), m.parse::<u32>()) {
                return Ok(Self::MigIndex(g, m));
            }
        }
        let upper = s.to_ascii_uppercase();
        if upper.starts_with("GPU-") && s.len() > 4 {
            return Ok(Self::GpuUuid(format!(
                "GPU-{}",
                &s[4..].to_ascii_lowercase()
            )));
        }
        if upper.starts_with("MIG-") && s.len() > 4 {
            return Ok(Self::MigUuid(format!("MIG-{}", &s[4..])));
        }
        parse_bus_id(s).map(Self::BusId).ok_or_else(invalid)
    }
}

/// `vendor/class` with the CDI name rules (vendor a domain-like name, class alphanumeric).
fn is_cdi_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else {
        return false;
    };
    let ok = |s: &str, extra: &[char]| {
        !s.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    ok(vendor, &['.', '-', '_']) && ok(class, &['-', '_'])
}

/// Normalises PCI bus ids such as `0:3b:0.0`, `00000000:3B:00.0` or `3b:00.0` to
/// `%08x:%02x:%02x.0`, as libnvidia-container does.
fn parse_bus_id(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (*d, *b, *df),
        [b, df] => ("0", *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |v: &str, max: u32| u32::from_str_radix(v, 16).ok().filter(|n| *n <= max);
    let (domain, bus, dev, func) = (
        hex(domain, u32::MAX)?,
        hex(bus, 0xff)?,
        hex(dev, 0x1f)?,
        hex(func, 7)?,
    );
    if func != 0 {
        return None;
    }
    Some(format!("{domain:08x}:{bus:02x}:{dev:02x}.0"))
}

impl DeviceSelection {
    /// Parses an `NVIDIA_VISIBLE_DEVICES` value. `None` (unset) is `Void`, or `All` for a
    /// legacy image; empty and any `void` item are `Void`; then the first of `all` / `none` in
    /// list order decides (`0,all` is all, `none,all` is none); else the list.
    pub fn parse(value: Option<&str>, legacy_image: bool) -> Result<Self, InvalidDeviceId> {
        let Some(value) = value else {
            return Ok(if legacy_image { Self::All } else { Self::Void });
        };
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() || items.iter().any(|i| i.eq_ignore_ascii_case("void")) {
            return Ok(Self::Void);
        }
        for item in &items {
            if item.eq_ignore_ascii_case("all") {
                return Ok(Self::All);
            }
            if item.eq_ignore_ascii_case("none") {
                return Ok(Self::NoGpu);
            }
        }
        let mut ids: Vec<DeviceId> = Vec::with_capacity(items.len());
        for item in items {
            let id = DeviceId::parse(item)?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        Ok(Self::List(ids))
    }

    /// Whether anything is to be injected.
    pub fn is_void(&self) -> bool {
        matches!(self, Self::Void)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: Option<&str>) -> DeviceSelection {
        DeviceSelection::parse(v, false).unwrap()
    }

    #[test]
    fn special_values() {
        assert_eq!(sel(None), DeviceSelection::Void);
        assert_eq!(sel(Some("")), DeviceSelection::Void);
        assert_eq!(sel(Some(" , ")), DeviceSelection::Void);
        assert_eq!(sel(Some("void")), DeviceSelection::Void);
        assert_eq!(sel(Some("0,void,all")), DeviceSelection::Void);
        assert_eq!(sel(Some("all")), DeviceSelection::All);
        assert_eq!(sel(Some("ALL")), DeviceSelection::All);
        assert_eq!(sel(Some("none")), DeviceSelection::NoGpu);
        assert_eq!(sel(Some("0,all")), DeviceSelection::All);
        assert_eq!(sel(Some("none,all")), DeviceSelection::NoGpu);
        assert_eq!(sel(Some("all,none")), DeviceSelection::All);
    }

    #[test]
    fn legacy_image_defaults_to_all_only_when_unset() {
        assert_eq!(
            DeviceSelection::parse(None, true).unwrap(),
            DeviceSelection::All
        );
        assert_eq!(
            DeviceSelection::parse(Some(""), true).unwrap(),
            DeviceSelection::Void
        );
        assert_eq!(
            DeviceSelection::parse(Some("void"), true).unwrap(),
            DeviceSelection::Void
        );
    }

    #[test]
    fn id_forms() {
        use DeviceId::*;
        let uuid = "GPU-4b5c6d7e-0000-1111-2222-333344445555";
        let list = sel(Some(&format!(
            " 1, 0:2 ,{uuid}, MIG-abc, 0:3b:0.0, nvidia.com/gpu=all ,runtime.nvidia.com/gpu=3"
        )));
        assert_eq!(
            list,
            DeviceSelection::List(vec![
                Index(1),
                MigIndex(0, 2),
                GpuUuid(uuid.to_ascii_lowercase().replacen("gpu-", "GPU-", 1)),
                MigUuid("MIG-abc".into()),
                BusId("00000000:3b:00.0".into()),
                Cdi {
                    kind: "nvidia.com/gpu".into(),
                    name: "all".into()
                },
                Index(3),
            ])
        );
    }

    #[test]
    fn duplicates_are_dropped_keeping_order() {
        assert_eq!(
            sel(Some("1,0,1")),
            DeviceSelection::List(vec![DeviceId::Index(1), DeviceId::Index(0)])
        );
    }

    #[test]
    fn bus_id_forms_normalise() {
        for s in ["0:3b:0.0", "00000000:3B:00.0", "3b:00.0", "0000:3b:00.0"] {
            assert_eq!(
                DeviceId::parse(s).unwrap(),
                DeviceId::BusId("00000000:3b:00.0".into()),
                "{s}"
            );
        }
        assert!(
            DeviceId::parse("0:3b:0.1").is_err(),
            "functions other than 0 are not GPUs"
        );
    }

    #[test]
    fn unknown_ids_are_errors_naming_the_value() {
        for bad in [
            "gpu0",
            "GPU-",
            "-1",
            "1:x",
            "vendor=name",
            "nvidia.com/gpu=",
            "runtime.nvidia.com/gpu=zz",
        ] {
            let err = DeviceSelection::parse(Some(&format!("0,{bad}")), false).unwrap_err();
            assert_eq!(err.value, bad, "{bad}");
            assert!(err.to_string().contains(bad));
        }
    }

    #[test]
    fn display_round_trips_through_parse() {
        for s in [
            "3",
            "1:2",
            "GPU-abc",
            "MIG-x",
            "00000000:3b:00.0",
            "nvidia.com/gpu=0",
        ] {
            assert_eq!(DeviceId::parse(s).unwrap().to_string(), s);
        }
    }
}
