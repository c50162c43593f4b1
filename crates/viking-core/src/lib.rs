//! viking-core: the pure heart of viking.
//!
//! Layout:
//! - [`job`]: the job model (parsing, validation, the design's defaults);
//! - [`records`]: the versioned records kept in the store (viking-proc,
//!   viking-ps, floki's hosts, job history) and how to read older versions;
//! - [`keys`]: the store's key layout;
//! - [`names`]: generated job names, like Docker's;
//! - [`scheduler`]: dowding, the placement pipeline (filters, then ranking);
//! - [`reconcile`]: the reconciler's planner (proc against ps, with `now`);
//! - [`signal`]: the signals `kill` sends a job's process.
//!
//! Architecture invariant: nothing here does I/O, reads a clock or spawns a
//! task. Time is passed in as an argument; so everything here is
//! deterministic and unit-testable.
#![forbid(unsafe_code)]

pub mod agent;
pub mod job;
pub mod keys;
pub mod names;
pub mod rebalance;
pub mod reconcile;
pub mod records;
pub mod scheduler;
pub mod signal;
pub mod status;

pub use job::{FieldError, Job, JobError, JobSpec, Link, PortSpec, Proto};
pub use status::Status;
