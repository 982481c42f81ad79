//! Cgroup reads and writes the shim does in-process (plain cgroupfs file I/O, no fork):
//! statistics converted to containerd's cgroup v1 / v2 metrics messages, the pid list, and
//! resource updates. libcgroups picks the v1, v2 or systemd manager for the host. Also the
//! removal of an emptied cgroup, which the shim does without libcgroups' manager, and, on a
//! hybrid host, the `name=systemd` and unified (`0::`) hierarchies libcontainer leaves out
//! (runc places a container's processes there too; systemd in containers and tools reading the
//! unified hierarchy depend on it).

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, CgroupSetup,
    ControllerOpt,
};
use libcgroups::stats::Stats;
use oci_spec::runtime::LinuxResources;
use procfs::process::MountInfo;

use crate::error::{chain_to_string, Result, ShimError};
use crate::runtime::mountinfo::cgroup_mounts;

/// A container's cgroup as libcontainer created it.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    id: String,
    path: PathBuf,
    systemd: bool,
    /// The execs in flight and the `pids.max` to put back after them, shared by every clone.
    exec_room: Arc<Mutex<ExecRoomState>>,
    /// libcgroups' cgroupfs manager, made on first use and kept ([`Self::with_manager`]).
    manager: Arc<KeptManager>,
}

/// libcgroups' manager between calls (it implements no `Debug`).
#[derive(Default)]
struct KeptManager(Mutex<Option<AnyCgroupManager>>);

impl std::fmt::Debug for KeptManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeptManager")
    }
}

/// What [`ContainerCgroup::make_room_for_exec`] serialises: every change of `pids.max` around
/// execs, so concurrent execs cannot take each other's raised limit for the container's own.
#[derive(Debug, Default)]
struct ExecRoomState {
    /// Execs between their `make_room_for_exec` and the drop of its [`ExecRoom`].
    in_flight: usize,
    /// The container's own limit, read when the first of them began.
    limit: Option<i64>,
}

impl ContainerCgroup {
    /// The cgroup of container `id` at `path` (libcontainer's `cgroup_path`).
    pub fn new(id: &str, path: PathBuf, systemd: bool) -> Self {
        Self {
            id: id.to_owned(),
            path,
            systemd,
            exec_room: Arc::default(),
            manager: Arc::default(),
        }
    }

