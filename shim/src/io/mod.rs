//! A process's I/O: [`procio`] decides FIFOs or a terminal from containerd's request;
//! [`stdio`] copies containerd's FIFOs; [`console`] receives a terminal's pty master;
//! [`logdriver`] runs `binary://` logging programs.

pub mod console;
pub mod logdriver;
pub mod procio;
pub mod stdio;
