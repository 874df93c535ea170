//! HTTP-level integration tests: webhookd in-process, driven over its API, delivering to real receivers.

mod apps;
mod attempts;
mod dashboard;
mod delivery;
mod endpoints;
mod errors;
mod event_types;
mod health;
mod helpers;
mod hostile;
mod limits;
mod messages;
mod metrics;
mod pagination;
mod retries;
mod scheduler;
mod secrets;
mod security;
mod tls;
mod tokens;
