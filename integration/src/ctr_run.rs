//! `ctr run` command lines, built rather than edited: the runtime (this shim unless told), its
//! configuration file, the image (busybox unless told) or a spec file, flags, a fresh container
//! id and the command; then run as a test wants it: its output, a detached container, a
//! `--rm` run checked to leave nothing behind, or a run that must fail.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Result};

use crate::checks::assert_clean;
use crate::command::text;
use crate::containerd::{Containerd, BUSYBOX_IMAGE, RUNTIME};
use crate::unique_id;

/// What a container run showed: its exit code, stdout and stderr.
pub type Seen = (Option<i32>, String, String);

/// A `ctr run` (or `ctr container create`) command line.
#[derive(Debug, Clone)]
pub struct CtrRun {
    global: Vec<String>,
    subcommand: [&'static str; 2],
    runtime: String,
    config: Option<String>,
    flags: Vec<String>,
    image: Option<String>,
    id: String,
    cmd: Vec<String>,
}

impl CtrRun {
    /// `ctr run --runtime io.containerd.nvidia.v2 <busybox> <id>`, the id fresh (`prefix-…`),
    /// with the image's command.
    pub fn new(prefix: &str) -> Self {
        Self {
            global: Vec::new(),
            subcommand: ["run", ""],
            runtime: RUNTIME.into(),
            config: None,
            flags: Vec::new(),
            image: Some(BUSYBOX_IMAGE.into()),
            id: unique_id(prefix),
            cmd: Vec::new(),
        }
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    setters! {
        /// Through this runtime (`io.containerd.runc.v2` for the reference).
        runtime: String;
        /// This shim's configuration file (`--runtime-config-path`); given to this shim only
        /// (a case run through runc too keeps its line).
        config: String => Some;
        /// This image instead of busybox.
        image: String => Some;
    }

    /// `--rm`: the container is removed once it exits.
    pub fn rm(self) -> Self {
        self.flags(&["--rm"])
    }

    /// `-d`: detached; the run returns once the task started.
    pub fn detach(self) -> Self {
        self.flags(&["-d"])
    }

    /// `--env KEY=VALUE` for each of `env`.
    pub fn env(mut self, env: &[&str]) -> Self {
        for e in env {
            self.flags.extend(["--env".into(), (*e).to_owned()]);
        }
        self
    }

    /// `--annotation KEY=VALUE`.
    pub fn annotation(self, annotation: &str) -> Self {
        self.flags(&["--annotation", annotation])
    }

    /// Other `ctr run` flags, as written (`--mount`, `--log-uri`, `--privileged`, ...).
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| (*f).to_owned()));
        self
    }

    /// The container from the OCI spec `file` (`--config`) instead of an image.
    pub fn spec(mut self, file: &Path) -> Self {
        self.image = None;
        self.flags(&["--config", &file.to_string_lossy()])
    }

    /// `ctr --timeout TIMEOUT`: the client's deadline, which containerd passes on.
    pub fn timeout(mut self, timeout: &str) -> Self {
        self.global = vec!["--timeout".into(), timeout.to_owned()];
        self
    }

    /// `ctr container create` instead of `run`: the container without its task.
    pub fn create_only(mut self) -> Self {
        self.subcommand = ["container", "create"];
        self
    }

    /// The command to run instead of the image's.
    pub fn cmd(mut self, cmd: &[&str]) -> Self {
        self.cmd = cmd.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// `sh -c SCRIPT` as the command.
    pub fn sh(self, script: &str) -> Self {
        self.cmd(&["sh", "-c", script])
    }

    /// The arguments of `ctr`.
    pub fn args(&self) -> Vec<String> {
        let mut args = self.global.clone();
        args.extend(
            self.subcommand
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| (*s).to_owned()),
        );
        args.extend(["--runtime".into(), self.runtime.clone()]);
        if let Some(config) = self.config.as_ref().filter(|_| self.runtime == RUNTIME) {
            args.extend(["--runtime-config-path".into(), config.clone()]);
        }
        args.extend(self.flags.iter().cloned());
        args.extend(self.image.iter().cloned());
        args.push(self.id.clone());
        args.extend(self.cmd.iter().cloned());
        args
    }

    /// The `ctr` command against `c`, to spawn (on a terminal, in the background).
    pub fn command(&self, c: &Containerd) -> Command {
        let args = self.args();
        c.ctr_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// Runs it against `c` (60 s at most).
    pub fn output(&self, c: &Containerd) -> Result<Output> {
        self.output_with_input(c, None)
    }

    /// Runs it against `c`, with `input` on its stdin.
    pub fn output_with_input(&self, c: &Containerd, input: Option<&[u8]>) -> Result<Output> {
        let args = self.args();
        c.ctr_with_input(&args.iter().map(String::as_str).collect::<Vec<_>>(), input)
    }

    /// Runs it, failing with ctr's stderr unless it succeeds; returns its stdout.
    pub fn ok(&self, c: &Containerd) -> Result<String> {
        let out = self.output(c)?;
        ensure!(
            out.status.success(),
            "{} {}: {}",
            self.runtime,
            self.id,
            text(&out.stderr)
        );
        Ok(text(&out.stdout))
    }

    /// [`CtrRun::ok`] of a detached container (which then runs); returns its id.
    pub fn start(&self, c: &Containerd) -> Result<String> {
        self.ok(c)?;
        Ok(self.id.clone())
    }

    /// Runs it to its end (a `--rm` run) and checks that the container left nothing behind;
    /// returns what it showed.
    pub fn seen(&self, c: &Containerd) -> Result<Seen> {
        let out = self.output(c)?;
        assert_clean(c, &self.id, &self.id);
        Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
    }

    /// Runs a container that must fail (to be created, or to run its process): fails if it
    /// succeeded; removes what ctr left of it and checks that nothing else is left; returns
    /// ctr's exit code and error output.
    pub fn failure(&self, c: &Containerd) -> Result<(i32, String)> {
        let out = self.output(c)?;
        ensure!(
            !out.status.success(),
            "{} {:?} succeeded",
            self.runtime,
            self.args()
        );
        assert_clean(c, &self.id, &self.id);
        let _ = c.ctr(&["container", "rm", &self.id]);
        Ok((out.status.code().unwrap_or(-1), text(&out.stderr)))
    }
}

