//! `NVIDIA_DRIVER_CAPABILITIES`: which groups of driver files a container gets.

use std::collections::BTreeSet;
use std::fmt;

/// One driver capability.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Capability {
    /// CUDA and OpenCL.
    Compute,
    /// 32-bit libraries as well.
    Compat32,
    /// OpenGL and Vulkan.
    Graphics,
    /// `nvidia-smi` and NVML.
    Utility,
    /// The video codec SDK.
    Video,
    /// X11 display.
    Display,
    /// NGX (DLSS).
    Ngx,
}

impl Capability {
    /// Every capability, in the toolkit's order.
    pub const ALL: [Capability; 7] = [
        Self::Compute,
        Self::Compat32,
        Self::Graphics,
        Self::Utility,
        Self::Video,
        Self::Display,
        Self::Ngx,
    ];

    /// The name used in `NVIDIA_DRIVER_CAPABILITIES`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Compute => "compute",
            Self::Compat32 => "compat32",
            Self::Graphics => "graphics",
            Self::Utility => "utility",
            Self::Video => "video",
            Self::Display => "display",
            Self::Ngx => "ngx",
        }
    }

    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A set of capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Capabilities(BTreeSet<Capability>);

/// A capability name the toolkit does not know (`none` included: it fails there too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported driver capability {} in NVIDIA_DRIVER_CAPABILITIES (known: compute, compat32, graphics, utility, video, display, ngx, all)", crate::quote::quoted(.value))]
pub struct UnknownCapability {
    /// The offending name.
    pub value: String,
}

impl Capabilities {
    /// The default when the variable is unset or empty: `utility,compute`.
    pub fn default_set() -> Self {
        Self(
            [Capability::Utility, Capability::Compute]
                .into_iter()
                .collect(),
        )
    }

    /// Every capability.
    pub fn all() -> Self {
        Self(Capability::ALL.into_iter().collect())
    }

    /// Parses the variable: unset or empty gives `default` (all, for a legacy image); `all`
    /// anywhere gives all; unknown names are errors.
    pub fn parse(
        value: Option<&str>,
        default: &Capabilities,
        legacy_image: bool,
    ) -> Result<Self, UnknownCapability> {
        let value = value.map(str::trim).unwrap_or("");
        if value.is_empty() {
            return Ok(if legacy_image {
                Self::all()
            } else {
                default.clone()
            });
        }
        let mut set = BTreeSet::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "all" {
                return Ok(Self::all());
            }
            let cap = Capability::from_name(item).ok_or_else(|| UnknownCapability {
                value: item.to_owned(),
            })?;
            set.insert(cap);
        }
        Ok(Self(set))
    }

    /// Whether `cap` is in the set.
    pub fn has(&self, cap: Capability) -> bool {
        self.0.contains(&cap)
    }

    /// Whether compute libraries are needed: `compute`, or `video` (libnvidia-container
    /// pulls compute libraries in with video).
    pub fn needs_compute(&self) -> bool {
        self.has(Capability::Compute) || self.has(Capability::Video)
    }

    /// Whether graphics libraries are needed: `graphics` or `display`.
    pub fn needs_graphics(&self) -> bool {
        self.has(Capability::Graphics) || self.has(Capability::Display)
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|c| c.name()).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Option<&str>) -> Result<Capabilities, UnknownCapability> {
        Capabilities::parse(v, &Capabilities::default_set(), false)
    }

    #[test]
    fn default_is_utility_compute() {
        assert_eq!(parse(None).unwrap().to_string(), "compute,utility");
        assert_eq!(parse(Some("")).unwrap().to_string(), "compute,utility");
        assert_eq!(parse(Some("  ")).unwrap().to_string(), "compute,utility");
    }

    #[test]
    fn legacy_image_gets_all_when_unset() {
        let c = Capabilities::parse(None, &Capabilities::default_set(), true).unwrap();
        assert_eq!(c, Capabilities::all());
        let c = Capabilities::parse(Some("utility"), &Capabilities::default_set(), true).unwrap();
        assert_eq!(c.to_string(), "utility");
    }

    #[test]
    fn all_and_lists() {
        assert_eq!(parse(Some("all")).unwrap(), Capabilities::all());
        assert_eq!(parse(Some("utility,all")).unwrap(), Capabilities::all());
        let c = parse(Some("video, display")).unwrap();
        assert!(c.needs_compute() && c.needs_graphics() && !c.has(Capability::Utility));
    }

    #[test]
    fn unknown_names_are_errors() {
        for bad in ["none", "cuda", "Compute", "utility,gpu"] {
            let err = parse(Some(bad)).unwrap_err();
            assert!(bad.contains(&err.value), "{bad}: {err}");
            assert!(err.to_string().contains("NVIDIA_DRIVER_CAPABILITIES"));
        }
    }
}
