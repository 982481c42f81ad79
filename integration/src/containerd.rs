//! A private containerd for one test: its own root, state, sockets and config under a temp
//! dir, the shim under test first on its PATH, stopped by its PID when dropped.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wait_timeout::ChildExt;

use crate::image::ImageSpec;
use crate::shim_binary;

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "nvtest";
/// The runtime type under test.
pub const RUNTIME: &str = "io.containerd.nvidia.v2";
/// The reference runtime: containerd's Go runc shim.
pub const RUNC: &str = "io.containerd.runc.v2";
/// The busybox test image's name.
pub const BUSYBOX_IMAGE: &str = "docker.io/library/nvtest-busybox:latest";

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    path_env: String,
    level: String,
    /// Extra TOML appended to the config; when set, the CRI plugin stays enabled.
    cri_config: Option<String>,
    /// A command containerd is started through (it must exec its arguments in the end).
    wrapper: Vec<String>,
    /// A command run on the config file after it is written (`--config <file>` appended), as
    /// an operator edits containerd's config: `containerd-shim-nvidia-v2 configure containerd`.
    config_command: Vec<String>,
    /// The directory of another containerd release's `containerd`, `ctr` and
    /// `containerd-shim-runc-v2` (after the shim under test on PATH); `None`: the host's.
    release: Option<PathBuf>,
}

impl Containerd {
    /// Starts containerd with the shim under test and waits until it answers.
    pub fn start() -> Result<Self> {
        Self::start_with(&shim_binary())
    }

    /// Starts containerd with the shim binary `shim` on its PATH, logging at debug level.
    pub fn start_with(shim: &Path) -> Result<Self> {
        Self::start_with_level(shim, "debug")
    }

    /// Starts containerd with `shim` on its PATH at log level `level` (containerd passes
    /// `-debug` to shims only at `debug`).
    pub fn start_with_level(shim: &Path, level: &str) -> Result<Self> {
        Self::start_configured(shim, level, |_| Ok(None))
    }

    /// Starts containerd with `shim` on its PATH at log level `level`; `cri` gets the temp dir
    /// and may return the CRI plugin's TOML, which then enables that plugin (it is disabled
    /// otherwise). An error from `cri` is returned before containerd starts.
    pub fn start_configured(
        shim: &Path,
        level: &str,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
    ) -> Result<Self> {
        Self::start_wrapped(shim, level, cri, |_| Ok(Vec::new()), |_| Ok(Vec::new()))
    }

    /// Starts the containerd of another release, whose `containerd`, `ctr` and
    /// `containerd-shim-runc-v2` are in `release` (Debian trixie's 1.7 from
    /// [`crate::debian_packages::containerd17`]), with `shim` first on its PATH and that
    /// directory next; `cri` as in [`Containerd::start_configured`]. `ctr` commands use that
    /// release's `ctr`.
    pub fn start_release(
        release: &Path,
        shim: &Path,
        level: &str,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
    ) -> Result<Self> {
        Self::start_full(
            shim,
            level,
            Some(release),
            cri,
            |_| Ok(Vec::new()),
            |_| Ok(Vec::new()),
        )
    }

    /// [`Containerd::start_release`], with `command` run on the written config file as in
    /// [`Containerd::start_configured_by`].
    pub fn start_release_configured_by(
        release: &Path,
        shim: &Path,
        level: &str,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
        command: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        Self::start_full(shim, level, Some(release), cri, |_| Ok(Vec::new()), command)
    }

    /// Starts containerd with the shim under test through `wrapper` (given the temp dir), a
    /// command that ends by exec'ing its arguments (`containerd --config ...`), so the PID is
    /// containerd's: `unshare -m sh -c '<mounts>; exec "$@"' sh` gives it (and its shims) a
    /// private mount namespace.
    pub fn start_in(wrapper: impl FnOnce(&Path) -> Result<Vec<String>>) -> Result<Self> {
        Self::start_wrapped(
            &shim_binary(),
            "debug",
            |_| Ok(None),
            wrapper,
            |_| Ok(Vec::new()),
        )
    }

