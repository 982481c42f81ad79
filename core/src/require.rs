//! `NVIDIA_REQUIRE_*` constraints: libnvidia-container's DSL, evaluated per selected GPU, and
//! enforced (the toolkit's default jit-cdi mode no longer checks them).
//!
//! In one variable, space-separated terms are ORed and comma-separated factors of a term are
//! ANDed; separate variables are ANDed. A factor is `<property><op><value>` with properties
//! `cuda`, `driver`, `arch` (compute capability) and `brand`, and operators `= != < <= > >=`
//! (`brand` takes only `=` and `!=`, case-insensitively). Versions compare field by field,
//! trailing `.0` fields ignored.
//!
//! Where libnvidia-container lets a value it cannot tell satisfy its factor, this shim refuses:
//! a requirement that only a fact it could not learn (a GPU's architecture or brand without
//! NVML, the CUDA version of a driver branch it does not know) could decide fails with that
//! fact and why it is unknown, unless `NVIDIA_DISABLE_REQUIRE` turns requirements off. With no
//! GPU selected, `arch` and `brand` hold, as in libnvidia-container.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// A dotted numeric version (`12.4`, `580.159.04`), shown as it was written (`04` stays
/// `04`) and compared by value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    parts: Vec<u64>,
    text: String,
}

impl Version {
    /// Parses digits and dots only; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let parts = s
            .split('.')
            .map(|f| {
                if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                    None
                } else {
                    f.parse::<u64>().ok()
                }
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            parts,
            text: s.to_owned(),
        })
    }

    fn from_parts(parts: Vec<u64>) -> Self {
        let text = parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".");
        Self { parts, text }
    }

    /// The first component (`580` of `580.159.04`).
    pub fn major(&self) -> u64 {
        self.parts.first().copied().unwrap_or(0)
    }

    /// Compares component by component, a missing component counting as 0 (`12` = `12.0`).
    pub fn cmp_to(&self, other: &Self) -> Ordering {
        let n = self.parts.len().max(other.parts.len());
        (0..n)
            .map(|i| {
                let a = self.parts.get(i).copied().unwrap_or(0);
                let b = other.parts.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a version")))
    }
}

/// NVML's brand enum (values 0 to 16), as the lower-case tokens CUDA images use.
pub const NVML_BRANDS: [&str; 17] = [
    "unknown",
    "quadro",
    "tesla",
    "nvs",
    "grid",
    "geforce",
    "titan",
    "vapps",
    "vpc",
    "vcs",
    "vws",
    "cloudgaming",
    "quadrortx",
    "nvidiartx",
    "nvidia",
    "geforcertx",
    "titanrtx",
];

/// The brand token of NVML brand enum `value` (`unknown` past the known range).
pub fn brand_token(value: u32) -> &'static str {
    usize::try_from(value)
        .ok()
        .and_then(|i| NVML_BRANDS.get(i))
        .copied()
        .unwrap_or("unknown")
}

/// Newest CUDA version each driver branch supports (NVIDIA's CUDA compatibility table), for
/// hosts read without NVML: `(branch, major, minor)`, newest first.
const CUDA_BY_BRANCH: &[(u64, u64, u64)] = &[
    (580, 13, 0),
    (575, 12, 9),
    (570, 12, 8),
    (565, 12, 7),
    (560, 12, 6),
    (555, 12, 5),
    (550, 12, 4),
    (545, 12, 3),
    (535, 12, 2),
    (530, 12, 1),
    (525, 12, 0),
    (520, 11, 8),
    (515, 11, 7),
    (510, 11, 6),
    (495, 11, 5),
    (470, 11, 4),
    (465, 11, 3),
    (460, 11, 2),
    (455, 11, 1),
    (450, 11, 0),
];

