//! Tests of [`super::plan`] over literal inputs, no root and no I/O besides the golden files:
//! the hosts (`hosts`), a table of request forms each checked against its golden file
//! (`golden`), and the property that the built-in path and a generated CDI spec give a
//! container the same things (`generated`).

mod generated;
mod golden;
mod hosts;