    fn exec_room(&self) -> MutexGuard<'_, ExecRoomState> {
        self.exec_room
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, op: &'static str, err: &dyn std::error::Error) -> ShimError {
        ShimError::Cgroup {
            id: self.id.clone(),
            op,
            message: format!("{}: {}", self.path.display(), chain_to_string(err)),
        }
    }

    fn new_manager(&self, op: &'static str) -> Result<AnyCgroupManager> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: self.systemd,
            container_name: self.id.clone(),
        })
        .map_err(|e| self.err(op, &e))
    }

    /// Runs `f` on libcgroups' manager of the cgroup. A cgroupfs manager is made once and kept
    /// while the calls on it succeed: making one looks up every controller's hierarchy (on
    /// cgroup v1, a mountinfo and a `/proc/self/cgroup` read per controller, which grows with
    /// the host's mounts), and the paths it finds do not change while the container lives;
    /// containerd asks for `Stats` periodically under CRI. The systemd driver's manager holds
    /// a D-Bus connection, so it is made for each call, as before.
    fn with_manager<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&AnyCgroupManager) -> Result<T>,
    ) -> Result<T> {
        if self.systemd {
            return f(&self.new_manager(op)?);
        }
        let mut kept = self
            .manager
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let manager = match kept.take() {
            Some(manager) => manager,
            None => self.new_manager(op)?,
        };
        let result = f(&manager);
        // A failure may come from a manager made at a bad moment (libcgroups leaves out a
        // controller whose lookup failed): the next call makes a new one.
        if result.is_ok() {
            *kept = Some(manager);
        }
        result
    }

    /// Statistics as the `Any` containerd expects from `Stats`: `io.containerd.cgroups.v1.Metrics`
    /// on v1 and hybrid hosts, `io.containerd.cgroups.v2.Metrics` on unified ones.
    pub fn metrics(&self) -> Result<Any> {
        let stats = self.with_manager("stats", |m| m.stats().map_err(|e| self.err("stats", &e)))?;
        let message: Box<dyn MessageDyn> = match libcgroups::common::get_cgroup_setup() {
            Ok(CgroupSetup::Unified) => Box::new(to_v2(&stats)),
            _ => Box::new(to_v1(&stats)),
        };
        containerd_shim::util::convert_to_any(message).map_err(|e| ShimError::Cgroup {
            id: self.id.clone(),
            op: "stats",
            message: e.to_string(),
        })
    }

    /// Pids of every process in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let pids = self.with_manager("pids", |m| {
            m.get_all_pids().map_err(|e| self.err("pids", &e))
        })?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Applies new resource limits (containerd's `Update`). A new pids limit that arrives
    /// while execs are being made room for becomes the limit they put back.
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
        let mut room = self.exec_room();
        self.apply(resources)?;
        let new_limit = resources.pids().as_ref().map(|p| p.limit());
        if let (Some(limit), true) = (new_limit, room.in_flight > 0) {
            room.limit = (limit > 0).then_some(limit);
            if let (Some(file), Some(limit)) = (self.pids_max_file(), room.limit) {
                self.write_room(&file, limit, room.in_flight);
            }
        }
        Ok(())
    }

    fn apply(&self, resources: &LinuxResources) -> Result<()> {
        let opt = ControllerOpt {
            resources,
            disable_oom_killer: resources
                .memory()
                .as_ref()
                .and_then(|m| m.disable_oom_killer())
                .unwrap_or(false),
            oom_score_adj: None,
            freezer_state: None,
        };
        self.with_manager("update", |m| {
            m.apply(&opt).map_err(|e| self.err("update", &e))
        })
    }

    /// Removes the cgroup's directories once its processes are gone: the one directory on a
    /// cgroup v2 host; on v1, one per hierarchy of a controller libcontainer uses.
    ///
    /// This is libcgroups' `remove` for the case where there is nothing to kill, on the
    /// process's cgroup mount table ([`cgroup_mounts`]): libcgroups' v1 manager reads
    /// mountinfo and `/proc/self/cgroup` once per controller, about 2 ms here and more on a
    /// host with many mounts, and libcontainer runs it in a forked worker. A directory that
    /// still holds a process fails the call (`EBUSY`); the caller then goes through
    /// libcontainer, which kills and retries. Directories already gone are skipped, so a
    /// retry is harmless.
    pub fn remove_emptied(&self) -> Result<()> {
        let fail = |message: String| ShimError::Cgroup {
            id: self.id.clone(),
            op: "remove",
            message,
        };
        if self.systemd {
            return Err(fail("the systemd driver owns this cgroup".into()));
        }
        let relative = relative_cgroup_path(&self.path).ok_or_else(|| {
            fail(format!(
                "{}: not a plain cgroup path below the root",
                self.path.display()
            ))
        })?;
        let dirs = match libcgroups::common::get_cgroup_setup() {
            Ok(CgroupSetup::Unified) => {
                vec![Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT).join(relative)]
            }
            _ => {
                let mounts =
                    cgroup_mounts().map_err(|e| fail(format!("reading the cgroup mounts: {e}")))?;
                let mut dirs = v1_dirs(&mounts, &relative);
                dirs.extend(hybrid_dirs(&mounts, &relative));
                dirs
            }
        };
        remove_dirs(&dirs).map_err(fail)
    }

    /// The cgroup's directories in the `name=systemd` and unified hierarchies of a hybrid
    /// host (none on a unified host or under the systemd driver, which places them itself).
    pub fn hybrid(&self) -> Vec<PathBuf> {
        if self.systemd
            || matches!(
                libcgroups::common::get_cgroup_setup(),
                Ok(CgroupSetup::Unified)
            )
        {
            return Vec::new();
        }
        let (Some(relative), Ok(mounts)) = (relative_cgroup_path(&self.path), cgroup_mounts())
        else {
            return Vec::new();
        };
        hybrid_dirs(&mounts, &relative)
    }

    /// Moves `pid` into the cgroup's `name=systemd` and unified hierarchies on a hybrid host,
    /// creating the directories, as runc places a container's processes.
    pub fn join_hybrid(&self, pid: i32) -> Result<()> {
        for dir in self.hybrid() {
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()))
                .map_err(|e| ShimError::Cgroup {
                    id: self.id.clone(),
                    op: "join",
                    message: format!("{}: {e}", dir.display()),
                })?;
        }
        Ok(())
    }

    /// The cgroup's `pids.max` file (cgroupfs driver only).
    fn pids_max_file(&self) -> Option<PathBuf> {
        if self.systemd {
            return None;
        }
        let relative = relative_cgroup_path(&self.path)?;
        if matches!(
            libcgroups::common::get_cgroup_setup(),
            Ok(CgroupSetup::Unified)
        ) {
            return Some(
                Path::new(libcgroups::common::DEFAULT_CGROUP_ROOT)
                    .join(relative)
                    .join("pids.max"),
            );
        }
        cgroup_mounts()
            .ok()?
            .iter()
            .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("pids"))
            .map(|m| m.mount_point.join(relative).join("pids.max"))
    }

    /// Sets `pids.max` to `limit`.
    pub fn set_pids_max(&self, limit: i64) -> Result<()> {
        let file = self.pids_max_file().ok_or_else(|| ShimError::Cgroup {
            id: self.id.clone(),
            op: "update",
            message: "no pids controller".to_owned(),
        })?;
        std::fs::write(&file, limit.to_string()).map_err(|e| ShimError::Cgroup {
            id: self.id.clone(),
            op: "update",
            message: format!("{}: {e}", file.display()),
        })
    }

    /// Makes room under a set `pids.max` for an exec: runc moves its `runc init` into the
    /// cgroup (a move the pids controller does not count against the limit) and execs there,
    /// so an exec into a container at its limit is admitted (whenever the move lands after
    /// runc init's own forks and threads, as it does where migrations wait for the kernel);
    /// libcontainer's intermediate process moves in and then forks the new one, which the
    /// limit would refuse. Raises the limit to the count
    /// plus two per exec in flight, until the returned room is dropped; the last exec in
    /// flight puts the container's own limit back. Blocks (cgroup files); `None` when there
    /// is no limit to make room under.
    pub fn make_room_for_exec(&self) -> Option<ExecRoom> {
        let file = self.pids_max_file()?;
        let mut room = self.exec_room();
        if room.in_flight == 0 {
            room.limit = std::fs::read_to_string(&file).ok()?.trim().parse().ok();
        }
        let limit = room.limit?;
        room.in_flight += 1;
        self.write_room(&file, limit, room.in_flight);
        Some(ExecRoom {
            cgroup: self.clone(),
            file,
        })
    }

    /// Sets `pids.max` to the larger of `limit` and the count plus two per exec in flight.
    fn write_room(&self, file: &Path, limit: i64, in_flight: usize) {
        let current: Option<i64> = std::fs::read_to_string(file.with_file_name("pids.current"))
            .ok()
            .and_then(|c| c.trim().parse().ok());
        let extra = 2 * i64::try_from(in_flight).unwrap_or(i64::MAX / 4);
        let room = current.map_or(limit, |c| limit.max(c.saturating_add(extra)));
        if let Err(e) = std::fs::write(file, room.to_string()) {
            log::warn!("container {}: {}: {e}", self.id, file.display());
        }
    }
    /// Removes the cgroup's `name=systemd` and unified directories of a hybrid host, which
    /// libcontainer's delete does not know of. A busy one (a killed process not gone yet) is
    /// retried for a short while, then left; a missing one is no error. Blocks.
    pub fn remove_hybrid(&self) {
        let dirs = self.hybrid();
        let mut result = remove_dirs(&dirs);
        for _ in 0..HYBRID_REMOVE_TRIES {
            if result.is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            result = remove_dirs(&dirs);
        }
        if let Err(e) = result {
            log::warn!("container {}: cgroup remove failed: {e}", self.id);
        }
    }
}

