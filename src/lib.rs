//! The `fedcrm` package: the CLI's library side. `main.rs` only parses flags and
//! calls into here. This is also the one place where the node and coordinator
//! libraries meet: the loopback [`harness`] behind `fedcrm demo` and the
//! end-to-end tests.

#![forbid(unsafe_code)]

pub mod auditcli;
pub mod bench;
pub mod clv;
pub mod demo;
pub mod demodata;
pub mod harness;
pub mod hq;
pub mod models;
pub mod nodecli;
pub mod overlap;
pub mod pgserver;
pub mod pooled;
pub mod service;
