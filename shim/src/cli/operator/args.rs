//! The operator commands' command lines: positional words and `--flag [value]` pairs, checked
//! against what each command accepts, so that an unknown flag or a missing value is a clear
//! one-line error.

/// A parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Args {
    /// Words that are not flags, in order.
    pub positional: Vec<String>,
    /// Flags with their values (`None` for switches), in order.
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    /// Parses `args`: `with_value` flags take the next word (or `--flag=value`), `switches`
    /// take none; anything else starting with `-` is an error.
    pub fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> Result<Self, String> {
        let mut out = Self::default();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if !arg.starts_with('-') || arg == "-" {
                out.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => it
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                out.flags.push((name.to_owned(), Some(value)));
            } else if switches.contains(&name) && inline.is_none() {
                out.flags.push((name.to_owned(), None));
            } else {
                return Err(format!("unknown flag {arg}"));
            }
        }
        Ok(out)
    }

    /// The last value given for `flag`.
    pub fn value(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|(n, _)| n == flag)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether the switch `flag` was given.
    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == flag)
    }
}

/// Whether `args` asks for help.
pub fn wants_help(args: &[String]) -> bool {
    args.iter().any(|a| a == "--help" || a == "-h")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_values_and_errors() {
        let a = Args::parse(
            &words("containerd --config /etc/c.toml --dry-run --runtime-name=gpu"),
            &["--config", "--runtime-name"],
            &["--dry-run"],
        )
        .unwrap();
        assert_eq!(a.positional, ["containerd"]);
        assert_eq!(a.value("--config"), Some("/etc/c.toml"));
        assert_eq!(a.value("--runtime-name"), Some("gpu"));
        assert!(a.has("--dry-run"));
        assert_eq!(
            Args::parse(&words("--config"), &["--config"], &[]).unwrap_err(),
            "--config needs a value"
        );
        assert_eq!(
            Args::parse(&words("--force"), &[], &[]).unwrap_err(),
            "unknown flag --force"
        );
    }
}
