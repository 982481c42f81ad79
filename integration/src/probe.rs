//! `nvprobe`, a small C program the real-driver tests compile with the host's `cc` and run
//! inside containers (and on the host, against the same driver root, for the reference
//! answers). Each argument is one probe, one output line each:
//!
//! - `cuInit`: `dlopen("libcuda.so.1")`, then `cuInit(0)`:
//!   `cuInit <rc> <path the library was loaded from>`;
//! - `nvmlInit`: `dlopen("libnvidia-ml.so.1")`, then `nvmlInit_v2()`:
//!   `nvmlInit <rc> <path>`;
//! - `vadd`: a vector add of 1M floats on GPU 0 through the CUDA driver API (the kernel as
//!   PTX, JIT-compiled by the driver, so no CUDA toolkit is needed to build or run it), the
//!   result checked on the host: `vadd ok <n>` or `vadd failed <step> <rc>`;
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

static const char *PTX =
    ".version 7.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry vadd(.param .u64 pa, .param .u64 pb, .param .u64 pc, .param .u32 pn)\n"
    "{\n"
    "  .reg .pred p;\n"
    "  .reg .b32 r<5>;\n"
    "  .reg .b64 rd<11>;\n"
    "  .reg .f32 f<4>;\n"
    "  ld.param.u64 rd1, [pa];\n"
    "  ld.param.u64 rd2, [pb];\n"
    "  ld.param.u64 rd3, [pc];\n"
    "  ld.param.u32 r1, [pn];\n"
    "  mov.u32 r2, %ctaid.x;\n"
    "  mov.u32 r3, %ntid.x;\n"
    "  mov.u32 r4, %tid.x;\n"
    "  mad.lo.s32 r2, r2, r3, r4;\n"
    "  setp.ge.u32 p, r2, r1;\n"
    "  @p bra DONE;\n"
    "  cvta.to.global.u64 rd4, rd1;\n"
    "  cvta.to.global.u64 rd5, rd2;\n"
    "  cvta.to.global.u64 rd6, rd3;\n"
    "  mul.wide.u32 rd7, r2, 4;\n"
    "  add.s64 rd8, rd4, rd7;\n"
    "  add.s64 rd9, rd5, rd7;\n"
    "  add.s64 rd10, rd6, rd7;\n"
    "  ld.global.f32 f1, [rd8];\n"
    "  ld.global.f32 f2, [rd9];\n"
    "  add.f32 f3, f1, f2;\n"
    "  st.global.f32 [rd10], f3;\n"
    "DONE:\n"
    "  ret;\n"
    "}\n";

typedef int (*fn_i)(unsigned);
typedef int (*fn_dev)(int *, int);
typedef int (*fn_ctx)(void **, unsigned, int);
typedef int (*fn_mod)(void **, const void *);
typedef int (*fn_fun)(void **, void *, const char *);
typedef int (*fn_alloc)(unsigned long long *, size_t);
typedef int (*fn_htod)(unsigned long long, const void *, size_t);
typedef int (*fn_dtoh)(void *, unsigned long long, size_t);
typedef int (*fn_launch)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                         unsigned, void *, void **, void **);
typedef int (*fn_sync)(void);

#define STEP(name, call) do { int rc_ = (call); if (rc_ != 0) { \
    printf("vadd failed %s %d\n", name, rc_); return; } } while (0)

