//! What fedcrm computes, apart from how it travels: the RFM definitions and the
//! exact-quantile search ([`rfm`]), the rules a node applies to a round ([`rules`];
//! on SecAgg+'s sparse graph, [`neighbourhood`]), the word width a round's sum needs
//! ([`width`]), small-cell suppression of a released table ([`suppression`]),
//! and the plain domain types both the wire contract (`fedcrm-protocol`) and the audit
//! log (`fedcrm-audit`) use: a round's [`rules::Invitee`], what a sum covers
//! ([`rules::Coverage`], [`rules::Unmasked`]) and dates ([`date`]).
//! Pure: no I/O, no clock, no gRPC.

#![forbid(unsafe_code)]

pub mod date;
pub mod neighbourhood;
pub mod rfm;
pub mod rules;
pub mod suppression;
pub mod width;
