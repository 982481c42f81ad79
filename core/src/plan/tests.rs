//! Table-driven tests of the plan.
