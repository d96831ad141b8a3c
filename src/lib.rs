//! exagate: a caching reverse proxy gateway for the Exabase Extract API.
pub mod sim;
