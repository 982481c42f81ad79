//! A process's I/O: [`procio`] decides FIFOs or a terminal from containerd's request;
//! [`stdio`] gives a process pipes for containerd's FIFOs, files and loggers; [`copy`] copies
//! its output out of them; [`console`] receives a terminal's pty master; [`logdriver`] runs
//! `binary://` logging programs, which [`spawn`] starts.

pub mod console;
pub mod copy;
pub mod fds;
pub mod logdriver;
pub mod procio;
pub mod spawn;
pub mod stdio;
