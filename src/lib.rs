//! webhookd: a self-hosted webhook delivery appliance.
//!
//! Providers publish events over a Svix-compatible HTTP API (`api`); each event
//! is stored durably (`store`), fanned out to the subscribed endpoints, signed
//! (`signing`) and POSTed with retries by the delivery worker (`delivery`).
//! `app` wires it together; `config` and `telemetry` set it up; `metrics`
//! counts what happens, for `/metrics`.

pub mod admin;
pub mod api;
pub mod app;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod delivery;
pub mod domain;
pub mod metrics;
pub mod scheduler;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod throttle;
