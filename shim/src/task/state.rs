//! Where a process is in its life, and the only moves it may make: containerd's Go shim's
//! `process/init_state.go` and `exec_state.go` as one table. Pure: no process, no lock.

use containerd_shim::protos::protobuf::EnumOrUnknown;
use containerd_shim::protos::types::task::Status;

/// A process's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Created; an init parked until `Start`, an exec registered and not started.
    Created,
    /// Started.
    Running,
    /// Frozen by `Pause` (a container's init only).
    Paused,
    /// It exited.
    Stopped,
    /// Deleted: the shim no longer knows it.
    Deleted,
}

/// What moves a process from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// `Start`.
    Start,
    /// `Pause`.
    Pause,
    /// `Resume`.
    Resume,
    /// The process exited (its exit was reaped).
    Exit,
    /// `Delete`.
    Delete,
}

impl State {
    /// The state `t` leads to from this one; `None` when `t` is not allowed here.
    pub fn after(self, t: Transition) -> Option<Self> {
        use State::{Created, Deleted, Paused, Running, Stopped};
        use Transition::{Delete, Exit, Pause, Resume, Start};
        match (self, t) {
            (Created, Start) | (Paused, Resume) => Some(Running),
            (Running, Pause) => Some(Paused),
            (Created | Running | Paused, Exit) => Some(Stopped),
            (Created | Stopped, Delete) => Some(Deleted),
            _ => None,
        }
    }

    /// containerd's name for the state (a deleted process is reported stopped, as containerd
    /// sees it last).
    pub fn status(self) -> EnumOrUnknown<Status> {
        EnumOrUnknown::new(match self {
            Self::Created => Status::CREATED,
            Self::Running => Status::RUNNING,
            Self::Paused => Status::PAUSED,
            Self::Stopped | Self::Deleted => Status::STOPPED,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::State::*;
    use super::Transition::*;
    use super::*;

    const ALL: [State; 5] = [Created, Running, Paused, Stopped, Deleted];
    const MOVES: [Transition; 5] = [Start, Pause, Resume, Exit, Delete];

    #[test]
    fn every_state_and_move_is_decided_as_containerds_shim_decides() {
        let legal = [
            (Created, Start, Running),
            (Created, Exit, Stopped),
            (Created, Delete, Deleted),
            (Running, Pause, Paused),
            (Running, Exit, Stopped),
            (Paused, Resume, Running),
            (Paused, Exit, Stopped),
            (Stopped, Delete, Deleted),
        ];
        for from in ALL {
            for t in MOVES {
                let expected = legal
                    .iter()
                    .find(|(f, m, _)| *f == from && *m == t)
                    .map(|(_, _, to)| *to);
                assert_eq!(from.after(t), expected, "{from:?} --{t:?}-->");
            }
        }
    }

    #[test]
    fn a_running_process_is_never_deleted_and_nothing_is_started_twice() {
        assert_eq!(Running.after(Delete), None);
        assert_eq!(Paused.after(Delete), None);
        assert_eq!(Running.after(Start), None);
        assert_eq!(Stopped.after(Start), None);
        assert_eq!(Deleted.after(Exit), None);
    }

    #[test]
    fn containerd_sees_a_deleted_process_stopped() {
        assert_eq!(Deleted.status(), EnumOrUnknown::new(Status::STOPPED));
        assert_eq!(Paused.status(), EnumOrUnknown::new(Status::PAUSED));
    }
}
