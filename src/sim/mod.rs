//! The simulated Extract API.