/// The CUDA driver version of a driver version, from its branch (`580.x` gives `13.0`).
/// `None` for branches newer than the table knows (the value is then unknown, and `cuda`
/// factors hold, as they do when NVML cannot tell) or older than 450.
pub fn cuda_for_driver(driver: &Version) -> Option<Version> {
    let major = *driver.parts.first()?;
    if major > CUDA_BY_BRANCH[0].0 + 9 {
        return None;
    }
    CUDA_BY_BRANCH
        .iter()
        .find(|(branch, ..)| *branch <= major)
        .map(|(_, ma, mi)| Version::from_parts(vec![*ma, *mi]))
}

/// What the host's driver reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// CUDA driver version, `major.minor`.
    pub cuda: Option<Version>,
    /// Driver version.
    pub driver: Option<Version>,
    /// Why facts only NVML knows (a GPU's arch and brand, the CUDA version) may be missing,
    /// e.g. `NVML unavailable: ...`; said when a requirement needs one.
    pub unknown_because: Option<String>,
}

/// What one selected GPU reports (a MIG device reports its parent's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// Compute capability, `major.minor`.
    pub arch: Option<Version>,
    /// Brand token (see [`NVML_BRANDS`]).
    pub brand: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Property {
    Cuda,
    Driver,
    Arch,
    Brand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn holds(self, o: Ordering) -> bool {
        match self {
            Self::Eq => o == Ordering::Equal,
            Self::Ne => o != Ordering::Equal,
            Self::Lt => o == Ordering::Less,
            Self::Le => o != Ordering::Greater,
            Self::Gt => o == Ordering::Greater,
            Self::Ge => o != Ordering::Less,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Version(Version),
    Brand(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Factor {
    text: String,
    property: Property,
    op: Op,
    value: Value,
}

impl Property {
    /// What the property is, for messages.
    fn fact(self) -> &'static str {
        match self {
            Self::Cuda => "CUDA version",
            Self::Driver => "driver version",
            Self::Arch => "GPU architecture",
            Self::Brand => "GPU brand",
        }
    }
}

/// Kleene's three values: a factor on a fact the host could not tell is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Truth<'a> {
    True,
    False,
    Unknown(&'a Factor),
}

/// One parsed `NVIDIA_REQUIRE_*` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    text: String,
    terms: Vec<(String, Vec<Factor>)>,
}

/// Why requirements fail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequireError {
    /// The expression is not in the DSL.
    #[error(
        "invalid expression in {}={}: {}",
        crate::quote::bounded(.variable, crate::quote::MAX_QUOTED),
        crate::quote::quoted(.text),
        crate::quote::bounded(.reason, crate::quote::MAX_QUOTED)
    )]
    Invalid {
        /// The variable.
        variable: String,
        /// Its value.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// No term of the expression holds on the host.
    #[error(
        "unsatisfied condition: {} (from {}; host has {host}){hint}",
        crate::quote::bounded(.term, crate::quote::MAX_QUOTED),
        crate::quote::bounded(.variable, crate::quote::MAX_QUOTED)
    )]
    Unsatisfied {
        /// The variable.
        variable: String,
        /// The first OR-term, as libnvidia-container reports it.
        term: String,
        /// The host's values, e.g. `cuda=12.4, driver=550.54.15, arch=9.0, brand=tesla`.
        host: String,
        /// The toolkit's advice for a `cuda>=` term, or empty.
        hint: String,
    },
    /// The expression holds or not depending on a fact the shim could not learn.
    #[error(
        "cannot check {} (from {}): {fact} unknown, {reason}; set NVIDIA_DISABLE_REQUIRE=true to start without checking",
        crate::quote::bounded(.factor, crate::quote::MAX_QUOTED),
        crate::quote::bounded(.variable, crate::quote::MAX_QUOTED)
    )]
    Unknown {
        /// The variable.
        variable: String,
        /// The factor that decides, e.g. `arch>=9.0`.
        factor: String,
        /// What is unknown (`GPU architecture`).
        fact: &'static str,
        /// Why.
        reason: String,
    },
}

