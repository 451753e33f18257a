//! herd-scale: the autoscaler of herd.
//!
//! Owns the policy file ([`policy`]), schedule windows ([`schedule`]), the pure decision
//! ([`decide::decide`]) on an injected clock, the backends that apply decisions ([`local`]: child
//! processes on this machine; [`kubernetes`]: Deployment scale, PDBs and pod-deletion-cost via
//! `kube`), reading servers' `/metrics` ([`metrics_text`]), the control loop ([`controller`]) and
//! Kubernetes manifest rendering ([`manifests`]).
//!
//! Must not depend on: an HTTP server, herd-jobs (queue stats come in through
//! [`controller::QueueSource`]), the serving core.

pub mod controller;
pub mod decide;
pub mod error;
pub mod haproxy;
pub mod kubernetes;
pub mod local;
pub mod manifests;
pub mod metrics_text;
pub mod policy;
pub mod schedule;

pub use decide::{decide, Action, Decision, Observed, Plan, State};
pub use error::{Result, ScaleError};
/// Re-exported so callers pass `now` without their own dependency.
pub use jiff;
pub use policy::Policy;
