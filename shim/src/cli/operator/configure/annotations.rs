//! Which annotations containerd's CRI plugin may forward to this shim. The CRI plugin copies a
//! pod annotation into the spec when it matches one of the runtime's `pod_annotations`
//! patterns, a container annotation when it matches one of its `container_annotations`
//! patterns; patterns are Go's `path.Match` globs. Pod annotations are written by whoever
//! writes the pod; container annotations only by the kubelet (the device plugin's Allocate
//! response among them). So the annotations that request GPUs are forwarded as container
//! annotations only, and a `pod_annotations` pattern that can match one of them lets any pod
//! author ask for GPUs, bypassing the device plugin (issue 22).

/// Prefixes of the annotation keys this shim reads as GPU requests or may come to: CDI device
/// requests (`cdi.k8s.io/<name>: nvidia.com/gpu=0`) and NVIDIA's own.
pub const REQUEST_PREFIXES: [&str; 2] = ["cdi.k8s.io/", "nvidia.com/"];

/// One element of a `path.Match` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A character matching itself.
    Literal(char),
    /// `?`: one character other than `/`.
    AnyOne,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `[...]`/`[^...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A character of a class: `\c` escapes it; `-` and `]` unescaped are malformed there.
fn class_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<char> {
    match chars.next()? {
        '\\' => chars.next(),
        '-' | ']' => None,
        c => Some(c),
    }
}

/// `pattern` as tokens, `None` when Go's `path.Match` calls it malformed (`ErrBadPattern`:
/// containerd then forwards nothing for it).
fn tokens(pattern: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let token = match c {
            '*' => {
                if out.last() == Some(&Token::Star) {
                    continue;
                }
                Token::Star
            }
            '?' => Token::AnyOne,
            '\\' => Token::Literal(chars.next()?),
            '[' => {
                let negated = chars.next_if_eq(&'^').is_some();
                let mut ranges = Vec::new();
                loop {
                    if chars.peek() == Some(&']') && !ranges.is_empty() {
                        chars.next();
                        break;
                    }
                    let lo = class_char(&mut chars)?;
                    let hi = if chars.next_if_eq(&'-').is_some() {
                        class_char(&mut chars)?
                    } else {
                        lo
                    };
                    ranges.push((lo, hi));
                }
                Token::Class { negated, ranges }
            }
            c => Token::Literal(c),
        };
        out.push(token);
    }
    Some(out)
}

/// The states (token positions) reachable from `states` without consuming a character: a
/// `*` may match nothing.
fn closure(tokens: &[Token], states: &mut Vec<usize>) {
    let mut i = 0;
    while i < states.len() {
        let s = states[i];
        if tokens.get(s) == Some(&Token::Star) && !states.contains(&(s + 1)) {
            states.push(s + 1);
        }
        i += 1;
    }
}

/// Whether some annotation key `prefix<name>` (a non-empty name without `/`) matches `pattern`
/// as containerd's CRI plugin matches it (`path.Match`). A malformed pattern matches nothing.
pub fn may_match_under(pattern: &str, prefix: &str) -> bool {
    let Some(tokens) = tokens(pattern) else {
        return false;
    };
    let mut states = vec![0];
    closure(&tokens, &mut states);
    for c in prefix.chars() {
        let mut next = Vec::new();
        for &s in &states {
            let to = match tokens.get(s) {
                Some(Token::Literal(l)) => (*l == c).then_some(s + 1),
                Some(Token::AnyOne) => (c != '/').then_some(s + 1),
                Some(Token::Star) => (c != '/').then_some(s),
                Some(Token::Class { negated, ranges }) => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    (inside != *negated).then_some(s + 1)
                }
                None => None,
            };
            if let Some(to) = to.filter(|t| !next.contains(t)) {
                next.push(to);
            }
        }
        closure(&tokens, &mut next);
        if next.is_empty() {
            return false;
        }
        states = next;
    }
    // What is left of the pattern must match a non-empty name: any state short of the end
    // can (a name has no `/`, and every token but a literal `/` matches some other character).
    states
        .iter()
        .any(|&s| s < tokens.len() && !tokens[s..].contains(&Token::Literal('/')))
}

/// The request prefixes (of [`REQUEST_PREFIXES`] and `extra`) that `pattern` forwards.
pub fn forwarded_requests<'a>(pattern: &str, extra: &'a [String]) -> Vec<&'a str> {
    REQUEST_PREFIXES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .filter(|prefix| may_match_under(pattern, prefix))
        .fold(Vec::new(), |mut out, p| {
            if !out.contains(&p) {
                out.push(p);
            }
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_go_path_match_does() {
        for (pattern, prefix, want) in [
            ("cdi.k8s.io/*", "cdi.k8s.io/", true),
            ("nvidia.com/*", "nvidia.com/", true),
            ("nvidia.com/*", "cdi.k8s.io/", false),
            ("*/*", "cdi.k8s.io/", true),
            ("*.io/*", "cdi.k8s.io/", true),
            ("cdi.*/x", "cdi.k8s.io/", true),
            ("cdi.k8s.io/x", "cdi.k8s.io/", true),
            ("cdi.k8s.io/?", "cdi.k8s.io/", true),
            ("[a-c]di.k8s.io/*", "cdi.k8s.io/", true),
            ("[^c]di.k8s.io/*", "cdi.k8s.io/", false),
            ("cdi\\.k8s.io/*", "cdi.k8s.io/", true),
            // `*` stops at `/`: it forwards keys without a prefix only.
            ("*", "cdi.k8s.io/", false),
            ("*", "nvidia.com/", false),
            ("cdi.k8s.io/", "cdi.k8s.io/", false),
            ("cdi.k8s.io/a/b", "cdi.k8s.io/", false),
            ("example.com/*", "cdi.k8s.io/", false),
            ("io.kubernetes.cri.*", "cdi.k8s.io/", false),
            // Malformed: containerd's path.Match errors and forwards nothing.
            ("cdi.k8s.io/[", "cdi.k8s.io/", false),
            ("cdi.k8s.io/\\", "cdi.k8s.io/", false),
            ("[]cdi.k8s.io/*", "cdi.k8s.io/", false),
        ] {
            assert_eq!(
                may_match_under(pattern, prefix),
                want,
                "{pattern:?} under {prefix:?}"
            );
        }
    }

    #[test]
    fn the_prefixes_a_pattern_forwards() {
        assert_eq!(
            forwarded_requests("*/*", &[]),
            ["cdi.k8s.io/", "nvidia.com/"]
        );
        assert_eq!(
            forwarded_requests("example.com/*", &["example.com/".to_owned()]),
            ["example.com/"]
        );
        assert!(forwarded_requests("io.kubernetes.*", &[]).is_empty());
    }
}
