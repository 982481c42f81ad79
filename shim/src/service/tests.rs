//! The real task service, driven through its ttrpc face (`impl Task`) against the stub
//! runtime and a recording event sender: every Task API method, every state a process goes
//! through, the error paths, with the ttrpc codes containerd sees and the events published.
//! No root, no containerd, no host changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim::api::*;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::shim::oci::ProcessDetails;
use containerd_shim::protos::ttrpc::{Code, Error as TtrpcError, MessageHeader};
use containerd_shim::protos::types::mount::Mount;
use containerd_shim::protos::types::task::Status;
use containerd_shim::{ExitSignal, Task, TtrpcContext, TtrpcResult};

use super::events::{Event, EventSender};
use super::{TaskApi, TaskService};
use crate::task::config::StartConfig;
use crate::task::stub::Stub;
use crate::task::Tasks;
use crate::working_set::IdleTrim;

/// The events the service published, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl EventSender for Recorder {
    fn send(&self, event: Event) {
        self.0.lock().unwrap().push(event);
    }
}

struct Shim {
    api: TaskApi<Stub>,
    tasks: Arc<Tasks<Stub>>,
    events: Arc<Recorder>,
    shutdown: Arc<ExitSignal>,
}

fn shim() -> Shim {
    shim_with(StartConfig::given(
        None,
        nvidia_shim_core::Config::default(),
    ))
}

fn shim_with(config: StartConfig) -> Shim {
    let tasks = Arc::new(Tasks::new(Stub::new(), config));
    let events = Arc::new(Recorder::default());
    let shutdown = Arc::new(ExitSignal::default());
    let service = TaskService::new(
        Arc::clone(&tasks),
        Arc::clone(&events) as Arc<dyn EventSender>,
        Arc::clone(&shutdown),
        IdleTrim::default(),
    );
    Shim {
        api: TaskApi(service),
        tasks,
        events,
        shutdown,
    }
}

/// A Task API request of type `$request`: the named fields from the variables of the same
/// names (strings converted), every other field its default.
macro_rules! request {
    ($request:ident => $($field:ident),+) => {
        $request { $($field: $field.into(),)+ ..Default::default() }
    };
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: MessageHeader::default(),
        metadata: HashMap::new(),
        timeout_nano: 0,
    }
}

/// The ttrpc code of a failed request, with its message.
fn failure<T: std::fmt::Debug>(result: TtrpcResult<T>) -> (Code, String) {
    match result {
        Err(TtrpcError::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("expected a ttrpc status, got {other:?}"),
    }
}

fn code<T: std::fmt::Debug>(result: TtrpcResult<T>) -> Code {
    failure(result).0
}

fn create_request(id: &str) -> CreateTaskRequest {
    CreateTaskRequest {
        id: id.to_owned(),
        bundle: format!("/run/bundles/{id}"),
        rootfs: vec![Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec!["lowerdir=/l".into()],
            ..Default::default()
        }],
        stdout: format!("/fifo/{id}-out"),
        ..Default::default()
    }
}

fn process_json(args: &[&str]) -> Any {
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: serde_json::to_vec(&serde_json::json!({
            "cwd": "/", "args": args, "user": {"uid": 0, "gid": 0}
        }))
        .unwrap(),
        ..Default::default()
    }
}

impl Shim {
    fn stub(&self) -> &Stub {
        self.tasks.runtime()
    }

    fn events(&self) -> Vec<Event> {
        self.events.0.lock().unwrap().clone()
    }

