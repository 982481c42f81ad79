//! A private Docker daemon for one test, on top of the test's private containerd: Debian
//! trixie's `dockerd` 26 ([`crate::debian_packages::docker`]) with its own data root, exec
//! root, socket, pidfile and `daemon.json` under a temp dir, driving the test's containerd
//! (namespace `moby`) through `--containerd`, so a `runtimeType: io.containerd.nvidia.v2`
//! runtime resolves to the shim under test on that containerd's PATH. No bridge, no iptables,
//! no IP forwarding: containers get a network namespace of their own and no network. Stopped by
//! its PID (SIGTERM, then SIGKILL) when dropped, with what a failed test left of it: containers,
//! mounts under its dirs, and its cgroup parent (`/nvdocker-<pid>-<n>`, its own per daemon).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::command::{dir_flags, stdout_ok, terminate, Cli, SYSTEM_PATH};
use crate::containerd::Containerd;
use crate::debian_packages::Unpacked;
use crate::image::ImageSpec;
use crate::leftovers;

/// The containerd namespace dockerd keeps its containers in.
pub const DOCKER_NAMESPACE: &str = "moby";
/// Where dockerd always makes its plugin socket directory (not under `--exec-root`).
const PLUGINS_DIR: &str = "/run/docker/plugins";

/// A running private dockerd.
#[derive(Debug)]
pub struct Docker<'a> {
    containerd: &'a Containerd,
    dir: tempfile::TempDir,
    child: Option<Child>,
    docker: PathBuf,
    cgroup_parent: String,
    /// `/run/docker` and `/run/docker/plugins` when this daemon made them (removed if empty).
    made_run_dirs: Vec<PathBuf>,
}

