//! What the binary does when it is not the serving task service's code: [`shim_commands`],
//! what containerd runs (`start`, `delete`, `-info`, and the daemon `start` spawns), and
//! [`operator`], the commands a person runs (`info`, `cdi`, `configure`, `doctor`, `hook`) and
//! what the binary is when run by another name.

pub mod operator;
pub mod shim_commands;
