//! The request's path through the gateway, one phase per file:
//! `route` (what is asked), `handler` (dispatch and access log), `exchange` (what
//! happened to a request, shared by every phase), `lookup` (cached job and
//! chunk reads), `passthrough` (everything streamed), `upstream` (the pooled client and
//! key injection), `rewrite` (links in job bodies), `headers` (what crosses the proxy).

pub mod access_log;
pub mod exchange;
pub mod handler;
pub mod headers;
pub mod longpoll;
pub mod lookup;
pub mod passthrough;
pub mod rewrite;
pub mod route;
pub mod share;
pub mod stall;
pub mod upstream;
