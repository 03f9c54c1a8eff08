//! The fedcrm node: runs inside a franchisee's infrastructure next to its raw
//! customer data. Loads data ([`data`]), computes local features ([`features`]) and
//! round contributions ([`analysis`]), enforces the franchisee's [`policy`] and its
//! differential-privacy budget ([`privacy`]), and
//! takes part in secure-aggregation rounds ([`session`]). Everything it sends goes
//! through one door, [`egress`], which checks and records it first.
//!
//! Never depends on `fedcrm-coordinator`; never sends rows, identifiers or an
//! unmasked contribution.

#![forbid(unsafe_code)]

pub mod analyses;
pub mod analysis;
pub mod approvals;
pub mod check;
pub mod computation;
pub mod config;
pub mod data;
pub mod differencing;
pub mod egress;
pub mod features;
pub mod identifiers;
pub mod models;
pub mod policy;
pub mod privacy;
pub mod psi;
pub mod score;
pub mod session;
