//! A private containerd for one test: its own root, state, sockets and config under a temp
//! dir, the shim under test first on its PATH, stopped by its PID when dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub use crate::command::wait_output;
use crate::command::{stdout_ok, terminate, text};
use crate::image::ImageSpec;
use crate::leftovers;
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

/// A step of the start that needs the temp dir (where containerd's files go) to say what it
/// writes or runs.
type DirStep<'a, T> = Box<dyn FnOnce(&Path) -> Result<T> + 'a>;

/// How to start a private containerd ([`Containerd::builder`]): which shim and containerd,
/// its log level, its CRI plugin, how its config is edited, the namespaces it runs in.
pub struct ContainerdBuilder<'a> {
    shim: PathBuf,
    log_level: String,
    release: Option<PathBuf>,
    cri: Option<DirStep<'a, String>>,
    wrapper: Option<DirStep<'a, Vec<String>>>,
    configure: Option<DirStep<'a, Vec<String>>>,
}

impl std::fmt::Debug for ContainerdBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdBuilder")
            .field("shim", &self.shim)
            .field("log_level", &self.log_level)
            .field("release", &self.release)
            .finish_non_exhaustive()
    }
}

impl Containerd {
    /// Starts containerd with the shim under test, logging at debug level, and waits until it
    /// answers.
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// A containerd to start: by default the host's, with the shim under test first on its
    /// PATH, logging at debug level, its CRI plugin disabled.
    pub fn builder<'a>() -> ContainerdBuilder<'a> {
        ContainerdBuilder {
            shim: shim_binary(),
            log_level: "debug".into(),
            release: None,
            cri: None,
            wrapper: None,
            configure: None,
        }
    }
}

impl<'a> ContainerdBuilder<'a> {
    setters! {
        /// The shim binary put first on containerd's PATH (a copy, so a rebuild during the
        /// test cannot change the running shim).
        shim: PathBuf;
        /// containerd's log level (containerd passes `-debug` to shims only at `debug`).
        log_level: String;
        /// Another containerd release, whose `containerd`, `ctr` and `containerd-shim-runc-v2`
        /// are in this directory (Debian trixie's 1.7 from
        /// [`crate::debian_packages::containerd17`]): it comes after the shim's on
        /// containerd's PATH, and `ctr` commands use its `ctr`.
        release: PathBuf => Some;
    }

    /// Enables the CRI plugin (disabled otherwise) with the TOML `cri` returns; it gets the
    /// temp dir to write its files in. Its error is returned before containerd starts.
    pub fn cri(mut self, cri: impl FnOnce(&Path) -> Result<String> + 'a) -> Self {
        self.cri = Some(Box::new(cri));
        self
    }

    /// Runs `<shim> configure containerd ARGS --config <file>` on the written config before
    /// containerd reads it, as an operator edits containerd's config (`args` gets the temp
    /// dir). Its failure fails the start, with its output.
    pub fn configured_by_shim(mut self, args: impl FnOnce(&Path) -> Vec<String> + 'a) -> Self {
        let shim = self.shim.display().to_string();
        self.configure = Some(Box::new(move |dir| {
            let mut command = vec![shim, "configure".into(), "containerd".into()];
            command.extend(args(dir));
            Ok(command)
        }));
        self
    }

    /// Runs containerd (and its shims) in a mount namespace of its own, after the shell
    /// commands `setup` returns for the temp dir (run with `set -e`): mounts that only this
    /// containerd sees.
    pub fn mount_namespace(mut self, setup: impl FnOnce(&Path) -> Result<String> + 'a) -> Self {
        self.wrapper = Some(Box::new(move |dir| {
            let setup = setup(dir)?;
            let mut wrapper: Vec<String> = ["unshare", "-m", "--propagation", "private", "--"]
                .map(String::from)
                .to_vec();
            wrapper.extend(["sh".into(), "-c".into()]);
            wrapper.push(format!("set -e; {setup}; exec \"$@\""));
            wrapper.push("sh".into());
            Ok(wrapper)
        }));
        self
    }

