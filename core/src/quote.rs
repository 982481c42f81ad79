//! Input values quoted in error messages, bounded: a container can put a megabyte into
//! `NVIDIA_VISIBLE_DEVICES` or a requirement, and its error must still be a line a person and
//! containerd's log can take. At most [`MAX_QUOTED`] characters of a value are shown, followed
//! by its length when it was cut.

/// The most characters of one input value an error message shows.
pub const MAX_QUOTED: usize = 200;

/// `value` as `"..."` (Rust string escaping), cut after [`MAX_QUOTED`] characters with its
/// length in bytes: `"0,1,2,..." (1048576 bytes, first 200 characters shown)`.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!(
            "{:?}... ({} bytes, first {MAX_QUOTED} characters shown)",
            &value[..cut],
            value.len()
        ),
    }
}

/// `text` cut after `max` bytes (at a character boundary) with a note of its length: the
/// bound of a whole error message.
pub fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}... ({} bytes in all)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_whole_and_long_ones_cut_with_their_length() {
        assert_eq!(quoted("0,1"), "\"0,1\"");
        let long = "7,".repeat(500_000);
        let q = quoted(&long);
        assert!(q.len() < 300, "{}", q.len());
        assert!(
            q.ends_with("... (1000000 bytes, first 200 characters shown)"),
            "{q}"
        );
        // Multi-byte characters are never split.
        let wide = "é".repeat(300);
        assert!(quoted(&wide).contains("600 bytes"));
        assert_eq!(bounded("abc", 10), "abc");
        let b = bounded(&"é".repeat(10), 5);
        assert!(
            b.starts_with("éé...") && b.ends_with("(20 bytes in all)"),
            "{b}"
        );
    }
}
