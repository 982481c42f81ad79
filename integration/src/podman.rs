//! A private podman for one test: Debian bookworm's podman 4.3 (installed by
//! `scripts/install-deps.sh`) with its own storage (`--root`, `--runroot`, `--tmpdir`,
//! `overlay` driver), cgroupfs under a cgroup parent of its own (`/nvpodman-<pid>-<n>`), no
//! network (`netns = "none"`), no hooks directory of the host, and an OCI runtime the test
//! picks (`crun` or `runc`).
//!
//! podman 4.3 has no flag for its CDI spec directories: it reads `/etc/cdi` and `/var/run/cdi`.
//! So every podman command runs (through `nsenter`) in a private mount namespace, held by a
//! process of the harness, where `/etc/cdi` shows the test's CDI directory
//! ([`Podman::cdi_dir`]) and `/var/run/cdi` an empty one; a directory the host lacks is made in
//! an overlay of its parent whose upper layer is in the temp dir, so the host's `/etc` and
//! `/run` are never written. The same namespace gives podman's image cache
//! (`/var/lib/containers`) and the OCI runtimes' state dirs (`/run/crun`, `/run/runc`) private
//! directories, and, for crun on a hybrid cgroup host, hides the cgroup v2 hierarchy that
//! crun 1.8 refuses (`hybrid_v2_has_controllers`).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::command::{dir_flags, wait_output, Cli};
use crate::image::ImageSpec;
use crate::leftovers;

/// The mount namespace's set-up, run by `sh` under `unshare --mount --propagation private`:
/// `$1` is the temp dir, `$2` `hide-unified` or `keep-unified` (see `hybrid_v2_has_controllers`).
/// Prints `ready`, then holds the namespace.
const SETUP: &str = r#"set -eu
T=$1
# On a hybrid host whose cgroup v2 hierarchy has controllers crun 1.8 refuses every container;
# podman's containers use the v1 hierarchies (cgroupfs) either way, so crun and podman are
# shown an empty tmpfs in its place and see a v1 host (crun still makes its directories
# there, for the v2 line of /proc/self/cgroup: they go with the namespace).
if [ "$2" = hide-unified ]; then
  mount -t tmpfs -o size=64k nvpodman-no-v2 /sys/fs/cgroup/unified
fi
# mask DIR SOURCE: DIR shows SOURCE in this mount namespace; a DIR the host lacks is made in
# an overlay of its parent whose upper layer is under $T.
mask() {
  if [ ! -d "$1" ]; then
    p=$(dirname "$1")
    n=$(echo "$p" | tr / _)
    if [ ! -d "$T/overlay/$n" ]; then
      mkdir -p "$T/overlay/$n/upper" "$T/overlay/$n/work"
      mount -t overlay overlay -o "lowerdir=$p,upperdir=$T/overlay/$n/upper,workdir=$T/overlay/$n/work" "$p"
    fi
    mkdir "$1"
  fi
  mkdir -p "$2"
  mount --bind "$2" "$1"
}
mask /etc/cdi "$T/cdi"
mask /var/run/cdi "$T/cdi-run"
mask /var/lib/containers "$T/var-lib-containers"
mask /run/crun "$T/crun"
mask /run/runc "$T/runc"
echo ready
exec sleep 2147483647
"#;

/// A private podman.
#[derive(Debug)]
pub struct Podman {
    dir: tempfile::TempDir,
    /// The process holding the private mount namespace.
    holder: Option<Child>,
    runtime: String,
    cgroup_parent: String,
}

/// Whether this is a hybrid host whose cgroup v2 hierarchy (`/sys/fs/cgroup/unified`) has
/// controllers. crun 1.8 refuses such a host ("cgroups in hybrid mode not supported, drop all
/// controllers from cgroupv2"), so a podman running crun there sees that hierarchy hidden in
/// its private mount namespace.
fn hybrid_v2_has_controllers() -> bool {
    let unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    fs::read_to_string(unified).is_ok_and(|c| !c.trim().is_empty())
}

