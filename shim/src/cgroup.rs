//! Cgroup reads and writes the shim does in-process (plain cgroupfs file I/O, no fork):
//! statistics converted to containerd's cgroup v1 / v2 metrics messages, the pid list, and
//! resource updates. libcgroups picks the v1, v2 or systemd manager for the host.

use std::collections::HashMap;
use std::path::PathBuf;

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

use crate::error::{chain_to_string, Result, ShimError};

/// A container's cgroup as libcontainer created it.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    id: String,
    path: PathBuf,
    systemd: bool,
}

impl ContainerCgroup {
    /// The cgroup of container `id` at `path` (libcontainer's `cgroup_path`).
    pub fn new(id: &str, path: PathBuf, systemd: bool) -> Self {
        Self {
            id: id.to_owned(),
            path,
            systemd,
        }
    }

    fn err(&self, op: &'static str, err: &dyn std::error::Error) -> ShimError {
        ShimError::Cgroup {
            id: self.id.clone(),
            op,
            message: format!("{}: {}", self.path.display(), chain_to_string(err)),
        }
    }

    fn manager(&self, op: &'static str) -> Result<AnyCgroupManager> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.path.clone(),
            systemd_cgroup: self.systemd,
            container_name: self.id.clone(),
        })
        .map_err(|e| self.err(op, &e))
    }

    /// Statistics as the `Any` containerd expects from `Stats`: `io.containerd.cgroups.v1.Metrics`
    /// on v1 and hybrid hosts, `io.containerd.cgroups.v2.Metrics` on unified ones.
    pub fn metrics(&self) -> Result<Any> {
        let stats = self
            .manager("stats")?
            .stats()
            .map_err(|e| self.err("stats", &e))?;
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
        let pids = self
            .manager("pids")?
            .get_all_pids()
            .map_err(|e| self.err("pids", &e))?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    /// Applies new resource limits (containerd's `Update`).
    pub fn update(&self, resources: &LinuxResources) -> Result<()> {
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
        self.manager("update")?
            .apply(&opt)
            .map_err(|e| self.err("update", &e))
    }
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

/// Decodes `UpdateTaskRequest.resources`: an `Any` whose value is the JSON of an OCI
/// `LinuxResources`, as containerd sends it.
pub fn decode_resources(id: &str, any: &Any) -> Result<LinuxResources> {
    serde_json::from_slice(&any.value).map_err(|e| ShimError::InvalidArgument {
        id: id.to_owned(),
        reason: format!(
            "resources ({}) are not OCI LinuxResources JSON: {e}",
            any.type_url
        ),
    })
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
    fn decodes_resources_json() {
        let any = Any {
            type_url: "/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"memory":{"limit":33554432},"cpu":{"shares":512}}"#.to_vec(),
            ..Default::default()
        };
        let r = decode_resources("c", &any).unwrap();
        assert_eq!(r.memory().as_ref().and_then(|m| m.limit()), Some(33554432));
        let bad = Any {
            value: b"not json".to_vec(),
            ..Default::default()
        };
        assert!(decode_resources("c7", &bad)
            .unwrap_err()
            .to_string()
            .contains("container c7"));
    }
}