/// An exec's room under the container's pids limit (see
/// [`ContainerCgroup::make_room_for_exec`]); dropping it puts the limit back once no other
/// exec is in flight. The drop writes a cgroup file: drop it off the async thread.
#[derive(Debug)]
pub struct ExecRoom {
    cgroup: ContainerCgroup,
    file: PathBuf,
}

impl Drop for ExecRoom {
    fn drop(&mut self) {
        let mut room = self.cgroup.exec_room();
        room.in_flight = room.in_flight.saturating_sub(1);
        if room.in_flight > 0 {
            return;
        }
        if let Some(limit) = room.limit.take() {
            if let Err(e) = std::fs::write(&self.file, limit.to_string()) {
                log::warn!("container {}: {}: {e}", self.cgroup.id, self.file.display());
            }
        }
    }
}

/// How many more times a busy hybrid cgroup directory is tried, 10 ms apart.
const HYBRID_REMOVE_TRIES: usize = 20;

/// On a hybrid host, the cgroup's directory in the `name=systemd` hierarchy and in the unified
/// (cgroup2) one, which hold no controller libcontainer manages.
fn hybrid_dirs(mounts: &[MountInfo], relative: &Path) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| {
            m.fs_type == "cgroup2"
                || (m.fs_type == "cgroup"
                    && m.super_options.get("name").and_then(|v| v.as_deref()) == Some("systemd"))
        })
        .map(|m| m.mount_point.join(relative))
        .collect()
}

