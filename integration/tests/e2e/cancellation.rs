//! A Create whose caller gives up (a short client deadline: containerd passes it on to the
//! shim, whose request is then cancelled) leaves nothing behind, under this shim as under the
//! runc shim (issue 14).

use anyhow::Result;
use std::time::Duration;

use nvidia_shim_integration::checks::{eventually, remove_leftover, setup, wait_clean};
use nvidia_shim_integration::command::answer;
use nvidia_shim_integration::containerd::{RUNC, RUNTIME};
use nvidia_shim_integration::ctr_run::CtrRun;
use nvidia_shim_integration::leftovers::processes_in_cgroup_named;

#[test]
fn a_create_cancelled_by_its_deadline_leaves_nothing() -> Result<()> {
    let Some(c) = setup() else { return Ok(()) };
    // Deadlines that end the request at different points of Create (the whole takes some
    // tens of milliseconds), and one long enough to succeed.
    let mut outcomes = Vec::new();
    for runtime in [RUNTIME, RUNC] {
        for ms in [2, 8, 15, 25, 40, 60, 90, 140, 5000] {
            let run = CtrRun::new("deadline").timeout(&format!("{ms}ms"));
            let run = run.runtime(runtime).rm().cmd(&["true"]);
            let answer = answer(&run.output(&c)?, "ran");
            let id = run.id();
            // What the client could not finish, as a user would: remove the task and the
            // container (either may already be gone).
            let _ = c.ctr(&["task", "kill", "-s", "SIGKILL", id]);
            remove_leftover(&c, id);
            let left = wait_clean(&c, id, id, Duration::from_secs(10)).err();
            let _ = eventually("no process of the container", || {
                processes_in_cgroup_named(id).is_empty()
            });
            let processes = processes_in_cgroup_named(id);
            outcomes.push(format!(
                "{runtime} {ms} ms: {answer}; left: {} {processes:?}",
                left.as_deref().unwrap_or("nothing")
            ));
            if runtime == RUNTIME {
                let log: Vec<String> = c
                    .log()
                    .lines()
                    .filter(|l| l.contains(id))
                    .map(str::to_owned)
                    .collect();
                // What was left comes first: CI keeps only the head of a long message.
                assert!(
                    left.is_none(),
                    "{runtime} {ms} ms: {answer}; left: {left:?}\n{log:#?}"
                );
                assert_eq!(processes, Vec::<i32>::new(), "{runtime} {ms} ms: {answer}");
            }
        }
    }
    // The runc shim's leftovers are shown for the record (it can leave its socket).
    eprintln!("{outcomes:#?}");
    Ok(())
}
