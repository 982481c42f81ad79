//! A line diff for `--dry-run`: the lines removed (`-`) and added (`+`) with two lines of
//! context, from the longest common subsequence of the two texts' lines (configs are small).

/// `old` → `new` as unified-diff-style hunks under a `--- a`/`+++ b` header; empty when equal.
pub fn unified(name: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // lcs[i][j]: the common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // Each line tagged ' ', '-' or '+'.
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    const CONTEXT: usize = 2;
    let near_change = |k: usize| {
        let lo = k.saturating_sub(CONTEXT);
        let hi = (k + CONTEXT).min(ops.len() - 1);
        ops[lo..=hi].iter().any(|(t, _)| *t != ' ')
    };
    let mut out = format!("--- {name}\n+++ {name} (configured)\n");
    let mut gap = false;
    for (k, (tag, line)) in ops.iter().enumerate() {
        if near_change(k) {
            if gap {
                out.push_str("@@\n");
                gap = false;
            }
            out.push(*tag);
            out.push_str(line);
            out.push('\n');
        } else {
            gap = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_changes_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified("x", old, new),
            "--- x\n+++ x (configured)\n@@\n c\n d\n-e\n+E\n f\n g\n+h\n"
        );
        assert_eq!(unified("x", old, old), "");
    }
}