    /// [`Containerd::start_configured`], with `command` (program and arguments; `--config
    /// <file>` is appended) run on the config file after it is written and before containerd
    /// reads it. Its failure fails the start, with its output.
    pub fn start_configured_by(
        shim: &Path,
        level: &str,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
        command: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        Self::start_wrapped(shim, level, cri, |_| Ok(Vec::new()), command)
    }

    fn start_wrapped(
        shim: &Path,
        level: &str,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
        wrapper: impl FnOnce(&Path) -> Result<Vec<String>>,
        config_command: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        Self::start_full(shim, level, None, cri, wrapper, config_command)
    }

    fn start_full(
        shim: &Path,
        level: &str,
        release: Option<&Path>,
        cri: impl FnOnce(&Path) -> Result<Option<String>>,
        wrapper: impl FnOnce(&Path) -> Result<Vec<String>>,
        config_command: impl FnOnce(&Path) -> Result<Vec<String>>,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nvctd")
            .tempdir_in("/tmp")?;
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin)?;
        // A copy, so a rebuild during the test cannot change the running shim.
        fs::copy(shim, bin.join("containerd-shim-nvidia-v2"))
            .with_context(|| format!("copy {}", shim.display()))?;
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let path_env = match release {
            Some(r) => format!("{}:{}:{host_path}", bin.display(), r.display()),
            None => format!("{}:{host_path}", bin.display()),
        };
        let cri_config = cri(dir.path()).context("write the CRI plugin's configuration")?;
        let wrapper = wrapper(dir.path())?;
        let config_command = config_command(dir.path())?;
        let mut me = Self {
            dir,
            child: None,
            path_env,
            level: level.to_owned(),
            cri_config,
            wrapper,
            config_command,
            release: release.map(Path::to_path_buf),
        };
        me.spawn()?;
        Ok(me)
    }

    fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let (disabled, cri) = match &self.cri_config {
            Some(c) => ("", c.as_str()),
            None => (r#""io.containerd.grpc.v1.cri""#, ""),
        };
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [{disabled}]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  level = "{level}"
{cri}"#,
            level = self.level,
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = self.socket().display(),
        );
        fs::write(d.join("config.toml"), config)?;
        if let Some((program, args)) = self.config_command.split_first() {
            let out = Command::new(program)
                .args(args)
                .arg("--config")
                .arg(d.join("config.toml"))
                .output()
                .with_context(|| format!("run {program}"))?;
            if !out.status.success() {
                bail!(
                    "{program} {args:?} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))?;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("containerd");
                c
            }
            None => Command::new(self.program("containerd")),
        };
        let child = cmd
            .arg("--config")
            .arg(d.join("config.toml"))
            .env("PATH", &self.path_env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn containerd")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.socket().exists()
                && self
                    .ctr(&["version"])
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("containerd did not come up; log:\n{}", self.log())
    }

    /// Stops containerd (SIGTERM to its PID, SIGKILL after 10 s) and starts it again with the
    /// same root and state, as an operator's restart does.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).unwrap_or(0);
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `name` from the release this containerd runs, else from PATH.
    fn program(&self, name: &str) -> PathBuf {
        match &self.release {
            Some(r) => r.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The PATH containerd runs with (the shim under test's directory first): where it finds
    /// `containerd-shim-nvidia-v2`, for a client of its own (dockerd) to run with as well.
    pub fn path_env(&self) -> &str {
        &self.path_env
    }

    /// The directory holding the copy of the shim under test that containerd runs.
    pub fn shim_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// containerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// The temp dir holding everything.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// containerd's gRPC socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// containerd's state dir.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The bundle dir of container `id`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
            .join(id)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// A `ctr` command against this containerd in the test namespace.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        self.ctr_cmd_in(NAMESPACE, args)
    }

    /// A `ctr` command against this containerd in namespace `ns`.
    pub fn ctr_cmd_in(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new(self.program("ctr"));
        c.arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(ns)
            .args(args)
            .env("PATH", &self.path_env);
        c
    }

    /// Runs `ctr` with no stdin and a 60 s limit.
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        self.ctr_with_input(args, None)
    }

    /// Runs `ctr`, feeding `input` on stdin (kept open until ctr exits, as a terminal would).
    pub fn ctr_with_input(&self, args: &[&str], input: Option<&[u8]>) -> Result<Output> {
        self.run_ctr(self.ctr_cmd(args), args, input)
    }

    fn run_ctr(&self, mut cmd: Command, args: &[&str], input: Option<&[u8]>) -> Result<Output> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let (read_end, write_end) = if input.is_some() {
            let (r, w) = pipe()?;
            cmd.stdin(Stdio::from(r.try_clone()?));
            (Some(r), Some(w))
        } else {
            cmd.stdin(Stdio::null());
            (None, None)
        };
        let mut child = cmd.spawn().context("spawn ctr")?;
        drop(read_end);
        let mut keep_open = None;
        if let (Some(data), Some(mut w)) = (input, write_end) {
            use std::io::Write;
            w.write_all(data)?;
            keep_open = Some(w);
        }
        let out = wait_output(&mut child, Duration::from_secs(60))
            .with_context(|| format!("ctr {args:?}"))?;
        drop(keep_open);
        Ok(out)
    }

    /// Imports `image` under `name`.
    pub fn import(&self, image: &ImageSpec, name: &str) -> Result<()> {
        self.import_in(NAMESPACE, image, name)
    }

    /// Imports `image` under `name` into namespace `ns` (`k8s.io` for the CRI plugin).
    pub fn import_in(&self, ns: &str, image: &ImageSpec, name: &str) -> Result<()> {
        let archive = self
            .dir
            .path()
            .join(format!("image-{}.tar", sanitize(name)));
        image.write_archive(name, &archive)?;
        let args = ["image", "import", archive.to_str().unwrap_or_default()];
        let out = self.run_ctr(self.ctr_cmd_in(ns, &args), &args, None)?;
        if !out.status.success() {
            bail!("ctr image import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Imports the busybox image as [`BUSYBOX_IMAGE`].
    pub fn import_busybox(&self) -> Result<()> {
        self.import(&ImageSpec::busybox()?, BUSYBOX_IMAGE)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Containerd {
    /// Stops containerd, then kills what a failed test left of it: its shims (and so their
    /// containers), then mounts under its dir. Idempotent; dropping does it too.
    pub fn shutdown(&mut self) {
        // Whatever a failed test left: its tasks (through both runtimes; a runc shim killed
        // with its containers running would leave them behind), ...
        if self.child.is_some() {
            if let Ok(out) = self.ctr(&["task", "ls", "-q"]) {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = self.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]);
                }
            }
        }
        self.stop();
        // ... then the shims of this containerd, then mounts under our dir.
        let socket = self.socket();
        let runc_shims =
            crate::leftovers::processes_of("containerd-shim-runc-v2", &socket.to_string_lossy());
        for pid in crate::leftovers::shim_pids(&socket)
            .into_iter()
            .chain(runc_shims)
        {
            // SAFETY: signalling a process by pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for m in crate::leftovers::mounts_under(self.dir.path())
            .into_iter()
            .rev()
        {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: c is a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn pipe() -> Result<(fs::File, fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: pipe2 returned two fresh descriptors we now own.
    Ok(unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) })
}

/// Waits for `child` with a limit, collecting its output; kills it past the limit.
pub fn wait_output(child: &mut Child, limit: Duration) -> Result<Output> {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    let err_t = std::thread::spawn(move || {
        let mut b = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut b);
        }
        b
    });
    // The wait blocks until the exit (a polling loop would round every duration up to its
    // period, which `nvbench` measures).
    let Some(status) = child.wait_timeout(limit)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("timed out after {limit:?}");
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}
