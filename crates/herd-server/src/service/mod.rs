//! The protocol-neutral service layer: the operations every dialect (KServe v2, Triton
//! extensions, OpenAI, TEI, Infinity, later gRPC) converts to and from. It takes a
//! transport-free caller identity and typed requests and returns typed results plus timings;
//! auth, output selection, request metrics and timings are computed here once.

mod health;

pub use health::Health;
