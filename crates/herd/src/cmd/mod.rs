//! One module per command area.

pub mod demo;
pub mod jobs;
pub mod plan;
pub mod registry;
pub mod router;
pub mod runtime;
pub mod scale;
pub mod serve;
pub mod token;