    /// Waits until an event `matches` has been published; returns it.
    async fn event(&self, matches: impl Fn(&Event) -> bool) -> Event {
        for _ in 0..500 {
            if let Some(e) = self.events().into_iter().find(|e| matches(e)) {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("no such event among {:#?}", self.events());
    }

    async fn create(&self, id: &str) -> u32 {
        self.api
            .create(&ctx(), create_request(id))
            .await
            .expect("create")
            .pid
    }

    async fn start(&self, id: &str, exec_id: &str) -> TtrpcResult<StartResponse> {
        (self
            .api
            .start(&ctx(), request!(StartRequest => id, exec_id)))
        .await
    }

    async fn state(&self, id: &str, exec_id: &str) -> TtrpcResult<StateResponse> {
        (self
            .api
            .state(&ctx(), request!(StateRequest => id, exec_id)))
        .await
    }

    async fn status(&self, id: &str, exec_id: &str) -> Status {
        let state = self.state(id, exec_id).await.expect("state");
        state.status.enum_value().expect("a known status")
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> TtrpcResult<Empty> {
        let req = request!(KillRequest => id, exec_id, signal, all);
        self.api.kill(&ctx(), req).await
    }

    async fn wait(&self, id: &str, exec_id: &str) -> TtrpcResult<WaitResponse> {
        let req = request!(WaitRequest => id, exec_id);
        tokio::time::timeout(Duration::from_secs(5), self.api.wait(&ctx(), req))
            .await
            .expect("wait answers once the process exited")
    }

    async fn delete(&self, id: &str, exec_id: &str) -> TtrpcResult<DeleteResponse> {
        (self
            .api
            .delete(&ctx(), request!(DeleteRequest => id, exec_id)))
        .await
    }

    async fn exec(&self, id: &str, exec_id: &str, spec: Option<Any>) -> TtrpcResult<Empty> {
        let (spec, stdout) = (
            MessageField::from_option(spec),
            format!("/fifo/{exec_id}-out"),
        );
        let req = request!(ExecProcessRequest => id, exec_id, spec, stdout);
        self.api.exec(&ctx(), req).await
    }

    async fn pause(&self, id: &str) -> TtrpcResult<Empty> {
        self.api.pause(&ctx(), request!(PauseRequest => id)).await
    }

    async fn resume(&self, id: &str) -> TtrpcResult<Empty> {
        self.api.resume(&ctx(), request!(ResumeRequest => id)).await
    }

    /// A container created and started; its init's pid.
    async fn running(&self, id: &str) -> u32 {
        let pid = self.create(id).await;
        assert_eq!(self.start(id, "").await.expect("start").pid, pid);
        pid
    }
}

#[tokio::test]
async fn an_init_goes_from_created_to_deleted_with_its_events() {
    let s = shim();
    let pid = s.create("c1").await;
    assert_eq!(pid, 100);
    let created = s.stub().last_create.lock().unwrap().clone().unwrap();
    let created = created.container;
    assert_eq!(created.bundle, std::path::Path::new("/run/bundles/c1"));
    assert_eq!(created.rootfs[0].typ, "overlay");
    assert_eq!(created.stdio.stdout, "/fifo/c1-out");
    let state = s.state("c1", "").await.unwrap();
    assert_eq!(
        (state.id.as_str(), state.bundle.as_str(), state.pid),
        ("c1", "/run/bundles/c1", pid)
    );
    assert_eq!(state.status, EnumOrUnknown::new(Status::CREATED));
    assert_eq!(state.stdout, "/fifo/c1-out");

    assert_eq!(s.start("c1", "").await.unwrap().pid, pid);
    assert_eq!(s.status("c1", "").await, Status::RUNNING);

    s.stub().exit(pid_of(pid), 3);
    let waited = s.wait("c1", "").await.unwrap();
    assert_eq!(waited.exit_status, 3);
    let exit = s.event(|e| matches!(e, Event::Exit { .. })).await;
    let state = s.state("c1", "").await.unwrap();
    assert_eq!(state.status, EnumOrUnknown::new(Status::STOPPED));
    assert_eq!(state.exit_status, 3);
    assert_eq!(
        Some(state.exited_at.clone().unwrap()),
        waited.exited_at.into_option()
    );

    let deleted = s.delete("c1", "").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 3));
    // containerd may not have heard that reply (its deadline passed): the container answers
    // as it ended, and one more Delete as the first, with no second removal or event.
    let last = s.state("c1", "").await.unwrap();
    assert_eq!((last.status, last.exit_status), (state.status, 3));
    assert_eq!(s.wait("c1", "").await.unwrap().exit_status, 3);
    assert_eq!(s.delete("c1", "").await.unwrap(), deleted);
    assert_eq!(code(s.delete("c1", "").await), Code::NOT_FOUND);
    assert_eq!(code(s.state("c1", "").await), Code::NOT_FOUND);
    assert_eq!(
        s.stub().calls(),
        ["create c1", "start c1", "delete-exited c1"]
    );
    let events = s.events();
    let Event::Exit { status, .. } = &exit else {
        unreachable!()
    };
    assert_eq!(
        events,
        [
            Event::Create {
                id: "c1".into(),
                bundle: "/run/bundles/c1".into(),
                rootfs: create_request("c1").rootfs,
                stdio: created.stdio.clone(),
                checkpoint: String::new(),
                pid,
            },
            Event::Start {
                id: "c1".into(),
                pid
            },
            Event::Exit {
                id: "c1".into(),
                process: "c1".into(),
                pid,
                status: status.clone(),
            },
            Event::Delete {
                id: "c1".into(),
                pid,
                status: status.clone(),
            },
        ]
    );
}

/// A pid as the stub knows it.
fn pid_of(pid: u32) -> i32 {
    i32::try_from(pid).unwrap()
}

#[tokio::test]
async fn create_fails_cleanly_with_containerds_codes() {
    let s = shim();
    let mut restore = create_request("c1");
    restore.checkpoint = "/checkpoints/c1".into();
    assert_eq!(
        code(s.api.create(&ctx(), restore).await),
        Code::UNIMPLEMENTED
    );

    let mut options = create_request("c1");
    options.options = MessageField::some(Any {
        type_url: "example.Other".into(),
        value: vec![1],
        ..Default::default()
    });
    let (code_, message) = failure(s.api.create(&ctx(), options).await);
    assert_eq!(code_, Code::INVALID_ARGUMENT);
    assert!(message.contains("container c1") && message.contains("example.Other"));

    s.stub().fail_next("create");
    let (code_, message) = failure(s.api.create(&ctx(), create_request("c1")).await);
    assert_eq!(code_, Code::UNKNOWN);
    assert!(message.contains("container c1: create failed: stub: create refused"));
    assert_eq!(code(s.state("c1", "").await), Code::NOT_FOUND);
    assert!(s.events().is_empty(), "no event for a failed create");

    // The id is free again after the failures; taken once created.
    s.create("c1").await;
    assert_eq!(
        code(s.api.create(&ctx(), create_request("c1")).await),
        Code::ALREADY_EXISTS
    );
}

#[tokio::test]
async fn a_broken_config_file_fails_create_naming_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shim.toml");
    std::fs::write(&path, "bogus = true\n").unwrap();
    let s = shim_with(StartConfig::load(Some(path)));
    let (code_, message) = failure(s.api.create(&ctx(), create_request("c7")).await);
    assert_eq!(code_, Code::INVALID_ARGUMENT);
    assert!(message.contains("container c7") && message.contains("shim.toml"));
    assert!(s.stub().calls().is_empty(), "the runtime is not asked");
}

