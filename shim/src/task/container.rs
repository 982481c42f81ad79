//! One container of the shim: its init process, its exec processes, and what the runtime keeps
//! of it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Result, ShimError};
use crate::task::process::Process;

/// A container, owning its processes.
#[derive(Debug)]
pub struct Container<C> {
    /// Container id.
    pub id: String,
    /// Its bundle, as containerd gave it.
    pub bundle: PathBuf,
    /// Its init process.
    pub init: Arc<Process>,
    /// Whether it has a pid namespace of its own (its processes die with init).
    pub private_pid_ns: bool,
    /// What the runtime keeps of it.
    pub runtime: C,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C> Container<C> {
    /// A freshly created container.
    pub fn new(id: &str, bundle: PathBuf, init: Process, private_pid_ns: bool, runtime: C) -> Self {
        Self {
            id: id.to_owned(),
            bundle,
            init: Arc::new(init),
            private_pid_ns,
            runtime,
            execs: Mutex::default(),
        }
    }

    /// The process a request names: init for an empty `exec_id`, else that exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if exec_id.is_empty() {
            return Ok(Arc::clone(&self.init));
        }
        lock(&self.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound {
                id: format!("{} exec {exec_id}", self.id),
            })
    }

    /// Registers a new exec process; false if its id is taken.
    pub fn add_exec(&self, exec: Process) -> bool {
        let mut execs = lock(&self.execs);
        if execs.contains_key(&exec.id) {
            return false;
        }
        execs.insert(exec.id.clone(), Arc::new(exec));
        true
    }

    /// Forgets exec process `exec_id`.
    pub fn remove_exec(&self, exec_id: &str) -> Option<Arc<Process>> {
        lock(&self.execs).remove(exec_id)
    }

    /// Every exec process.
    pub fn execs(&self) -> Vec<Arc<Process>> {
        lock(&self.execs).values().cloned().collect()
    }
}