static void vadd(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("vadd failed dlopen %s\n", dlerror()); return; }
    fn_i init = (fn_i)dlsym(h, "cuInit");
    fn_dev dev_get = (fn_dev)dlsym(h, "cuDeviceGet");
    fn_ctx ctx_create = (fn_ctx)dlsym(h, "cuCtxCreate_v2");
    fn_mod mod_load = (fn_mod)dlsym(h, "cuModuleLoadData");
    fn_fun fun_get = (fn_fun)dlsym(h, "cuModuleGetFunction");
    fn_alloc alloc = (fn_alloc)dlsym(h, "cuMemAlloc_v2");
    fn_htod htod = (fn_htod)dlsym(h, "cuMemcpyHtoD_v2");
    fn_dtoh dtoh = (fn_dtoh)dlsym(h, "cuMemcpyDtoH_v2");
    fn_launch launch = (fn_launch)dlsym(h, "cuLaunchKernel");
    fn_sync sync = (fn_sync)dlsym(h, "cuCtxSynchronize");
    if (!init || !dev_get || !ctx_create || !mod_load || !fun_get || !alloc || !htod || !dtoh
        || !launch || !sync) { printf("vadd failed dlsym 0\n"); return; }
    enum { N = 1 << 20 };
    static float a[N], b[N], c[N];
    for (int i = 0; i < N; i++) { a[i] = (float)i; b[i] = 2.0f * (float)i; c[i] = -1.0f; }
    int dev; void *ctx, *mod, *fun;
    unsigned long long da, db, dc;
    STEP("cuInit", init(0));
    STEP("cuDeviceGet", dev_get(&dev, 0));
    STEP("cuCtxCreate", ctx_create(&ctx, 0, dev));
    STEP("cuModuleLoadData", mod_load(&mod, PTX));
    STEP("cuModuleGetFunction", fun_get(&fun, mod, "vadd"));
    STEP("cuMemAlloc", alloc(&da, sizeof a));
    STEP("cuMemAlloc", alloc(&db, sizeof b));
    STEP("cuMemAlloc", alloc(&dc, sizeof c));
    STEP("cuMemcpyHtoD", htod(da, a, sizeof a));
    STEP("cuMemcpyHtoD", htod(db, b, sizeof b));
    unsigned n = N;
    void *args[] = { &da, &db, &dc, &n };
    STEP("cuLaunchKernel", launch(fun, (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    STEP("cuCtxSynchronize", sync());
    STEP("cuMemcpyDtoH", dtoh(c, dc, sizeof c));
    for (int i = 0; i < N; i++) {
        if (c[i] != 3.0f * (float)i) { printf("vadd failed check %d\n", i); return; }
    }
    printf("vadd ok %d\n", N);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "cuInit")) {
            init("cuInit", "libcuda.so.1", "cuInit", 1);
        } else if (!strcmp(argv[i], "nvmlInit")) {
            init("nvmlInit", "libnvidia-ml.so.1", "nvmlInit_v2", 0);
        } else if (!strcmp(argv[i], "vadd")) {
            vadd();
        } else {
            void *h = dlopen(argv[i], RTLD_NOW);
            if (h) printf("dlopen %s ok %s\n", argv[i], where(h));
            else printf("dlopen %s failed: %s\n", argv[i], dlerror());
        }
    }
    return 0;
}
"#;

/// The probe: `NVIDIA_TEST_PROBE` when set (a prebuilt one, where no compiler is), else
/// compiled into `dir`.
pub fn probe(dir: &Path) -> Result<PathBuf> {
    match std::env::var_os("NVIDIA_TEST_PROBE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => build(dir),
    }
}

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

/// The probe, built once per test binary (in a temp dir of its own).
pub fn shared() -> Result<&'static Path> {
    static PROBE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("nvprobe-{}", std::process::id()));
            probe(&dir).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map(PathBuf::as_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The name the probe image is imported under.
pub const IMAGE: &str = "docker.io/library/nvtest-probe:latest";

/// The glibc test image with the probe as `/usr/bin/nvprobe`.
pub fn image() -> Result<crate::image::ImageSpec> {
    crate::image::ImageSpec::glibc()?.with_program("usr/bin/nvprobe", shared()?)
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

/// The return codes of `cuInit` and `nvmlInit`, as far as they ran.
pub type Codes = (Option<i32>, Option<i32>);

/// The [`Codes`] in `output`.
pub fn codes(output: &str) -> Codes {
    (code(output, "cuInit"), code(output, "nvmlInit"))
}
