//! Containers deleted lately, with their last answers. containerd gives a Delete a deadline;
//! when it passes while the shim deletes (a loaded host), the container is gone from the shim
//! but containerd still holds its task and asks again: `ctr task rm` reads its State, then
//! Deletes. Answering NotFound would leave containerd a task that no shim knows, and the shim
//! and its bundle would never be cleaned up. Whether a reply reached containerd the shim
//! cannot tell (the two deadlines are measured from different moments), so every container
//! deleted lately answers State and Wait as it ended, and one more Delete as it did, as the
//! runc shim's container record does until it is removed. A create of the id forgets it.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};

use containerd_shim::api::{
    DeleteRequest, DeleteResponse, StateRequest, StateResponse, WaitRequest, WaitResponse,
};

/// How many deleted containers are kept; the oldest goes first (containerd asks again within
/// seconds, if at all).
const KEPT: usize = 64;

/// A deleted container's last answers.
#[derive(Debug, Clone)]
struct Last {
    id: String,
    state: StateResponse,
    delete: DeleteResponse,
}

/// The containers deleted lately (not exec processes: containerd forgets an exec whose
/// Delete failed).
#[derive(Debug, Default)]
pub struct Gone(Mutex<VecDeque<Last>>);

impl Gone {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Last>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state_of(&self, id: &str, exec_id: &str) -> Option<StateResponse> {
        if !exec_id.is_empty() {
            return None;
        }
        let kept = self.lock();
        kept.iter().find(|l| l.id == id).map(|l| l.state.clone())
    }

    /// Keeps container `id`, just deleted: its `state` then and the `delete` reply.
    pub fn keep(&self, id: &str, state: StateResponse, delete: DeleteResponse) {
        let mut kept = self.lock();
        kept.retain(|l| l.id != id);
        if kept.len() == KEPT {
            kept.pop_front();
        }
        kept.push_back(Last {
            id: id.to_owned(),
            state,
            delete,
        });
    }

    /// Forgets container `id` (a new one of that id is being created).
    pub fn forget(&self, id: &str) {
        self.lock().retain(|l| l.id != id);
    }

    /// The state of a container deleted lately: as it ended.
    pub fn state(&self, req: &StateRequest) -> Option<StateResponse> {
        self.state_of(&req.id, &req.exec_id)
    }

    /// Its Wait: how it ended.
    pub fn wait(&self, req: &WaitRequest) -> Option<WaitResponse> {
        let state = self.state_of(&req.id, &req.exec_id)?;
        Some(WaitResponse {
            exit_status: state.exit_status,
            exited_at: state.exited_at,
            ..Default::default()
        })
    }

    /// Its Delete, answered again, once: then it is forgotten.
    pub fn delete(&self, req: &DeleteRequest) -> Option<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return None;
        }
        let mut kept = self.lock();
        let at = kept.iter().position(|l| l.id == req.id)?;
        kept.remove(at).map(|l| l.delete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(g: &Gone, id: &str, code: u32) {
        let state = StateResponse {
            id: id.into(),
            exit_status: code,
            ..Default::default()
        };
        let delete = DeleteResponse {
            pid: 7,
            exit_status: code,
            ..Default::default()
        };
        g.keep(id, state, delete);
    }

    fn delete(id: &str, exec_id: &str) -> DeleteRequest {
        DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_kept_delete_answers_once_and_the_oldest_goes_first() {
        let g = Gone::default();
        for i in 0..=KEPT {
            keep(&g, &format!("c{i}"), 3);
        }
        assert!(g.delete(&delete("c0", "")).is_none(), "the oldest went");
        let again = g.delete(&delete("c1", "")).expect("kept");
        assert_eq!((again.pid, again.exit_status), (7, 3));
        assert!(g.delete(&delete("c1", "")).is_none(), "answered once");
    }

    #[test]
    fn only_the_container_itself_answers_and_a_new_create_forgets_it() {
        let g = Gone::default();
        keep(&g, "c", 0);
        assert!(g.delete(&delete("c", "e")).is_none(), "an exec of it");
        let state = StateRequest {
            id: "c".into(),
            exec_id: "e".into(),
            ..Default::default()
        };
        assert!(g.state(&state).is_none(), "an exec of it");
        g.forget("c");
        assert!(g.delete(&delete("c", "")).is_none());
    }
}