    /// Puts the temp dir's `sub` (`root`: content and snapshots; `state`: bundles and shim
    /// sockets' addresses) on a tmpfs of `size` (`1m`) that only this containerd sees.
    pub fn tmpfs(self, sub: &'a str, size: &'a str) -> Self {
        self.mount_namespace(move |dir| {
            let path = dir.join(sub);
            fs::create_dir_all(&path)?;
            Ok(format!(
                "mount -t tmpfs -o size={size} tmpfs {}",
                path.display()
            ))
        })
    }

    /// Runs containerd, its shims and their containers in a pid namespace of their own
    /// (`unshare --pid --fork --kill-child --mount-proc`): [`Containerd::pid`] is then
    /// `unshare`'s, containerd its first child.
    pub fn pid_namespace(mut self) -> Self {
        self.wrapper = Some(Box::new(|_| {
            Ok([
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
                "--",
            ]
            .map(String::from)
            .to_vec())
        }));
        self
    }

    /// Starts containerd and waits until it answers.
    pub fn start(self) -> Result<Containerd> {
        let dir = tempfile::Builder::new()
            .prefix("nvctd")
            .tempdir_in("/tmp")?;
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin)?;
        fs::copy(&self.shim, bin.join("containerd-shim-nvidia-v2"))
            .with_context(|| format!("copy {}", self.shim.display()))?;
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let path_env = match &self.release {
            Some(r) => format!("{}:{}:{host_path}", bin.display(), r.display()),
            None => format!("{}:{host_path}", bin.display()),
        };
        let in_dir = |step: Option<DirStep<'a, Vec<String>>>| match step {
            Some(step) => step(dir.path()),
            None => Ok(Vec::new()),
        };
        let cri_config = match self.cri {
            Some(cri) => Some(cri(dir.path()).context("write the CRI plugin's configuration")?),
            None => None,
        };
        let wrapper = in_dir(self.wrapper)?;
        let config_command = in_dir(self.configure)?;
        let mut me = Containerd {
            dir,
            child: None,
            path_env,
            level: self.log_level,
            cri_config,
            wrapper,
            config_command,
            release: self.release,
        };
        me.spawn()?;
        Ok(me)
    }
}

impl Containerd {
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
            stdout_ok(format_args!("{program} {args:?}"), &out)?;
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("containerd.log"))?;
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(self.program("containerd"));
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
            terminate(&mut child, Duration::from_secs(10));
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

    /// Runs `ctr`, failing with its output unless it exits 0; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args)?;
        stdout_ok(format_args!("ctr {args:?}"), &out)?;
        Ok(text(&out.stdout))
    }

    /// `ctr task exec --exec-id EXEC_ID ID CMD...`.
    pub fn exec(&self, id: &str, exec_id: &str, cmd: &[&str]) -> Result<Output> {
        self.ctr(&exec_args(id, exec_id, cmd))
    }

    /// [`Containerd::exec`], failing with its output unless it exits 0; returns its stdout.
    pub fn exec_ok(&self, id: &str, exec_id: &str, cmd: &[&str]) -> Result<String> {
        self.ctr_ok(&exec_args(id, exec_id, cmd))
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
        stdout_ok("ctr image import", &out)?;
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
            self.kill_tasks_in(NAMESPACE);
        }
        self.stop();
        // ... then the shims of this containerd, then mounts under our dir.
        for pid in leftovers::shims_of(&self.socket()) {
            leftovers::kill(pid);
        }
        leftovers::unmount_under(self.dir.path());
    }

    /// Kills every task this containerd has in namespace `ns`, whichever runtime runs it.
    pub fn kill_tasks_in(&self, ns: &str) {
        let ls = ["task", "ls", "-q"];
        let Ok(out) = self.run_ctr(self.ctr_cmd_in(ns, &ls), &ls, None) else {
            return;
        };
        for id in text(&out.stdout).split_whitespace() {
            let kill = ["task", "kill", "-a", "-s", "SIGKILL", id];
            let _ = self.run_ctr(self.ctr_cmd_in(ns, &kill), &kill, None);
        }
    }
}

fn exec_args<'a>(id: &'a str, exec_id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["task", "exec", "--exec-id", exec_id, id];
    args.extend_from_slice(cmd);
    args
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