impl<'a> Docker<'a> {
    /// Starts dockerd from `release` against `containerd` with `daemon_json` (a JSON object;
    /// empty for none) as its `--config-file`, and waits until `docker version` answers. The
    /// harness adds `cgroup-parent` (its own), `exec-opts` (`native.cgroupdriver=cgroupfs`)
    /// and `shutdown-timeout` (2 s) where `daemon_json` has none. When `configure` is not
    /// empty, `daemon.json` is first edited by the shim under test as an operator does:
    /// `containerd-shim-nvidia-v2 configure docker --config <file> CONFIGURE...` (e.g.
    /// `--runtime-name nvidia --config-path-option <shim config>`: the entry `runtimes.nvidia`
    /// with `runtimeType: io.containerd.nvidia.v2` and the shim's `options.ConfigPath`), with
    /// the hook programs linked in [`Docker::hooks_dir`].
    pub fn start(
        release: &Unpacked,
        containerd: &'a Containerd,
        daemon_json: &str,
        configure: &[&str],
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("nvdock")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        let cgroup_parent = format!("/{}", crate::unique_id("nvdocker"));
        let mut json: Value = if daemon_json.trim().is_empty() {
            Value::Object(Map::new())
        } else {
            serde_json::from_str(daemon_json).context("daemon_json is not JSON")?
        };
        let obj = json
            .as_object_mut()
            .context("daemon_json is not a JSON object")?;
        obj.entry("cgroup-parent")
            .or_insert_with(|| Value::from(cgroup_parent.as_str()));
        obj.entry("exec-opts")
            .or_insert_with(|| serde_json::json!(["native.cgroupdriver=cgroupfs"]));
        obj.entry("shutdown-timeout")
            .or_insert_with(|| Value::from(2));
        let cgroup_parent = obj
            .get("cgroup-parent")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let config = d.join("daemon.json");
        fs::write(&config, serde_json::to_string_pretty(&json)?)?;
        // Where configure links the hook programs Docker looks up: the test's own directory,
        // first on dockerd's PATH (never the host's /usr/local/bin or /usr/bin).
        let hooks = d.join("hooks");
        fs::create_dir_all(&hooks)?;
        if !configure.is_empty() {
            // On a PATH of the test's own directories and the system's: the hooks it links
            // are the test's, whatever /usr/local/bin holds.
            let path = format!(
                "{}:{}:{}:{SYSTEM_PATH}",
                hooks.display(),
                release.sbin_dir().display(),
                release.bin_dir().display()
            );
            let out = Command::new(crate::shim_binary())
                .args(["configure", "docker", "--config"])
                .arg(&config)
                .arg("--hook-dir")
                .arg(&hooks)
                .arg("--cdi-hook-path")
                .arg(hooks.join("nvidia-cdi-hook"))
                .arg("--docker-socket")
                .arg(d.join("docker.sock"))
                .args(configure)
                .env("PATH", path)
                .output()
                .context("run configure docker")?;
            stdout_ok(format_args!("configure docker {configure:?}"), &out)?;
        }
        let made_run_dirs = [Path::new("/run/docker"), Path::new(PLUGINS_DIR)]
            .into_iter()
            .filter(|p| !p.exists())
            .map(Path::to_path_buf)
            .collect();
        let path_env = format!(
            "{}:{}:{}:{}:{}",
            hooks.display(),
            containerd.shim_dir().display(),
            release.sbin_dir().display(),
            release.bin_dir().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log = fs::File::create(d.join("dockerd.log"))?;
        let mut dockerd = Command::new(release.sbin_dir().join("dockerd"));
        // A root packed for another machine brings the libraries dockerd needs beyond glibc.
        let libs = release.root.join("lib");
        if libs.is_dir() {
            dockerd.env("LD_LIBRARY_PATH", libs);
        }
        let child = dockerd
            .arg("--containerd")
            .arg(containerd.socket())
            .args(dir_flags(
                d,
                &[
                    ("--data-root", "data"),
                    ("--exec-root", "exec"),
                    ("--pidfile", "dockerd.pid"),
                ],
            ))
            .arg("-H")
            .arg(format!("unix://{}", d.join("docker.sock").display()))
            .args([
                "--bridge",
                "none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--userland-proxy=false",
            ])
            .arg("--config-file")
            .arg(&config)
            .env("PATH", &path_env)
            .env("DOCKER_CONFIG", d.join("cli"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn dockerd")?;
        let mut me = Self {
            containerd,
            dir,
            child: Some(child),
            docker: release.bin_dir().join("docker"),
            cgroup_parent,
            made_run_dirs,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = me.child.as_mut().map(Child::try_wait) {
                me.child = None;
                bail!("dockerd exited ({status}); log:\n{}", me.log());
            }
            if me.socket().exists()
                && me
                    .cli(&["version"])
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            {
                return Ok(me);
            }
            if Instant::now() > deadline {
                bail!("dockerd did not come up in 60 s; log:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// dockerd (with `daemon_json`) whose runtime `runtime` is this shim, registered by
    /// `configure docker` with the shim configuration file `shim_config` (and `configure`'s
    /// flags besides), with the busybox image loaded.
    pub fn with_runtime(
        release: &Unpacked,
        containerd: &'a Containerd,
        daemon_json: &str,
        (runtime, shim_config): (&str, &str),
        configure: &[&str],
    ) -> Result<Self> {
        let mut args = vec![
            "--runtime-name",
            runtime,
            "--config-path-option",
            shim_config,
        ];
        args.extend_from_slice(configure);
        let d = Self::start(release, containerd, daemon_json, &args)?;
        d.import(&ImageSpec::busybox()?, crate::containerd::BUSYBOX_IMAGE)?;
        Ok(d)
    }

    /// Where `configure docker` linked the programs dockerd looks up (`nvidia-container-runtime-hook`,
    /// `nvidia-cdi-hook`): first on dockerd's `PATH`.
    pub fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("hooks")
    }

    /// dockerd's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    /// dockerd's `--data-root`.
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The `daemon.json` dockerd was started with (after `configure docker`, if any).
    pub fn daemon_json(&self) -> String {
        fs::read_to_string(self.dir.path().join("daemon.json")).unwrap_or_default()
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// dockerd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The cgroup parent of its containers (`/nvdocker-...`): a container's cgroup is
    /// `<parent>/<full id>` under each v1 controller or the v2 root.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The containerd dockerd drives.
    pub fn containerd(&self) -> &Containerd {
        self.containerd
    }

    /// `docker run --cidfile F ARGS...` (ARGS as after `run`: options, image, command);
    /// returns its output and the container's full id (for [`Docker::assert_clean`], also
    /// after `--rm`).
    pub fn run(&self, args: &[&str]) -> Result<(Output, String)> {
        let cidfile = self
            .dir
            .path()
            .join(format!("{}.cid", crate::unique_id("run")));
        let cid = cidfile.display().to_string();
        let mut full = vec!["run", "--cidfile", cid.as_str()];
        full.extend_from_slice(args);
        let mut out = self.cli(&full)?;
        out.stderr = without_host_warnings(&out.stderr);
        let id = fs::read_to_string(&cidfile)
            .with_context(|| {
                format!(
                    "docker run wrote no container id: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .trim()
            .to_owned();
        Ok((out, id))
    }

    /// `docker inspect -f FORMAT ID`, trimmed.
    pub fn inspect(&self, id: &str, format: &str) -> Result<String> {
        self.cli_ok(&["inspect", "-f", format, id])
    }

    /// Loads `image` as `name` (a full reference, `docker.io/library/x:tag`) with `docker
    /// load`: written as an OCI image layout archive plus the `manifest.json` of Docker's own
    /// archive format (dockerd 26 with its graph driver store reads only that one), then
    /// tagged `name` when dockerd loaded it by id only.
    pub fn import(&self, image: &ImageSpec, name: &str) -> Result<()> {
        let archive = self.archive(image, name)?;
        add_docker_manifest(&archive, name)?;
        let loaded = self.cli_ok(&["load", "-i", &archive.display().to_string()])?;
        if let Some(id) = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image ID: "))
        {
            self.cli_ok(&["tag", id.trim(), name])?;
        }
        let _ = fs::remove_file(&archive);
        self.cli_ok(&["image", "inspect", "-f", "{{.Id}}", name])
            .with_context(|| format!("{name} after docker load: {loaded}"))?;
        Ok(())
    }

    /// Waits up to `limit` until container `id` (full id) has left nothing behind: no shim
    /// process serving it, no shim socket, no bundle, no mount under its bundle or its
    /// `containers/<id>` dir, no cgroup; else says what is left.
    pub fn wait_clean(&self, id: &str, limit: Duration) -> Result<(), String> {
        let c = self.containerd;
        let bundle = c
            .state_dir()
            .join("io.containerd.runtime.v2.task")
            .join(DOCKER_NAMESPACE)
            .join(id);
        let parent = self.cgroup_parent.trim_start_matches('/');
        let deadline = Instant::now() + limit;
        loop {
            let mut shims = leftovers::processes_of("containerd-shim-nvidia-v2", id);
            shims.extend(leftovers::processes_of("containerd-shim-runc-v2", id));
            let socket = leftovers::shim_socket(&c.socket(), DOCKER_NAMESPACE, id);
            let mut mounts = leftovers::mounts_under(&bundle);
            mounts.extend(leftovers::mounts_under(
                &self.data_root().join("containers").join(id),
            ));
            let cgroups = leftovers::cgroups_of(parent, id);
            if shims.is_empty()
                && !socket.exists()
                && mounts.is_empty()
                && cgroups.is_empty()
                && !bundle.exists()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "shims {shims:?}, socket {socket:?} exists {}, mounts {mounts:?}, cgroups {cgroups:?}, bundle dir {}",
                    socket.exists(),
                    bundle.exists()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that container `id` left nothing behind (see [`Docker::wait_clean`]), within
    /// 10 s; the panic carries dockerd's and containerd's logs.
    pub fn assert_clean(&self, id: &str) {
        if let Err(left) = self.wait_clean(id, Duration::from_secs(10)) {
            panic!(
                "docker container {id} left: {left}\ndockerd log:\n{}\ncontainerd log:\n{}",
                self.log(),
                self.containerd.log()
            );
        }
    }

    /// What no container of this daemon holds any more once all are removed: shim processes
    /// of its containerd, mounts below the data root (overlays, shm), cgroups under the cgroup
    /// parent. Empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = leftovers::shims_of(&self.containerd.socket())
            .into_iter()
            .map(|p| format!("shim process {p}"))
            .collect();
        // dockerd keeps its data root as a mount of its own (for its propagation) while it
        // runs: only mounts below it are its containers'.
        let data_root = self.data_root();
        left.extend(
            leftovers::mounts_under(&data_root.join(""))
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left.extend(
            leftovers::cgroups_under(&self.cgroup_parent)
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
        left
    }

    /// Removes every container (`docker rm -f`), stops dockerd (SIGTERM to its PID, SIGKILL
    /// after 20 s), then kills what is left of its containers in containerd and in its cgroup
    /// parent, unmounts what is left under its dir and removes its cgroup parent. Idempotent;
    /// dropping does it too.
    pub fn shutdown(&mut self) {
        if self.child.is_some() {
            if let Ok(ids) = self.cli_ok(&["ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let mut args = vec!["rm", "-f"];
                    args.extend(ids);
                    let _ = self.cli(&args);
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(20));
        }
        // Tasks dockerd left in its namespace (their shims then exit), processes in its
        // cgroups, mounts under its dir (overlays, shm, network namespaces) ...
        self.containerd.kill_tasks_in(DOCKER_NAMESPACE);
        leftovers::remove_cgroups_under(&self.cgroup_parent);
        leftovers::unmount_under(self.dir.path());
        // ... and the run dirs it made, when no other daemon uses them.
        for d in self.made_run_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

/// Adds to the OCI layout archive `archive` the `manifest.json` of a Docker archive naming its
/// image (the index's first manifest) `name`: `Config` and `Layers` are the blob paths.
fn add_docker_manifest(archive: &Path, name: &str) -> Result<()> {
    use std::io::Read;
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut tar = tar::Archive::new(fs::File::open(archive)?);
    for e in tar.entries()? {
        let mut e = e?;
        let path = e.path()?.to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data)?;
        entries.push((path, data));
    }
    let blob = |digest: &str| -> Result<&[u8]> {
        let path = format!("blobs/{}", digest.replacen(':', "/", 1));
        entries
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, d)| d.as_slice())
            .with_context(|| format!("{path} is not in the archive"))
    };
    let file = |path: &str| -> Result<Value> {
        let data = entries
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, d)| d.as_slice())
            .with_context(|| format!("{path} is not in the archive"))?;
        Ok(serde_json::from_slice(data)?)
    };
    let index = file("index.json")?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .context("index.json names no manifest")?;
    let manifest: Value = serde_json::from_slice(blob(digest)?)?;
    let path = |d: &Value| -> Result<String> {
        let d = d.as_str().context("a descriptor without digest")?;
        Ok(format!("blobs/{}", d.replacen(':', "/", 1)))
    };
    let layers = manifest["layers"]
        .as_array()
        .context("manifest without layers")?
        .iter()
        .map(|l| path(&l["digest"]))
        .collect::<Result<Vec<_>>>()?;
    let docker_manifest = serde_json::json!([{
        "Config": path(&manifest["config"]["digest"])?,
        "RepoTags": [name],
        "Layers": layers,
    }])
    .to_string();
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice()))
        .chain([("manifest.json", docker_manifest.as_bytes())])
    {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, p, data)?;
    }
    fs::write(archive, b.into_inner()?)?;
    Ok(())
}

impl Cli for Docker<'_> {
    const NAME: &'static str = "docker";

    /// The temp dir holding everything (`daemon.json`, `data`, `exec`, `dockerd.log`).
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `docker` command against this daemon (its own client config dir).
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.docker);
        c.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("cli"));
        c
    }
}

impl Drop for Docker<'_> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What dockerd warns about the host on every `docker run` with the default bridge network,
/// whichever runtime runs the container (the client prints it first on stderr): it follows
/// the host's `net.ipv4.ip_forward`, which the tests leave as they find it and which a CNI
/// bridge of another test may have turned on.
const HOST_WARNINGS: &[&str] = &["WARNING: IPv4 forwarding is disabled. Networking will not work."];

/// `stderr` without the lines of [`HOST_WARNINGS`].
fn without_host_warnings(stderr: &[u8]) -> Vec<u8> {
    stderr
        .split_inclusive(|b| *b == b'\n')
        .filter(|line| {
            let line = String::from_utf8_lossy(line);
            !HOST_WARNINGS.contains(&line.trim_end())
        })
        .flatten()
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_warning_lines_are_dropped() {
        let stderr = b"WARNING: IPv4 forwarding is disabled. Networking will not work.\nerr\nWARNING: other\n";
        assert_eq!(without_host_warnings(stderr), b"err\nWARNING: other\n");
        assert_eq!(without_host_warnings(b"no newline"), b"no newline");
    }
}