impl Podman {
    /// Sets up a private podman whose OCI runtime is `runtime` (`crun` or `runc`).
    pub fn start(runtime: &str) -> Result<Self> {
        if crate::which("podman").is_none() {
            bail!("podman is not installed (scripts/install-deps.sh installs it)");
        }
        let dir = tempfile::Builder::new()
            .prefix("nvpodman")
            .tempdir_in("/tmp")?;
        let d = dir.path();
        for sub in ["cdi", "hooks", "net", "tmp"] {
            fs::create_dir_all(d.join(sub))?;
        }
        // podman raises its own RLIMIT_NPROC to 32768 and asks for nofile=1048576 in every
        // spec, which a root without CAP_SYS_RESOURCE cannot set: limits it can have instead.
        let (nofile, nproc) = (
            hard_limit(libc::RLIMIT_NOFILE),
            hard_limit(libc::RLIMIT_NPROC),
        );
        let nofile = nofile.min(1_048_576);
        let nproc = nproc.min(32_768);
        fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\nnetns = \"none\"\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n"
            ),
        )?;
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\nrunroot = \"{}\"\ngraphroot = \"{}\"\n",
                d.join("run").display(),
                d.join("root").display()
            ),
        )?;
        fs::write(d.join("setup.sh"), SETUP)?;
        let unified = if runtime == "crun" && hybrid_v2_has_controllers() {
            "hide-unified"
        } else {
            "keep-unified"
        };
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(d.join("setup.sh"))
            .arg(d)
            .arg(unified)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn unshare")?;
        let mut ready = [0u8; 6];
        let mut stdout = holder.stdout.take().context("holder stdout")?;
        if stdout.read_exact(&mut ready).is_err() || &ready != b"ready\n" {
            let _ = holder.kill();
            let out = wait_output(&mut holder, Duration::from_secs(5))?;
            bail!(
                "the mount namespace for podman could not be set up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Self {
            dir,
            holder: Some(holder),
            runtime: runtime.to_owned(),
            cgroup_parent: format!("/{}", crate::unique_id("nvpodman")),
        })
    }

    /// The directory podman sees as `/etc/cdi`: CDI specs written here are podman's.
    pub fn cdi_dir(&self) -> PathBuf {
        self.dir.path().join("cdi")
    }

    /// The OCI runtime podman runs containers with.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The cgroup parent of its containers (and their `conmon`s, in `<parent>/conmon`).
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// Loads `image` as `name` (`docker.io/library/x:tag`) with `podman load` of an OCI image
    /// layout archive, tagging it `name` when podman names it otherwise.
    pub fn import(&self, image: &ImageSpec, name: &str) -> Result<()> {
        let archive = self.archive(image, name)?;
        let loaded = self.cli_ok(&["load", "-q", "-i", &archive.display().to_string()])?;
        let _ = fs::remove_file(&archive);
        if self.cli(&["image", "exists", name])?.status.success() {
            return Ok(());
        }
        let got = loaded
            .lines()
            .find_map(|l| l.strip_prefix("Loaded image: "))
            .or_else(|| {
                loaded
                    .lines()
                    .find_map(|l| l.strip_prefix("Loaded image(s): "))
            })
            .with_context(|| format!("podman load said: {loaded}"))?;
        let got = got.split(',').next().unwrap_or_default().trim();
        self.cli_ok(&["tag", got, name])?;
        Ok(())
    }

    /// What its containers left: cgroups under its cgroup parent other than `conmon`'s (empty
    /// once every container is removed), and processes in them.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for dir in leftovers::cgroups_under(&self.cgroup_parent) {
            if dir.file_name().is_some_and(|n| n == "conmon") {
                let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                left.extend(procs.lines().map(|p| format!("conmon process {p}")));
            } else {
                left.push(format!("cgroup {}", dir.display()));
            }
        }
        left
    }

    /// Removes every container (`podman rm -af -t 0`), kills what is left in its cgroups,
    /// ends the namespace holder and removes its cgroup parent. Idempotent; dropping does it
    /// too.
    pub fn shutdown(&mut self) {
        if self.holder.is_some() {
            let _ = self.cli(&["rm", "-a", "-f", "-t", "0"]);
        }
        leftovers::remove_cgroups_under(&self.cgroup_parent);
        if let Some(mut holder) = self.holder.take() {
            let _ = holder.kill();
            let _ = holder.wait();
        }
        // The namespace, and podman's overlay mounts in it, ends with its last process: what
        // podman made under the temp dir is ordinary files then.
    }
}

impl Cli for Podman {
    const NAME: &'static str = "podman";

    /// The temp dir holding everything.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `podman` command in the private mount namespace with the private storage; `run` and
    /// `create` get `--cgroup-parent` and `--pull never` after them.
    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let holder = self.holder.as_ref().map(Child::id).unwrap_or(0);
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg("--")
            .arg("podman")
            .args(dir_flags(
                d,
                &[
                    ("--root", "root"),
                    ("--runroot", "run"),
                    ("--tmpdir", "tmp"),
                ],
            ))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", &self.runtime])
            .args(["--storage-driver", "overlay", "--events-backend", "file"])
            .args(dir_flags(
                d,
                &[("--hooks-dir", "hooks"), ("--network-config-dir", "net")],
            ));
        match args.split_first() {
            Some((&sub, rest)) if sub == "run" || sub == "create" => {
                c.arg(sub)
                    .args(["--cgroup-parent", &self.cgroup_parent, "--pull", "never"])
                    .args(rest);
            }
            _ => {
                c.args(args);
            }
        }
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"));
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn hard_limit(resource: libc::__rlimit_resource_t) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into r, a valid rlimit.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return 1024;
    }
    r.rlim_max
}