fn parse_factor(s: &str) -> Result<Factor, String> {
    let ops = [
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("=", Op::Eq),
        ("<", Op::Lt),
        (">", Op::Gt),
    ];
    let (pos, len, op) = ops
        .iter()
        .filter_map(|(t, op)| s.find(t).map(|p| (p, t.len(), *op)))
        .min_by_key(|(p, len, _)| (*p, usize::MAX - len))
        .ok_or_else(|| format!("{s:?} has no operator"))?;
    let (name, value) = (&s[..pos], &s[pos + len..]);
    let property = match name {
        "cuda" => Property::Cuda,
        "driver" => Property::Driver,
        "arch" => Property::Arch,
        "brand" => Property::Brand,
        other => return Err(format!("unknown property {other:?}")),
    };
    let value = if property == Property::Brand {
        if !matches!(op, Op::Eq | Op::Ne) {
            return Err(format!("{s:?}: brand takes only = and !="));
        }
        if value.is_empty() {
            return Err(format!("{s:?}: empty brand"));
        }
        Value::Brand(value.to_ascii_lowercase())
    } else {
        Value::Version(
            Version::parse(value).ok_or_else(|| format!("{s:?}: {value:?} is not a version"))?,
        )
    };
    Ok(Factor {
        text: s.to_owned(),
        property,
        op,
        value,
    })
}

impl Constraint {
    /// Parses the value of variable `variable`.
    pub fn parse(variable: &str, text: &str) -> Result<Self, RequireError> {
        let invalid = |reason: String| RequireError::Invalid {
            variable: variable.to_owned(),
            text: text.to_owned(),
            reason,
        };
        let mut terms = Vec::new();
        for term in text.split_whitespace() {
            let factors = term
                .split(',')
                .filter(|f| !f.is_empty())
                .map(parse_factor)
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            terms.push((term.to_owned(), factors));
        }
        if terms.is_empty() {
            return Err(invalid("empty expression".into()));
        }
        Ok(Self {
            text: text.to_owned(),
            terms,
        })
    }

    /// Whether some term holds for `host` and `device` (no device: `arch` and `brand` hold):
    /// true when a term holds, else unknown when a term could hold but for an unknown fact.
    fn eval(&self, host: &HostFacts, device: Option<&DeviceFacts>) -> Truth<'_> {
        let mut unknown = None;
        for (_, factors) in &self.terms {
            let mut term = Truth::True;
            for f in factors {
                match factor_holds(f, host, device) {
                    Truth::False => {
                        term = Truth::False;
                        break;
                    }
                    Truth::Unknown(u) if term == Truth::True => term = Truth::Unknown(u),
                    _ => {}
                }
            }
            match term {
                Truth::True => return Truth::True,
                Truth::Unknown(u) if unknown.is_none() => unknown = Some(u),
                _ => {}
            }
        }
        unknown.map_or(Truth::False, Truth::Unknown)
    }

    /// Whether some term holds for `host` and `device`; an unknown fact counts as not holding.
    pub fn holds(&self, host: &HostFacts, device: Option<&DeviceFacts>) -> bool {
        self.eval(host, device) == Truth::True
    }

    fn first_term(&self) -> &str {
        self.terms.first().map(|(t, _)| t.as_str()).unwrap_or("")
    }
}

fn factor_holds<'a>(f: &'a Factor, host: &HostFacts, device: Option<&DeviceFacts>) -> Truth<'a> {
    let have = match (f.property, device) {
        (Property::Cuda, _) => host.cuda.clone().map(Value::Version),
        (Property::Driver, _) => host.driver.clone().map(Value::Version),
        // No GPU selected (`none`): nothing to check, as in libnvidia-container.
        (Property::Arch | Property::Brand, None) => return Truth::True,
        (Property::Arch, Some(d)) => d.arch.clone().map(Value::Version),
        (Property::Brand, Some(d)) => d.brand.clone().map(Value::Brand),
    };
    let holds = match (have, &f.value) {
        (None, _) => return Truth::Unknown(f),
        (Some(Value::Version(h)), Value::Version(w)) => f.op.holds(h.cmp_to(w)),
        (Some(Value::Brand(h)), Value::Brand(w)) => f.op.holds(if h.eq_ignore_ascii_case(w) {
            Ordering::Equal
        } else {
            Ordering::Less
        }),
        _ => false,
    };
    if holds {
        Truth::True
    } else {
        Truth::False
    }
}

