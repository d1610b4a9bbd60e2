//! A read-only web dashboard, served by each coordinator that is given
//! `--http-listen ADDR` (off otherwise): cluster health and members, nodes
//! with their resources, GPUs and power, jobs and allocations, migrations,
//! and the fragment rate over time, for an operator who would rather look
//! than type `herd ... list`.
//!
//! Laid out by job:
//! - [`view`]: what each page shows, pure functions of the replicated state
//!   computing every figure as the gRPC API does;
//! - [`pages`], [`html`], [`svg`]: those views as server-rendered HTML
//!   (escaping enforced by the builder's API), with small inline SVG charts;
//! - [`history`]: the ring of recent samples the charts draw;
//! - [`server`]: the HTTP routes and the tasks that serve and sample.
//! - [`auth`], [`login`]: once ACLs are bootstrapped, every page needs a
//!   token of role `read` or more, by `Authorization: Bearer` or the
//!   cookie the login form sets (docs/dashboard.md, "Access").
//!
//! Pages are plain Rust string building rather than a template crate: they
//! are a handful of tables, and [`html::Html`] makes escaping the only way
//! to put text in a page, which is the one thing a template engine would
//! have had to guarantee. Nothing on a page changes the cluster.

pub mod auth;
pub mod history;
pub mod html;
pub mod login;
pub mod pages;
pub mod server;
pub mod svg;
pub mod view;

pub use server::{router, spawn, Dashboard};