#[tokio::test]
async fn the_runtime_options_config_file_and_shim_cgroup_reach_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.toml");
    std::fs::write(&path, "systemd_cgroup = true\n").unwrap();
    let s = shim();
    let mut req = create_request("c1");
    req.options = MessageField::some(Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value: nvidia_shim_proto::encode_runtime_options(&nvidia_shim_proto::RuntimeOptions {
            type_url: String::new(),
            config_path: path.to_string_lossy().into_owned(),
        }),
        ..Default::default()
    });
    s.api.create(&ctx(), req).await.unwrap();
    let created = s.stub().last_create.lock().unwrap().clone().unwrap();
    assert!(created.config.systemd_cgroup, "the named file was read");

    let mut req = create_request("c2");
    req.options = MessageField::some(Any {
        type_url: "containerd.linux.runc.CreateOptions".into(),
        value: prost::Message::encode_to_vec(&nvidia_shim_proto::RuncCreateOptions {
            shim_cgroup: "/shims/nv".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    s.api.create(&ctx(), req).await.unwrap();
    let created = s.stub().last_create.lock().unwrap().clone().unwrap();
    assert_eq!(created.shim_cgroup.as_deref(), Some("/shims/nv"));
    assert!(!created.config.systemd_cgroup, "the start configuration");
}

#[tokio::test]
async fn start_is_legal_once_from_created_and_a_failed_start_leaves_it_created() {
    let s = shim();
    assert_eq!(code(s.start("nope", "").await), Code::NOT_FOUND);
    let pid = s.create("c1").await;
    s.stub().fail_next("start");
    assert_eq!(code(s.start("c1", "").await), Code::UNKNOWN);
    assert_eq!(s.status("c1", "").await, Status::CREATED);
    assert!(s.events().iter().all(|e| !matches!(e, Event::Start { .. })));

    assert_eq!(s.start("c1", "").await.unwrap().pid, pid);
    let (code_, message) = failure(s.start("c1", "").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot start a task in state Running"));

    s.stub().exit(pid_of(pid), 0);
    s.wait("c1", "").await.unwrap();
    let (code_, message) = failure(s.start("c1", "").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("in state Stopped"), "{message}");
}

#[tokio::test]
async fn delete_refuses_a_running_task_and_removes_a_created_one() {
    let s = shim();
    s.running("c1").await;
    let (code_, message) = failure(s.delete("c1", "").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot delete a running task"));
    s.pause("c1").await.unwrap();
    assert_eq!(code(s.delete("c1", "").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(s.delete("nope", "").await), Code::NOT_FOUND);

    // Created and never started: its init is killed and the container removed.
    let pid = s.create("c2").await;
    let deleted = s.delete("c2", "").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
    assert!(s.stub().calls().contains(&"delete-created c2".to_owned()));
    let (event_pid, status) = deleted_event(&s.events(), "c2");
    assert_eq!((event_pid, status.code), (pid, 137));
    assert_eq!(s.status("c2", "").await, Status::STOPPED, "as it ended");
    assert_eq!(code(s.kill("c2", "", 9, false).await), Code::NOT_FOUND);

    // A runtime that fails the removal keeps the container.
    let pid = s.running("c3").await;
    s.stub().exit(pid_of(pid), 1);
    s.wait("c3", "").await.unwrap();
    s.stub().fail_next("delete-exited");
    assert_eq!(code(s.delete("c3", "").await), Code::UNKNOWN);
    assert_eq!(s.status("c3", "").await, Status::STOPPED);
    assert_eq!(s.delete("c3", "").await.unwrap().exit_status, 1);
}

/// The pid and status of container `id`'s TaskDelete.
fn deleted_event(events: &[Event], id: &str) -> (u32, crate::runtime::exit::ExitStatus) {
    events
        .iter()
        .find_map(|e| match e {
            Event::Delete {
                id: i, pid, status, ..
            } if i == id => Some((*pid, status.clone())),
            _ => None,
        })
        .expect("a delete event")
}

#[tokio::test]
async fn kill_signals_a_live_task_and_a_finished_one_is_not_found() {
    let s = shim();
    assert_eq!(code(s.kill("nope", "", 9, false).await), Code::NOT_FOUND);
    s.running("c1").await;
    s.kill("c1", "", 15, false).await.unwrap();
    assert_eq!(s.wait("c1", "").await.unwrap().exit_status, 128 + 15);
    let (code_, message) = failure(s.kill("c1", "", 9, false).await);
    assert_eq!(code_, Code::NOT_FOUND, "containerd treats it as done");
    assert!(message.contains("process already finished"));

    // A created task can be killed; with `all`, every process goes.
    s.create("c2").await;
    s.exec("c2", "e1", Some(process_json(&["sh"])))
        .await
        .unwrap();
    s.start("c2", "e1").await.unwrap();
    s.kill("c2", "", 9, true).await.unwrap();
    assert_eq!(s.wait("c2", "e1").await.unwrap().exit_status, 137);
    assert_eq!(s.status("c2", "").await, Status::STOPPED);

    s.running("c3").await;
    s.stub().fail_next("kill");
    assert_eq!(code(s.kill("c3", "", 9, false).await), Code::UNKNOWN);
    assert_eq!(s.status("c3", "").await, Status::RUNNING);
}

#[tokio::test]
async fn wait_answers_at_once_after_the_exit_and_names_unknown_processes() {
    let s = shim();
    let pid = s.running("c1").await;
    s.stub().exit(pid_of(pid), 5);
    assert_eq!(s.wait("c1", "").await.unwrap().exit_status, 5);
    assert_eq!(s.wait("c1", "").await.unwrap().exit_status, 5, "again");
    let (code_, message) = failure(s.wait("c1", "e9").await);
    assert_eq!(code_, Code::NOT_FOUND);
    assert!(
        message.contains("container c1 exec e9: not found"),
        "{message}"
    );
    assert_eq!(code(s.wait("nope", "").await), Code::NOT_FOUND);
}

#[tokio::test]
async fn an_exec_is_registered_started_signalled_and_deleted_with_its_events() {
    let s = shim();
    let init = s.running("c1").await;
    assert_eq!(
        code(s.exec("c1", "e1", None).await),
        Code::INVALID_ARGUMENT,
        "no process spec"
    );
    let not_json = Any {
        value: b"{".to_vec(),
        ..Default::default()
    };
    let (code_, message) = failure(s.exec("c1", "e1", Some(not_json)).await);
    assert_eq!(code_, Code::INVALID_ARGUMENT);
    assert!(message.contains("not OCI Process JSON"));
    assert_eq!(
        code(s.exec("nope", "e1", Some(process_json(&["sh"]))).await),
        Code::NOT_FOUND
    );

    s.exec("c1", "e1", Some(process_json(&["sh"])))
        .await
        .unwrap();
    assert_eq!(
        code(s.exec("c1", "e1", Some(process_json(&["sh"]))).await),
        Code::ALREADY_EXISTS
    );
    let state = s.state("c1", "e1").await.unwrap();
    assert_eq!(
        (state.id.as_str(), state.exec_id.as_str(), state.pid),
        ("e1", "e1", 0)
    );
    assert_eq!(state.status, EnumOrUnknown::new(Status::CREATED));
    assert_eq!(state.stdout, "/fifo/e1-out");
    let (code_, message) = failure(s.kill("c1", "e1", 9, false).await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("exec e1 is not started"));

    let pid = s.start("c1", "e1").await.unwrap().pid;
    assert_ne!(pid, init);
    let asked = s.stub().last_exec.lock().unwrap().clone().unwrap();
    assert_eq!(
        asked.process.args().as_deref(),
        Some(&["sh".to_owned()][..])
    );
    assert_eq!(
        asked.process.terminal(),
        Some(false),
        "the request's terminal"
    );
    assert_eq!(s.status("c1", "e1").await, Status::RUNNING);
    let (code_, message) = failure(s.start("c1", "e1").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("exec e1 was already started"));
    let (code_, message) = failure(s.delete("c1", "e1").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot delete running exec e1"));

    let id = "c1";
    let pids = s
        .api
        .pids(&ctx(), request!(PidsRequest => id))
        .await
        .unwrap();
    let listed: Vec<(u32, String)> = pids
        .processes
        .iter()
        .map(|p| {
            let exec_id = p
                .info
                .as_ref()
                .map(|any| {
                    <ProcessDetails as containerd_shim::protos::protobuf::Message>::parse_from_bytes(
                        &any.value,
                    )
                    .unwrap()
                    .exec_id
                })
                .unwrap_or_default();
            (p.pid, exec_id)
        })
        .collect();
    assert_eq!(listed, [(init, String::new()), (pid, "e1".to_owned())]);

    s.kill("c1", "e1", 9, false).await.unwrap();
    assert_eq!(s.wait("c1", "e1").await.unwrap().exit_status, 137);
    s.event(|e| matches!(e, Event::Exit { process, .. } if process == "e1"))
        .await;
    assert_eq!(code(s.kill("c1", "e1", 9, false).await), Code::NOT_FOUND);
    let deleted = s.delete("c1", "e1").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
    assert_eq!(code(s.state("c1", "e1").await), Code::NOT_FOUND);
    assert_eq!(
        s.status("c1", "").await,
        Status::RUNNING,
        "init is untouched"
    );

    let events = s.events();
    let exec_events: Vec<&Event> = events
        .iter()
        .filter(|e| {
            matches!(e, Event::ExecAdded { .. } | Event::ExecStarted { .. })
                || matches!(e, Event::Exit { process, .. } if process == "e1")
        })
        .collect();
    assert_eq!(exec_events.len(), 3, "{events:#?}");
    assert_eq!(
        exec_events[0],
        &Event::ExecAdded {
            id: "c1".into(),
            exec_id: "e1".into()
        }
    );
    assert_eq!(
        exec_events[1],
        &Event::ExecStarted {
            id: "c1".into(),
            exec_id: "e1".into(),
            pid
        }
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::Delete { .. })),
        "deleting an exec is no task delete"
    );
}

#[tokio::test]
async fn an_exec_that_fails_to_start_is_reported_as_failed_to_run() {
    let s = shim();
    s.running("c1").await;
    s.exec("c1", "e1", Some(process_json(&["nope"])))
        .await
        .unwrap();
    s.stub().fail_next("exec");
    assert_eq!(code(s.start("c1", "e1").await), Code::UNKNOWN);
    let state = s.state("c1", "e1").await.unwrap();
    assert_eq!(state.status, EnumOrUnknown::new(Status::STOPPED));
    assert_eq!(state.exit_status, 127);
    assert_eq!(s.wait("c1", "e1").await.unwrap().exit_status, 127);
    assert_eq!(
        code(s.start("c1", "e1").await),
        Code::FAILED_PRECONDITION,
        "not again"
    );
    assert_eq!(s.delete("c1", "e1").await.unwrap().exit_status, 127);
}

#[tokio::test]
async fn an_exec_that_exits_before_its_start_answers_keeps_its_pid_and_reports_its_exit() {
    let s = shim();
    s.running("c1").await;
    s.stub().quick_execs();
    s.exec("c1", "quick", Some(process_json(&["true"])))
        .await
        .unwrap();
    let pid = s.start("c1", "quick").await.unwrap().pid;
    assert_ne!(pid, 0);
    let state = s.state("c1", "quick").await.unwrap();
    assert_eq!(state.pid, pid);
    assert_eq!(state.status, EnumOrUnknown::new(Status::STOPPED));
    assert_eq!(s.wait("c1", "quick").await.unwrap().exit_status, 0);
    let exit = s
        .event(|e| matches!(e, Event::Exit { process, .. } if process == "quick"))
        .await;
    assert!(matches!(exit, Event::Exit { pid: p, .. } if p == pid));
    assert_eq!(s.delete("c1", "quick").await.unwrap().pid, pid);
}

#[tokio::test]
async fn a_stopped_container_takes_no_exec() {
    let s = shim();
    let pid = s.running("c1").await;
    s.exec("c1", "late", Some(process_json(&["sh"])))
        .await
        .unwrap();
    s.stub().exit(pid_of(pid), 0);
    s.wait("c1", "").await.unwrap();
    let (code_, message) = failure(s.exec("c1", "e1", Some(process_json(&["sh"]))).await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot exec e1: the container is not running"));
    let (code_, message) = failure(s.start("c1", "late").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot start exec late: the container is not running"));
    // Deleting the container takes its execs with it.
    s.delete("c1", "").await.unwrap();
    assert_eq!(code(s.state("c1", "late").await), Code::NOT_FOUND);
}

#[tokio::test]
async fn unknown_exec_ids_are_not_found_in_every_method_that_names_one() {
    let s = shim();
    s.running("c1").await;
    let nf = |r: Code| assert_eq!(r, Code::NOT_FOUND);
    nf(code(s.state("c1", "x").await));
    nf(code(s.start("c1", "x").await));
    nf(code(s.kill("c1", "x", 9, false).await));
    nf(code(s.wait("c1", "x").await));
    nf(code(s.delete("c1", "x").await));
    let (id, exec_id) = ("c1", "x");
    let close = |stdin: bool| request!(CloseIORequest => id, exec_id, stdin);
    nf(code(s.api.close_io(&ctx(), close(true)).await));
    s.api
        .close_io(&ctx(), close(false))
        .await
        .expect("nothing to close: no lookup");
    let (width, height) = (80u32, 24u32);
    let resize = request!(ResizePtyRequest => id, exec_id, width, height);
    nf(code(s.api.resize_pty(&ctx(), resize).await));
}

#[tokio::test]
async fn pause_and_resume_move_a_running_task_and_nothing_else() {
    let s = shim();
    assert_eq!(code(s.pause("nope").await), Code::NOT_FOUND);
    s.create("c1").await;
    let (code_, message) = failure(s.pause("c1").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot pause a task in state Created"));
    s.start("c1", "").await.unwrap();
    let (code_, message) = failure(s.resume("c1").await);
    assert_eq!(code_, Code::FAILED_PRECONDITION);
    assert!(message.contains("cannot resume a task in state Running"));

    s.stub().fail_next("pause");
    assert_eq!(code(s.pause("c1").await), Code::UNKNOWN);
    assert_eq!(s.status("c1", "").await, Status::RUNNING);

    s.pause("c1").await.unwrap();
    assert_eq!(s.status("c1", "").await, Status::PAUSED);
    assert_eq!(code(s.pause("c1").await), Code::FAILED_PRECONDITION);
    s.resume("c1").await.unwrap();
    assert_eq!(s.status("c1", "").await, Status::RUNNING);
    let moves: Vec<Event> = s
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::Paused { .. } | Event::Resumed { .. }))
        .collect();
    assert_eq!(
        moves,
        [
            Event::Paused { id: "c1".into() },
            Event::Resumed { id: "c1".into() }
        ]
    );
    // A paused task that exits is stopped.
    s.pause("c1").await.unwrap();
    s.kill("c1", "", 9, false).await.unwrap();
    assert_eq!(s.status("c1", "").await, Status::STOPPED);
    assert_eq!(code(s.resume("c1").await), Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn stats_and_update_reach_the_runtime_and_bad_resources_are_refused() {
    let s = shim();
    s.running("c1").await;
    let id = "c1";
    let stats = s.api.stats(&ctx(), request!(StatsRequest => id)).await;
    assert_eq!(stats.unwrap().stats.type_url, "stub.Metrics");
    let update = |value: Option<&[u8]>| UpdateTaskRequest {
        id: "c1".into(),
        resources: MessageField::from_option(value.map(|v| Any {
            type_url: "/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: v.to_vec(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let (code_, message) = failure(s.api.update(&ctx(), update(None)).await);
    assert_eq!(code_, Code::INVALID_ARGUMENT);
    assert!(message.contains("update without resources"));
    let (code_, message) = failure(s.api.update(&ctx(), update(Some(b"not json"))).await);
    assert_eq!(code_, Code::INVALID_ARGUMENT);
    assert!(message.contains("container c1") && message.contains("LinuxResources"));
    s.api
        .update(
            &ctx(),
            update(Some(
                br#"{"memory":{"limit":33554432},"cpu":{"shares":512}}"#,
            )),
        )
        .await
        .unwrap();
    let applied = s.stub().last_update.lock().unwrap().clone().unwrap();
    assert_eq!(
        applied.memory().as_ref().and_then(|m| m.limit()),
        Some(33_554_432)
    );
    s.stub().fail_next("stats");
    let stats = s.api.stats(&ctx(), request!(StatsRequest => id)).await;
    assert_eq!(code(stats), Code::UNKNOWN);
}

#[tokio::test]
async fn close_io_resize_pty_and_connect_answer_for_init_and_execs() {
    let s = shim();
    let pid = s.running("c1").await;
    let (id, stdin, width, height) = ("c1", true, 80u32, 24u32);
    s.api
        .close_io(&ctx(), request!(CloseIORequest => id, stdin))
        .await
        .unwrap();
    // No terminal: nothing to resize, success as with the runc shim.
    let resize = request!(ResizePtyRequest => id, width, height);
    s.api.resize_pty(&ctx(), resize).await.unwrap();
    let connected = s.api.connect(&ctx(), request!(ConnectRequest => id)).await;
    let connected = connected.unwrap();
    assert_eq!(connected.task_pid, pid);
    assert_eq!(connected.shim_pid, std::process::id());
    let id = "nope";
    let unknown = s.api.connect(&ctx(), request!(ConnectRequest => id)).await;
    assert_eq!(unknown.unwrap().task_pid, 0);
}

#[tokio::test]
async fn shutdown_ends_the_shim_only_once_it_serves_nothing() {
    let s = shim();
    let pid = s.running("c1").await;
    let shutdown = || async {
        s.api
            .shutdown(&ctx(), ShutdownRequest::default())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_millis(50), s.shutdown.wait())
            .await
            .is_ok()
    };
    assert!(!shutdown().await, "a container is still served");
    s.stub().exit(pid_of(pid), 0);
    s.wait("c1", "").await.unwrap();
    s.delete("c1", "").await.unwrap();
    assert!(shutdown().await);
}

#[tokio::test]
async fn an_oom_kill_is_published() {
    let s = shim();
    s.running("c1").await;
    s.stub().oom("c1");
    s.event(|e| *e == Event::Oom { id: "c1".into() }).await;
}

#[tokio::test]
async fn what_init_leaves_behind_is_ended_only_without_a_pid_namespace_of_its_own() {
    let s = shim();
    let pid = s.running("private").await;
    s.stub().exit(pid_of(pid), 0);
    s.wait("private", "").await.unwrap();
    s.stub().share_pid_namespace();
    let pid = s.running("shared").await;
    s.stub().exit(pid_of(pid), 0);
    s.wait("shared", "").await.unwrap();
    s.event(|e| matches!(e, Event::Exit { id, .. } if id == "shared"))
        .await;
    s.delete("shared", "").await.unwrap();
    let calls = s.stub().calls();
    assert!(!calls.contains(&"kill_remaining private".to_owned()));
    let ended = calls
        .iter()
        .filter(|c| *c == "kill_remaining shared")
        .count();
    assert_eq!(
        ended, 3,
        "before Wait answers, TaskExit and the delete: {calls:?}"
    );
}

/// A Create of container `id` sent as containerd sends it, in a task of its own, once the
/// runtime has it in hand (the stub holds creates: see `Stub::hold_creates`).
async fn held_create(
    s: &Arc<Shim>,
    id: &'static str,
) -> tokio::task::JoinHandle<TtrpcResult<CreateTaskResponse>> {
    let caller = {
        let s = Arc::clone(s);
        tokio::spawn(async move { s.api.create(&ctx(), create_request(id)).await })
    };
    let call = format!("create {id}");
    for _ in 0..500 {
        if s.stub().calls().contains(&call) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    caller
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_runs_to_its_end_when_its_caller_gives_up_and_a_delete_waits_for_it() {
    let s = Arc::new(shim());
    s.stub().hold_creates();
    let caller = held_create(&s, "slow").await;
    // containerd's deadline: the request is dropped while the runtime works.
    caller.abort();
    let delete = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.delete("slow", "").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!delete.is_finished(), "the delete waits for the create");
    s.stub().release_creates();
    let deleted = delete
        .await
        .unwrap()
        .expect("the created container is deleted");
    assert_eq!(deleted.exit_status, 137);
    let events = s.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Create { id, .. } if id == "slow")),
        "the create finished and published: {events:#?}"
    );
    assert!(s.stub().calls().contains(&"delete-created slow".to_owned()));
}

#[tokio::test]
async fn a_shutdown_during_a_create_that_then_fails_ends_the_shim_once_it_has_failed() {
    let s = Arc::new(shim());
    s.stub().hold_creates();
    s.stub().fail_next("create");
    let caller = held_create(&s, "doomed").await;
    // containerd gave up on the create: it asks the shim to shut down while it still works.
    s.api
        .shutdown(&ctx(), ShutdownRequest::default())
        .await
        .unwrap();
    let ended = || tokio::time::timeout(Duration::from_millis(50), s.shutdown.wait());
    assert!(ended().await.is_err(), "not while the create runs");
    s.stub().release_creates();
    assert!(caller.await.unwrap().is_err(), "the create failed");
    assert!(ended().await.is_ok(), "the kept Shutdown is carried out");
}

#[tokio::test]
async fn an_unknown_container_is_not_found_in_every_method_and_checkpoint_is_not_served() {
    let s = shim();
    let (id, exec_id, stdin) = ("nope", "", true);
    let nf = |c: Code| assert_eq!(c, Code::NOT_FOUND);
    nf(code(s.start(id, exec_id).await));
    nf(code(s.state(id, exec_id).await));
    nf(code(s.kill(id, exec_id, 9, true).await));
    nf(code(s.wait(id, exec_id).await));
    nf(code(s.delete(id, exec_id).await));
    nf(code(s.exec(id, "e1", Some(process_json(&["sh"]))).await));
    nf(code(s.pause(id).await));
    nf(code(s.resume(id).await));
    nf(code(s.api.pids(&ctx(), request!(PidsRequest => id)).await));
    nf(code(
        s.api.stats(&ctx(), request!(StatsRequest => id)).await,
    ));
    nf(code(
        s.api
            .update(&ctx(), request!(UpdateTaskRequest => id))
            .await,
    ));
    nf(code(
        s.api
            .close_io(&ctx(), request!(CloseIORequest => id, stdin))
            .await,
    ));
    nf(code(
        s.api
            .resize_pty(&ctx(), request!(ResizePtyRequest => id))
            .await,
    ));
    // Not implemented by this shim: the Task API's default answer.
    let checkpoint = request!(CheckpointTaskRequest => id);
    nf(code(s.api.checkpoint(&ctx(), checkpoint).await));
    assert!(s.stub().calls().is_empty(), "the runtime is never asked");
    assert!(s.events().is_empty());
}