/// A grouped shim (a pod's shape): an anchor container started with the group annotation
/// (`io.containerd.nvidia.v2.group`), which other containers join.
#[derive(Debug)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// The annotation that puts a container in the group.
    pub annotation: String,
    /// The anchor container's id.
    pub anchor: String,
}

impl Group {
    /// Starts the anchor of a fresh group `prefix-…`, running `cmd` detached.
    pub fn start(c: &Containerd, prefix: &str, cmd: &[&str]) -> Result<Self> {
        let name = unique_id(prefix);
        let annotation = format!("io.containerd.nvidia.v2.group={name}");
        let anchor = CtrRun::new("anchor")
            .detach()
            .annotation(&annotation)
            .cmd(cmd)
            .start(c)?;
        Ok(Self {
            name,
            annotation,
            anchor,
        })
    }

    /// A `ctr run` of a fresh container of the group, with `flags`.
    pub fn run(&self, flags: &[&str]) -> CtrRun {
        CtrRun::new("member")
            .annotation(&self.annotation)
            .flags(flags)
    }

    /// Kills and removes the anchor, the group's last container, and checks that nothing of
    /// the group is left.
    pub fn remove(&self, c: &Containerd) -> Result<()> {
        crate::checks::stop_and_remove_in_group(c, &self.anchor, &self.name)
    }
}

/// A directory rootfs at `dir`: the test busybox as `/bin/busybox`, `applets` linked to it, and
/// the directories a container needs.
pub fn busybox_rootfs(dir: &Path, applets: &[&str]) -> Result<()> {
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(crate::image::BUSYBOX, dir.join("bin/busybox"))?;
    for applet in applets {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    Ok(())
}

/// `ctr oci spec`'s default spec for container `id` with root `root`, the process `args` (with
/// `PATH=/bin`) and the cgroup `/nvtest/<id>`: to adjust, write and run with
/// [`CtrRun::spec`] (or hand to a shim in a bundle).
pub fn oci_spec(c: &Containerd, id: &str, root: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let default = c.ctr(&["oci", "spec"])?;
    let mut spec: serde_json::Value = serde_json::from_slice(&default.stdout)?;
    spec["root"] = serde_json::json!({ "path": root });
    spec["process"]["args"] = serde_json::json!(args);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/nvtest/{id}"));
    Ok(spec)
}

/// A container from an OCI spec of its own over a directory rootfs holding busybox, run with
/// `ctr run --config`: adjust [`OwnSpec::spec`], then run [`OwnSpec::run`].
#[derive(Debug)]
pub struct OwnSpec {
    /// `ctr oci spec`'s defaults with the rootfs, the process and the cgroup set.
    pub spec: serde_json::Value,
    run: CtrRun,
    dir: tempfile::TempDir,
}

impl OwnSpec {
    /// Container `prefix-…` through `runtime` with `flags` (`-d`, `--rm`), running `args`.
    pub fn new(
        c: &Containerd,
        (prefix, runtime): (&str, &str),
        flags: &[&str],
        args: &[&str],
    ) -> Result<Self> {
        let run = CtrRun::new(prefix).runtime(runtime).flags(flags);
        let dir = tempfile::tempdir()?;
        let rootfs = dir.path().join("rootfs");
        busybox_rootfs(&rootfs, &[])?;
        let spec = oci_spec(c, run.id(), &rootfs, args)?;
        Ok(Self { spec, run, dir })
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.run.id()
    }

    /// The `ctr run` of the container, its spec as it is now written.
    pub fn run(&self) -> Result<CtrRun> {
        let file = self.dir.path().join("config.json");
        std::fs::write(&file, serde_json::to_vec(&self.spec)?)?;
        Ok(self.run.clone().spec(&file))
    }
}
