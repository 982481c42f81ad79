use super::*;

#[test]
fn exactly_one_versioned_libcuda_is_the_candidate() {
    let v = |s| Version::parse(s).unwrap();
    assert_eq!(
        compat_candidate([
            "libcuda.so",
            "libcuda.so.1",
            "libcuda.so.550.54.15",
            "libnvidia-ptxjitcompiler.so.1"
        ]),
        Some(("libcuda.so.550.54.15".to_owned(), v("550.54.15")))
    );
    assert_eq!(
        compat_candidate(["libcuda.so.550.54.15", "libcuda.so.560.28.03"]),
        None,
        "two candidates"
    );
    assert_eq!(
        compat_candidate(["libcuda.so.1"]),
        None,
        "the SONAME link alone"
    );
    assert_eq!(compat_candidate(["libcuda.so.x.y"]), None);
}

#[test]
fn garbage_is_not_a_note() {
    assert_eq!(parse_note(b"not a note section at all"), None);
    assert_eq!(parse_note(&[0xff; 16]), None);
}