/// The cgroup v1 controllers libcontainer's cgroupfs manager creates a container's cgroup in.
const V1_CONTROLLERS: [&str; 12] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "hugetlb",
    "memory",
    "pids",
    "perf_event",
    "blkio",
    "net_prio",
    "net_cls",
    "freezer",
];

/// `path` without its leading `/`, when every other component is a plain name: never the
/// hierarchy root, never `..`.
fn relative_cgroup_path(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => relative.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!relative.as_os_str().is_empty()).then_some(relative)
}

/// The cgroup's directory in each v1 hierarchy that holds one of [`V1_CONTROLLERS`] (the
/// kernel lists a hierarchy's controllers in its super options: `rw,cpu,cpuacct`).
fn v1_dirs(mounts: &[MountInfo], relative: &Path) -> Vec<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fs_type == "cgroup")
        .filter(|m| {
            V1_CONTROLLERS
                .iter()
                .any(|c| m.super_options.contains_key(*c))
        })
        .map(|m| m.mount_point.join(relative))
        .collect()
}

/// `rmdir`s each directory; one already gone is fine.
fn remove_dirs(dirs: &[PathBuf]) -> std::result::Result<(), String> {
    for dir in dirs {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(())
}

fn get(map: &HashMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// Converts libcgroups statistics (read from a v1 hierarchy) into containerd's v1 metrics.
pub fn to_v1(stats: &Stats) -> v1::Metrics {
    let cpu = &stats.cpu;
    let mem = &stats.memory;
    let s = &mem.stats;
    let entry = |d: &libcgroups::stats::MemoryData| v1::MemoryEntry {
        limit: d.limit,
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.fail_count,
        ..Default::default()
    };
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: cpu.usage.usage_total,
                kernel: cpu.usage.usage_kernel,
                user: cpu.usage.usage_user,
                per_cpu: cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: cpu.throttling.periods,
                throttled_periods: cpu.throttling.throttled_periods,
                throttled_time: cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: get(s, "cache"),
            rss: get(s, "rss"),
            rss_huge: get(s, "rss_huge"),
            mapped_file: get(s, "mapped_file"),
            dirty: get(s, "dirty"),
            writeback: get(s, "writeback"),
            pg_pg_in: get(s, "pgpgin"),
            pg_pg_out: get(s, "pgpgout"),
            pg_fault: get(s, "pgfault"),
            pg_maj_fault: get(s, "pgmajfault"),
            inactive_anon: get(s, "inactive_anon"),
            active_anon: get(s, "active_anon"),
            inactive_file: get(s, "inactive_file"),
            active_file: get(s, "active_file"),
            unevictable: get(s, "unevictable"),
            hierarchical_memory_limit: get(s, "hierarchical_memory_limit"),
            hierarchical_swap_limit: get(s, "hierarchical_memsw_limit"),
            total_cache: get(s, "total_cache"),
            total_rss: get(s, "total_rss"),
            total_rss_huge: get(s, "total_rss_huge"),
            total_mapped_file: get(s, "total_mapped_file"),
            total_dirty: get(s, "total_dirty"),
            total_writeback: get(s, "total_writeback"),
            total_pg_pg_in: get(s, "total_pgpgin"),
            total_pg_pg_out: get(s, "total_pgpgout"),
            total_pg_fault: get(s, "total_pgfault"),
            total_pg_maj_fault: get(s, "total_pgmajfault"),
            total_inactive_anon: get(s, "total_inactive_anon"),
            total_active_anon: get(s, "total_active_anon"),
            total_inactive_file: get(s, "total_inactive_file"),
            total_active_file: get(s, "total_active_file"),
            total_unevictable: get(s, "total_unevictable"),
            usage: MessageField::some(entry(&mem.memory)),
            swap: MessageField::some(entry(&mem.memswap)),
            kernel: MessageField::some(entry(&mem.kernel)),
            kernel_tcp: MessageField::some(entry(&mem.kernel_tcp)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Converts libcgroups statistics (read from the unified hierarchy) into containerd's v2
/// metrics. libcgroups keeps v2 CPU times in microseconds, as `cpu.stat` has them.
pub fn to_v2(stats: &Stats) -> v2::Metrics {
    let cpu = &stats.cpu;
    let mem = &stats.memory;
    let s = &mem.stats;
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit,
            ..Default::default()
        }),
        cpu: MessageField::some(v2::CPUStat {
            usage_usec: cpu.usage.usage_total,
            user_usec: cpu.usage.usage_user,
            system_usec: cpu.usage.usage_kernel,
            nr_periods: cpu.throttling.periods,
            nr_throttled: cpu.throttling.throttled_periods,
            throttled_usec: cpu.throttling.throttled_time,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: get(s, "anon"),
            file: get(s, "file"),
            kernel_stack: get(s, "kernel_stack"),
            slab: get(s, "slab"),
            sock: get(s, "sock"),
            shmem: get(s, "shmem"),
            file_mapped: get(s, "file_mapped"),
            file_dirty: get(s, "file_dirty"),
            file_writeback: get(s, "file_writeback"),
            anon_thp: get(s, "anon_thp"),
            inactive_anon: get(s, "inactive_anon"),
            active_anon: get(s, "active_anon"),
            inactive_file: get(s, "inactive_file"),
            active_file: get(s, "active_file"),
            unevictable: get(s, "unevictable"),
            slab_reclaimable: get(s, "slab_reclaimable"),
            slab_unreclaimable: get(s, "slab_unreclaimable"),
            pgfault: get(s, "pgfault"),
            pgmajfault: get(s, "pgmajfault"),
            workingset_refault: get(s, "workingset_refault"),
            workingset_activate: get(s, "workingset_activate"),
            workingset_nodereclaim: get(s, "workingset_nodereclaim"),
            pgrefill: get(s, "pgrefill"),
            pgscan: get(s, "pgscan"),
            pgsteal: get(s, "pgsteal"),
            pgactivate: get(s, "pgactivate"),
            pgdeactivate: get(s, "pgdeactivate"),
            pglazyfree: get(s, "pglazyfree"),
            pglazyfreed: get(s, "pglazyfreed"),
            thp_fault_alloc: get(s, "thp_fault_alloc"),
            thp_collapse_alloc: get(s, "thp_collapse_alloc"),
            usage: mem.memory.usage,
            usage_limit: mem.memory.limit,
            max_usage: mem.memory.max_usage,
            swap_usage: mem.memswap.usage,
            swap_limit: mem.memswap.limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stats {
        let mut stats = Stats::default();
        stats.cpu.usage.usage_total = 5_000;
        stats.cpu.usage.usage_user = 3_000;
        stats.cpu.usage.usage_kernel = 2_000;
        stats.cpu.usage.per_core_usage_total = vec![4_000, 1_000];
        stats.cpu.throttling.periods = 7;
        stats.memory.memory.usage = 1 << 20;
        stats.memory.memory.limit = 32 << 20;
        stats.memory.stats.insert("rss".into(), 4096);
        stats.memory.stats.insert("anon".into(), 8192);
        stats.pids.current = 3;
        stats
    }

    #[test]
    fn v1_carries_cpu_memory_pids() {
        let m = to_v1(&sample());
        assert_eq!(m.cpu.usage.total, 5_000);
        assert_eq!(m.cpu.usage.per_cpu, vec![4_000, 1_000]);
        assert_eq!(m.cpu.throttling.periods, 7);
        assert_eq!(m.memory.usage.usage, 1 << 20);
        assert_eq!(m.memory.usage.limit, 32 << 20);
        assert_eq!(m.memory.rss, 4096);
        assert_eq!(m.pids.current, 3);
    }

    #[test]
    fn v2_carries_cpu_memory_pids() {
        let m = to_v2(&sample());
        assert_eq!(m.cpu.usage_usec, 5_000);
        assert_eq!(m.cpu.system_usec, 2_000);
        assert_eq!(m.memory.usage, 1 << 20);
        assert_eq!(m.memory.usage_limit, 32 << 20);
        assert_eq!(m.memory.anon, 8192);
        assert_eq!(m.pids.current, 3);
    }

    #[test]
    fn any_has_containerd_type_url() {
        let any = containerd_shim::util::convert_to_any(Box::new(to_v1(&sample()))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let any = containerd_shim::util::convert_to_any(Box::new(to_v2(&sample()))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    }

    #[test]
    fn a_cgroupfs_manager_is_kept_by_every_clone_while_its_calls_succeed() {
        // The test process's own cgroup: the devices hierarchy's on v1, the unified one's on v2.
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path_in = |hierarchy: fn(&str) -> bool| {
            own.lines().find_map(|l| {
                let mut fields = l.splitn(3, ':').skip(1);
                let controllers = fields.next()?;
                hierarchy(controllers).then(|| fields.next()).flatten()
            })
        };
        let path = path_in(|c| c.split(',').any(|c| c == "devices"))
            .or_else(|| path_in(str::is_empty))
            .unwrap();
        let cgroup = ContainerCgroup::new("own", PathBuf::from(path), false);
        let clone = cgroup.clone();
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(cgroup.pids().unwrap().contains(&me));
        assert!(clone.manager.0.lock().unwrap().is_some());
        // A cgroup that does not exist: the read fails and the manager is not kept.
        let gone = ContainerCgroup::new("gone", PathBuf::from("/nvtest-no-such/gone"), false);
        assert!(gone.pids().is_err());
        assert!(gone.manager.0.lock().unwrap().is_none());
    }

    #[test]
    fn cgroup_paths_below_the_root_only() {
        let rel = |p: &str| relative_cgroup_path(Path::new(p));
        assert_eq!(rel("/default/c1"), Some(PathBuf::from("default/c1")));
        assert_eq!(
            rel("kubepods/pod1/c1"),
            Some(PathBuf::from("kubepods/pod1/c1"))
        );
        assert_eq!(rel("/"), None);
        assert_eq!(rel(""), None);
        assert_eq!(rel("/default/../../etc"), None);
    }

    #[test]
    fn v1_dirs_are_the_controller_hierarchies() {
        let mounts: Vec<MountInfo> = [
            "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755",
            "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct",
            "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory",
            "36 31 0:33 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio",
            "40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd",
            "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw",
            "42 31 0:39 / /sys/fs/cgroup/misc rw,relatime - cgroup cgroup rw,misc",
        ]
        .iter()
        .map(|l| MountInfo::from_line(l).unwrap())
        .collect();
        let dirs = v1_dirs(&mounts, Path::new("default/c1"));
        assert_eq!(
            dirs,
            [
                "/sys/fs/cgroup/cpu,cpuacct/default/c1",
                "/sys/fs/cgroup/memory/default/c1",
                "/sys/fs/cgroup/net_cls,net_prio/default/c1",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            hybrid_dirs(&mounts, Path::new("default/c1")),
            [
                "/sys/fs/cgroup/systemd/default/c1",
                "/sys/fs/cgroup/unified/default/c1",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn removing_skips_missing_dirs_and_stops_at_a_busy_one() {
        let tmp = tempfile::tempdir().unwrap();
        let (empty, gone, busy) = (
            tmp.path().join("a"),
            tmp.path().join("b"),
            tmp.path().join("c"),
        );
        std::fs::create_dir(&empty).unwrap();
        std::fs::create_dir_all(busy.join("child")).unwrap();
        remove_dirs(&[empty.clone(), gone]).unwrap();
        assert!(!empty.exists());
        let err = remove_dirs(std::slice::from_ref(&busy)).unwrap_err();
        assert!(err.contains(&busy.display().to_string()), "{err}");
        assert!(busy.exists());
    }
}
