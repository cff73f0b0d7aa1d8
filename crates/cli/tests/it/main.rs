#![allow(unreachable_pub)]
//! End-to-end tests of clawfleet: the real binary, real processes, real brokers.
//! Each test has its own data directory and ports.

mod approvals;
mod bad_input;
mod brains;
mod conformance;
mod council;
mod dashboard;
mod deploys;
mod desired;
mod docker;
mod faults;
mod join;
mod leader;
mod lifecycle;
mod mailbox;
mod migrate;
mod model;
mod observability;
mod project;
mod queue;
mod racks;
mod router;
mod security;
mod slurm;
mod snapshot;
mod support;
mod webdriver;
