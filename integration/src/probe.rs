//! `nvprobe`, a small C program the real-driver tests compile with the host's `cc` and run
//! inside containers (and on the host, against the same driver root, for the reference
//! answers). Each argument is one probe, one output line each:
//!
//! - `cuInit`: `dlopen("libcuda.so.1")`, then `cuInit(0)`:
//!   `cuInit <rc> <path the library was loaded from>`;
//! - `nvmlInit`: `dlopen("libnvidia-ml.so.1")`, then `nvmlInit_v2()`:
//!   `nvmlInit <rc> <path>`;
//! - anything else, a library name: `dlopen <name> ok <path>` or
//!   `dlopen <name> failed: <dlerror>`.
//!
//! A library that cannot be loaded gives `<probe> dlopen-failed: <dlerror>`; one without the
//! symbol `<probe> no-symbol`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdio.h>
#include <string.h>

static const char *where(void *h) {
    struct link_map *map = NULL;
    if (dlinfo(h, RTLD_DI_LINKMAP, &map) != 0 || map == NULL) return "?";
    return map->l_name;
}

static void init(const char *probe, const char *lib, const char *sym, int with_flags) {
    void *h = dlopen(lib, RTLD_NOW);
    if (!h) { printf("%s dlopen-failed: %s\n", probe, dlerror()); return; }
    void *f = dlsym(h, sym);
    if (!f) { printf("%s no-symbol\n", probe); return; }
    int rc = with_flags ? ((int (*)(unsigned))f)(0) : ((int (*)(void))f)();
    printf("%s %d %s\n", probe, rc, where(h));
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "cuInit")) {
            init("cuInit", "libcuda.so.1", "cuInit", 1);
        } else if (!strcmp(argv[i], "nvmlInit")) {
            init("nvmlInit", "libnvidia-ml.so.1", "nvmlInit_v2", 0);
        } else {
            void *h = dlopen(argv[i], RTLD_NOW);
            if (h) printf("dlopen %s ok %s\n", argv[i], where(h));
            else printf("dlopen %s failed: %s\n", argv[i], dlerror());
        }
    }
    return 0;
}
"#;

/// Compiles the probe into `dir`; returns its path.
pub fn build(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let src = dir.join("nvprobe.c");
    std::fs::write(&src, SOURCE)?;
    let out = dir.join("nvprobe");
    let status = Command::new("cc")
        .arg("-O2")
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .arg("-ldl")
        .status()
        .context("run cc (install gcc)")?;
    ensure!(status.success(), "cc failed building the probe");
    Ok(out)
}

/// The value of `probe`'s line in `output` (`cuInit 100 /usr/lib/...` gives `100 /usr/lib/...`).
pub fn answer<'a>(output: &'a str, probe: &str) -> Option<&'a str> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(probe)?.strip_prefix(' '))
}

/// The return code of `probe` in `output`, if it ran.
pub fn code(output: &str, probe: &str) -> Option<i32> {
    answer(output, probe)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
