//! An exec'd process keeps the container's confinement (issue 14): the same seccomp filter,
//! capability sets, no_new_privileges, user and groups, umask, limits, OOM score and working
//! directory as under the runc shim, for the same container run the same way in the same
//! test.

use anyhow::Result;
use nvidia_shim_integration::checks::{alike, setup, sleeper, stop_and_remove, task_pid, text};
use nvidia_shim_integration::containerd::{Containerd, RUNC, RUNTIME};

/// The `/proc/<pid>/status` lines that say how a process is confined.
const CONFINEMENT: [&str; 13] = [
    "Umask",
    "Uid",
    "Gid",
    "Groups",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NSpid",
];

fn confinement(status: &str) -> Vec<String> {
    status
        .lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| CONFINEMENT.contains(&k) && k != "NSpid")
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What the init and two exec'd processes of a container started with `run_flags` report,
/// through `runtime`.
fn observe(c: &Containerd, runtime: &str, run_flags: &[&str]) -> Result<Vec<String>> {
    let id = sleeper(c, runtime, run_flags)?;
    let mut seen = Vec::new();
    let probe = "cat /proc/self/status; echo cwd=$(pwd); cat /proc/self/oom_score_adj; \
                 grep -E 'open files|processes' /proc/self/limits; \
                 hostname renamed 2>&1 || echo sethostname-refused";
    for (exec_id, extra) in [
        ("as-root", vec![]),
        ("as-nobody", vec!["--user", "65534", "--cwd", "/tmp"]),
    ] {
        let mut exec = vec!["task", "exec", "--exec-id", exec_id];
        exec.extend(extra);
        exec.extend_from_slice(&[&id, "sh", "-c", probe]);
        let out = c.ctr(&exec)?;
        let stdout = text(&out.stdout);
        seen.push(format!("exec {exec_id}"));
        seen.extend(confinement(&stdout));
        seen.extend(
            stdout
                .lines()
                .filter(|l| !l.contains(':') || l.starts_with("Max "))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    // The init process, read from the host.
    let pid = task_pid(c, &id).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    seen.push("init".to_owned());
    seen.extend(confinement(&status));
    stop_and_remove(c, &id)?;
    Ok(seen)
}

#[test]
fn exec_keeps_the_containers_seccomp_capabilities_and_identity_as_under_runc() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // containerd's default seccomp profile, one capability dropped.
    let flags = ["--seccomp", "--cap-drop", "CAP_NET_RAW"];
    let ours = alike("observed", [RUNTIME, RUNC], |r| observe(&c, r, &flags))?;
    assert!(ours.contains(&"Seccomp: 2".to_owned()), "{ours:#?}");
    assert!(
        ours.contains(&"sethostname-refused".to_owned()),
        "the filter applies to exec: {ours:#?}"
    );
    // Without no_new_privileges (Kubernetes' default: allowPrivilegeEscalation), loading the
    // filter needs CAP_SYS_ADMIN, which the process must not keep.
    let flags = ["--seccomp", "--allow-new-privs"];
    let ours = alike("observed", [RUNTIME, RUNC], |r| observe(&c, r, &flags))?;
    assert!(ours.contains(&"NoNewPrivs: 0".to_owned()), "{ours:#?}");
    assert!(ours.contains(&"Seccomp: 2".to_owned()), "{ours:#?}");
    Ok(())
}

#[test]
fn a_custom_profile_that_blocks_sethostname_binds_exec_too() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // Everything allowed but sethostname, which fails with EPERM; the container keeps
    // CAP_SYS_ADMIN (privileged), so only the filter can refuse it.
    let profile = c.dir().join("no-sethostname.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )?;
    let profile = profile.display().to_string();
    let flags = [
        "--privileged",
        "--seccomp",
        "--seccomp-profile",
        profile.as_str(),
    ];
    let ours = alike("observed", [RUNTIME, RUNC], |r| observe(&c, r, &flags))?;
    assert!(
        ours.contains(&"sethostname-refused".to_owned()),
        "{ours:#?}"
    );
    Ok(())
}