fn describe(host: &HostFacts, device: Option<&DeviceFacts>) -> String {
    let mut parts = Vec::new();
    let show = |v: &Option<Version>| v.as_ref().map_or("unknown".to_owned(), Version::to_string);
    parts.push(format!("cuda={}", show(&host.cuda)));
    parts.push(format!("driver={}", show(&host.driver)));
    if let Some(d) = device {
        parts.push(format!("arch={}", show(&d.arch)));
        parts.push(format!("brand={}", d.brand.as_deref().unwrap_or("unknown")));
    }
    parts.join(", ")
}

/// Checks every requirement (variable name to expression) against the host and each selected
/// device (an empty `devices` checks once with no device, as for `none`).
pub fn check(
    requirements: &BTreeMap<String, String>,
    host: &HostFacts,
    devices: &[DeviceFacts],
) -> Result<(), RequireError> {
    for (variable, text) in requirements {
        let constraint = Constraint::parse(variable, text)?;
        let targets: Vec<Option<&DeviceFacts>> = if devices.is_empty() {
            vec![None]
        } else {
            devices.iter().map(Some).collect()
        };
        for device in targets {
            match constraint.eval(host, device) {
                Truth::True => {}
                Truth::Unknown(f) => {
                    return Err(RequireError::Unknown {
                        variable: variable.clone(),
                        factor: f.text.clone(),
                        fact: f.property.fact(),
                        reason: host
                            .unknown_because
                            .clone()
                            .unwrap_or_else(|| "the driver does not report it".to_owned()),
                    })
                }
                Truth::False => {
                    let term = constraint.first_term().to_owned();
                    let hint = if term.starts_with("cuda>=") {
                        "; please update your driver to a newer version, or use an earlier cuda container".to_owned()
                    } else {
                        String::new()
                    };
                    return Err(RequireError::Unsatisfied {
                        variable: variable.clone(),
                        term,
                        host: describe(host, device),
                        hint,
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Option<Version> {
        Version::parse(s)
    }

    fn host(cuda: &str, driver: &str) -> HostFacts {
        HostFacts {
            cuda: v(cuda),
            driver: v(driver),
            unknown_because: None,
        }
    }

    fn h100() -> DeviceFacts {
        DeviceFacts {
            arch: v("9.0"),
            brand: Some(brand_token(14).to_owned()),
        }
    }

    fn reqs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The value of `NVIDIA_REQUIRE_CUDA` in the CUDA 13.0.2 image (one brand group per
    /// driver branch).
    const CUDA_13_0: &str = "cuda>=13.0 brand=unknown,driver>=535,driver<536 brand=grid,driver>=535,driver<536 brand=tesla,driver>=535,driver<536 brand=nvidia,driver>=535,driver<536 brand=quadro,driver>=535,driver<536 brand=quadrortx,driver>=535,driver<536 brand=nvidiartx,driver>=535,driver<536 brand=vapps,driver>=535,driver<536 brand=vpc,driver>=535,driver<536 brand=vcs,driver>=535,driver<536 brand=vws,driver>=535,driver<536 brand=cloudgaming,driver>=535,driver<536 brand=unknown,driver>=550,driver<551 brand=tesla,driver>=550,driver<551";
    /// `NVIDIA_REQUIRE_CUDA` of a CUDA 12.2 image.
    const CUDA_12_2: &str = "cuda>=12.2 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 brand=nvidia,driver>=470,driver<471 brand=tesla,driver>=525,driver<526 brand=nvidia,driver>=525,driver<526";

    #[test]
    fn versions_compare_by_field_ignoring_trailing_zeros() {
        assert_eq!(
            Version::parse("12.0")
                .unwrap()
                .cmp_to(&Version::parse("12").unwrap()),
            Ordering::Equal
        );
        assert_eq!(
            Version::parse("580.159.04")
                .unwrap()
                .cmp_to(&Version::parse("535").unwrap()),
            Ordering::Greater
        );
        assert_eq!(
            Version::parse("9.0")
                .unwrap()
                .cmp_to(&Version::parse("10.0").unwrap()),
            Ordering::Less
        );
        for bad in ["", "12.x", "v12", "12..1", "1-2"] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn real_cuda_image_strings_pass_on_a_new_driver() {
        // H100 host: driver 580.159.04, CUDA 13.0.
        let h = host("13.0", "580.159.04");
        check(&reqs(&[("NVIDIA_REQUIRE_CUDA", CUDA_13_0)]), &h, &[h100()]).unwrap();
        check(&reqs(&[("NVIDIA_REQUIRE_CUDA", CUDA_12_2)]), &h, &[h100()]).unwrap();
    }

    #[test]
    fn old_driver_fails_with_term_host_value_and_hint() {
        let h = host("12.4", "550.54.15");
        let err = check(&reqs(&[("NVIDIA_REQUIRE_CUDA", CUDA_13_0)]), &h, &[h100()]);
        // 550 branch with brand nvidia is not listed for 550 in this (shortened) string, and
        // cuda 12.4 < 13.0: unsatisfied.
        let err = err.unwrap_err().to_string();
        assert!(
            err.starts_with("unsatisfied condition: cuda>=13.0"),
            "{err}"
        );
        assert!(
            err.contains("cuda=12.4") && err.contains("driver=550.54.15"),
            "{err}"
        );
        assert!(err.contains("please update your driver"), "{err}");
    }

    #[test]
    fn branch_terms_rescue_an_old_cuda() {
        // cuda 12.4 host on driver 550 with a tesla board: the `brand=tesla,driver>=550,driver<551`
        // term holds.
        let h = host("12.4", "550.54.15");
        let tesla = DeviceFacts {
            arch: v("8.0"),
            brand: Some("tesla".into()),
        };
        check(&reqs(&[("NVIDIA_REQUIRE_CUDA", CUDA_13_0)]), &h, &[tesla]).unwrap();
    }

    #[test]
    fn separate_variables_are_anded_and_each_device_is_checked() {
        let h = host("13.0", "580.1");
        let old = DeviceFacts {
            arch: v("7.0"),
            brand: Some("tesla".into()),
        };
        let r = reqs(&[
            ("NVIDIA_REQUIRE_ARCH", "arch>=8.0"),
            ("NVIDIA_REQUIRE_CUDA", "cuda>=12.0"),
        ]);
        check(&r, &h, &[h100()]).unwrap();
        let err = check(&r, &h, &[h100(), old]).unwrap_err().to_string();
        assert!(
            err.contains("arch>=8.0") && err.contains("arch=7.0"),
            "{err}"
        );
        assert!(!err.contains("please update"), "{err}");
    }

    #[test]
    fn no_device_makes_arch_and_brand_hold_but_not_cuda() {
        let h = host("12.0", "535.1");
        check(&reqs(&[("A", "arch>=99.0,brand=geforce")]), &h, &[]).unwrap();
        assert!(check(&reqs(&[("A", "cuda>=12.1")]), &h, &[]).is_err());
    }

    #[test]
    fn a_requirement_only_an_unknown_fact_decides_fails_naming_it_and_why() {
        let mut h = host("12.2", "535.261.03");
        h.unknown_because = Some("NVML unavailable: driver not loaded".into());
        let blind = DeviceFacts::default();
        let err = check(
            &reqs(&[("NVIDIA_REQUIRE_ARCH", "arch>=9.0")]),
            &h,
            std::slice::from_ref(&blind),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "cannot check arch>=9.0 (from NVIDIA_REQUIRE_ARCH): GPU architecture unknown, NVML unavailable: driver not loaded; set NVIDIA_DISABLE_REQUIRE=true to start without checking"
        );
        let err = check(
            &reqs(&[("B", "brand=tesla")]),
            &h,
            std::slice::from_ref(&blind),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("cannot check brand=tesla (from B): GPU brand unknown"),
            "{err}"
        );
        // A term that fails on a known fact needs no unknown one; a term that holds decides.
        let err = check(
            &reqs(&[("C", "brand=tesla,driver>=999")]),
            &h,
            std::slice::from_ref(&blind),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("unsatisfied condition"), "{err}");
        check(
            &reqs(&[("C", "cuda>=12.0 brand=tesla")]),
            &h,
            std::slice::from_ref(&blind),
        )
        .unwrap();
        // The CUDA 12.2 image's string on a 535 host: cuda>=12.2 holds without NVML.
        check(&reqs(&[("NVIDIA_REQUIRE_CUDA", CUDA_12_2)]), &h, &[blind]).unwrap();
        // An unknown CUDA version is unknown too.
        let mut newer = h.clone();
        newer.cuda = None;
        let err = check(&reqs(&[("D", "cuda>=12.0")]), &newer, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CUDA version unknown"), "{err}");
    }

    #[test]
    fn versions_print_as_written() {
        assert_eq!(v("535.261.03").unwrap().to_string(), "535.261.03");
        let json = serde_json::to_string(&v("9.0")).unwrap();
        assert_eq!(json, "\"9.0\"");
        assert_eq!(
            serde_json::from_str::<Version>(&json).unwrap(),
            v("9.0").unwrap()
        );
        let err = check(
            &reqs(&[("D", "driver>=999")]),
            &host("12.2", "535.261.03"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("driver=535.261.03"), "{err}");
    }

    #[test]
    fn brand_is_case_insensitive_and_only_eq_ne() {
        let h = host("13.0", "580.1");
        check(&reqs(&[("B", "brand=NVIDIA")]), &h, &[h100()]).unwrap();
        assert!(check(&reqs(&[("B", "brand!=nvidia")]), &h, &[h100()]).is_err());
        let err = Constraint::parse("B", "brand>=tesla").unwrap_err();
        assert!(err.to_string().contains("brand takes only"), "{err}");
    }

    #[test]
    fn invalid_expressions_name_variable_and_reason() {
        for (text, why) in [
            ("gpu>=1", "unknown property"),
            ("cuda>=12.x", "not a version"),
            ("cuda", "no operator"),
            ("  ", "empty"),
        ] {
            let err = Constraint::parse("NVIDIA_REQUIRE_X", text)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("NVIDIA_REQUIRE_X") && err.contains(why),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn operators() {
        let h = host("12.4", "550.0");
        for (expr, want) in [
            ("cuda=12.4", true),
            ("cuda=12.4.0", true),
            ("cuda!=12.4", false),
            ("cuda<12.5", true),
            ("cuda<=12.4", true),
            ("cuda>12.4", false),
            ("cuda>=12.3", true),
            ("driver<550", false),
        ] {
            assert_eq!(
                Constraint::parse("X", expr).unwrap().holds(&h, None),
                want,
                "{expr}"
            );
        }
    }

    #[test]
    fn cuda_version_follows_the_driver_branch() {
        let c = |d: &str| cuda_for_driver(&Version::parse(d).unwrap()).map(|v| v.to_string());
        assert_eq!(c("580.159.04").as_deref(), Some("13.0"));
        assert_eq!(c("550.54.15").as_deref(), Some("12.4"));
        assert_eq!(c("552.1").as_deref(), Some("12.4"));
        assert_eq!(c("470.256.02").as_deref(), Some("11.4"));
        assert_eq!(c("600.1"), None, "unknown future branch");
        assert_eq!(c("440.1"), None, "older than the table");
    }

    #[test]
    fn brand_map_covers_nvml_enum() {
        assert_eq!(brand_token(0), "unknown");
        assert_eq!(brand_token(2), "tesla");
        assert_eq!(brand_token(13), "nvidiartx");
        assert_eq!(brand_token(16), "titanrtx");
        assert_eq!(brand_token(99), "unknown");
    }
}
