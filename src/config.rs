//! Configuration: `RawConfig` (serde, as written) → `Config` (validated types).
//!
//! Layers: the built-in defaults (`webhookd.example.toml`, compiled in), then the
//! `--config` file, then `WEBHOOKD_*` environment variables. Errors name the key.
//! Must not import other crate modules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use ipnet::IpNet;
use serde::Deserialize;

/// The documented defaults; also the source of truth for every key's default value.
pub const DEFAULTS_TOML: &str = include_str!("../webhookd.example.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration key `{key}`: {msg}")]
    Invalid { key: &'static str, msg: String },
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
}

/// Longest `request_timeout`: how long an attempt can be under way, which
/// the store relies on (see `store::Withdrawn`).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

fn invalid(key: &'static str, msg: impl ToString) -> ConfigError {
    ConfigError::Invalid {
        key,
        msg: msg.to_string(),
    }
}

/// A list given either as a TOML array or as one comma-separated string (as env vars are).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
enum ListOrString {
    List(Vec<String>),
    String(String),
}

impl ListOrString {
    fn items(&self) -> Vec<String> {
        let items: Vec<&str> = match self {
            Self::List(v) => v.iter().map(String::as_str).collect(),
            Self::String(s) => s.split(',').collect(),
        };
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    data_dir: PathBuf,
    admin_token: String,
    retry_schedule: ListOrString,
    request_timeout: String,
    allow_subnets: ListOrString,
    max_payload_bytes: u64,
    log_format: String,
    delivery: RawDelivery,
    api: RawApi,
    limits: RawLimits,
    encryption: RawEncryption,
    scheduler: RawScheduler,
    retention: RawRetention,
    endpoint_health: RawHealth,
    watchdog: RawWatchdog,
    operational: RawOperational,
    metrics: RawMetrics,
    health: RawHealthCheck,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    token: String,
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    min_free_disk_percent: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScheduler {
    reconcile: String,
    retention: String,
    endpoint_health: String,
    silence_watchdog: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    payload_days: u32,
    app_payload_days: std::collections::BTreeMap<String, u32>,
    attempt_days: u32,
    max_disk_bytes: u64,
    disk_target_percent: u8,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    disable_after: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatchdog {
    factor: f64,
    min_silence: String,
    expect: ListOrString,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperational {
    url: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    threads: u32,
    max_in_flight: u32,
    max_per_endpoint: u32,
    retry_jitter: f64,
    retry_after_max: String,
    lease_margin: String,
    max_response_body_bytes: u64,
    extra_ca_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    key: String,
    key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    publish_per_second: u32,
    auth_failures_per_minute: u32,
    max_json_depth: u32,
    max_endpoint_event_types: u32,
    max_endpoint_headers: u32,
    client_request_timeout: String,
    keep_alive: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    idempotency_ttl: String,
}

/// The validated configuration. Only `app` reads it; each module gets its sub-struct.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `None`: use (or generate) the token file in the data dir.
    pub admin_token: Option<String>,
    pub delivery: DeliveryConfig,
    pub api: ApiConfig,
    pub scheduler: SchedulerConfig,
    pub encryption: EncryptionConfig,
    /// JSON log lines instead of human-readable ones (`--log-format` overrides).
    pub log_json: bool,
    /// What `masked` shows.
    effective: String,
    pub metrics: MetricsConfig,
    pub health: HealthConfig,
}

/// Who may read `/metrics`, and where it is served.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// `None`: the admin token is accepted. Else only this token.
    pub token: Option<String>,
    /// `Some`: served without a token on this address only, not on `listen`.
    pub listen: Option<SocketAddr>,
}

/// When the health check says degraded.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Degraded below this much free space on the data dir's file system (0–100).
    pub min_free_disk_percent: u8,
}

/// Where the key that encrypts secrets at rest comes from.
#[derive(Debug, Clone)]
pub enum EncryptionConfig {
    /// Given in the configuration (base64), not yet checked.
    Key(String),
    /// In this file.
    KeyFile(PathBuf),
    /// The default: `$CREDENTIALS_DIRECTORY/encryption-key` when systemd passes
    /// one, else `encryption-key` in the data dir (generated on first start).
    Default,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Delays before the 2nd, 3rd, … attempt. Its length is the number of retries.
    pub retry_schedule: Vec<Duration>,
    pub request_timeout: Duration,
    pub allow_subnets: Vec<IpNet>,
    /// Delivery threads (each with its own HTTP client); at least one.
    pub threads: usize,
    pub max_in_flight: usize,
    pub max_per_endpoint: usize,
    pub retry_jitter: f64,
    pub retry_after_max: Duration,
    pub lease_margin: Duration,
    pub max_response_body_bytes: usize,
    /// PEM certificates trusted beside the webpki roots (an internal CA).
    pub extra_ca_file: Option<PathBuf>,
}

/// When each job runs (`None`: disabled), and the jobs' own settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub reconcile: Option<cron::Schedule>,
    pub retention: Option<cron::Schedule>,
    pub endpoint_health: Option<cron::Schedule>,
    pub silence_watchdog: Option<cron::Schedule>,
    pub retention_cfg: RetentionConfig,
    pub disable_after: Duration,
    pub watchdog: WatchdogConfig,
    pub operational: OperationalConfig,
}

#[derive(Debug, Clone)]
pub struct RetentionConfig {
    pub payload: Duration,
    /// Per application (uid or id).
    pub app_payload: std::collections::BTreeMap<String, Duration>,
    pub attempts: Duration,
    /// How long an idempotent request's answer is kept (`api.idempotency_ttl`).
    pub idempotency: Duration,
    /// 0: no bound.
    pub max_disk_bytes: u64,
    pub disk_target_percent: u8,
}

#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    pub factor: f64,
    pub min_silence: Duration,
    pub expect: Vec<Expectation>,
}

/// "`event_type` of `app` at least every `every`".
#[derive(Debug, Clone, PartialEq)]
pub struct Expectation {
    pub app: String,
    pub event_type: String,
    pub every: Duration,
}

#[derive(Debug, Clone)]
pub struct OperationalConfig {
    /// `None`: operational webhooks are off.
    pub url: Option<String>,
    /// `whsec_…`, or `None` to generate one.
    pub secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub max_payload_bytes: usize,
    pub idempotency_ttl: Duration,
    pub limits: Limits,
}

/// Bounds on what a client may send or ask for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// 0: no limit.
    pub publish_per_second: u32,
    /// 0: no limit.
    pub auth_failures_per_minute: u32,
    pub max_json_depth: usize,
    pub max_endpoint_event_types: usize,
    pub max_endpoint_headers: usize,
    pub client_request_timeout: Duration,
    pub keep_alive: Duration,
}

fn schedule(key: &'static str, s: &str) -> Result<Option<cron::Schedule>, ConfigError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let schedule = s.parse::<cron::Schedule>().map_err(|e| {
        invalid(
            key,
            format!(
                "`{s}` is not a cron expression with seconds like \"0 * * * * *\", or \"off\" ({e})"
            ),
        )
    })?;
    // Such as the 30th of February: the job would silently never run.
    if schedule.upcoming(chrono::Utc).next().is_none() {
        return Err(invalid(
            key,
            format!("`{s}` never comes; to switch the job off, say \"off\""),
        ));
    }
    Ok(Some(schedule))
}

fn days(key: &'static str, n: u32) -> Result<Duration, ConfigError> {
    if n == 0 {
        return Err(invalid(key, "must be at least 1 day"));
    }
    Ok(Duration::from_secs(u64::from(n) * 86_400))
}

fn scheduler(
    s: RawScheduler,
    r: RawRetention,
    h: RawHealth,
    w: RawWatchdog,
    o: RawOperational,
    idempotency_ttl: Duration,
) -> Result<SchedulerConfig, ConfigError> {
    if !(1..=100).contains(&r.disk_target_percent) {
        return Err(invalid(
            "retention.disk_target_percent",
            "must be between 1 and 100",
        ));
    }
    let app_payload = r
        .app_payload_days
        .iter()
        .map(|(app, d)| Ok((app.clone(), days("retention.app_payload_days", *d)?)))
        .collect::<Result<_, ConfigError>>()?;
    if !(w.factor > 1.0 && w.factor.is_finite()) {
        return Err(invalid("watchdog.factor", "must be greater than 1"));
    }
    let expect = w
        .expect
        .items()
        .iter()
        .map(|e| {
            let parts: Vec<&str> = e.split(':').collect();
            match parts.as_slice() {
                [app, event_type, every] if !app.is_empty() && !event_type.is_empty() => {
                    Ok(Expectation {
                        app: app.to_string(),
                        event_type: event_type.to_string(),
                        every: duration("watchdog.expect", every)?,
                    })
                }
                _ => Err(invalid(
                    "watchdog.expect",
                    format!("`{e}` is not of the form app:event_type:interval"),
                )),
            }
        })
        .collect::<Result<_, _>>()?;
    let url = o.url.trim().to_owned();
    if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid("operational.url", "must be an http or https URL"));
    }
    let secret = o.secret.trim().to_owned();
    if !secret.is_empty() && !secret.starts_with("whsec_") {
        return Err(invalid("operational.secret", "must start with whsec_"));
    }
    Ok(SchedulerConfig {
        reconcile: schedule("scheduler.reconcile", &s.reconcile)?,
        retention: schedule("scheduler.retention", &s.retention)?,
        endpoint_health: schedule("scheduler.endpoint_health", &s.endpoint_health)?,
        silence_watchdog: schedule("scheduler.silence_watchdog", &s.silence_watchdog)?,
        retention_cfg: RetentionConfig {
            payload: days("retention.payload_days", r.payload_days)?,
            app_payload,
            attempts: days("retention.attempt_days", r.attempt_days)?,
            idempotency: idempotency_ttl,
            max_disk_bytes: r.max_disk_bytes,
            disk_target_percent: r.disk_target_percent,
        },
        disable_after: duration_at_least(
            "endpoint_health.disable_after",
            &h.disable_after,
            Duration::from_secs(60),
        )?,
        watchdog: WatchdogConfig {
            factor: w.factor,
            min_silence: duration("watchdog.min_silence", &w.min_silence)?,
            expect,
        },
        operational: OperationalConfig {
            url: (!url.is_empty()).then_some(url),
            secret: (!secret.is_empty()).then_some(secret),
        },
    })
}

fn limits(l: RawLimits) -> Result<Limits, ConfigError> {
    if !(2..=1024).contains(&l.max_json_depth) {
        return Err(invalid(
            "limits.max_json_depth",
            "must be between 2 and 1024",
        ));
    }
    // The HTTP server checks these against a clock it updates every 500 ms.
    let client_request_timeout = duration_at_least(
        "limits.client_request_timeout",
        &l.client_request_timeout,
        Duration::from_secs(1),
    )?;
    let keep_alive = duration_at_least("limits.keep_alive", &l.keep_alive, Duration::from_secs(1))?;
    Ok(Limits {
        publish_per_second: l.publish_per_second,
        auth_failures_per_minute: l.auth_failures_per_minute,
        max_json_depth: l.max_json_depth as usize,
        max_endpoint_event_types: l.max_endpoint_event_types as usize,
        max_endpoint_headers: l.max_endpoint_headers as usize,
        client_request_timeout,
        keep_alive,
    })
}

fn duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{s}` is not a duration like 500ms, 5s or 2h ({e})"),
        )
    })
}

/// The duration `s` says, if it is at least `min`.
fn duration_at_least(key: &'static str, s: &str, min: Duration) -> Result<Duration, ConfigError> {
    let d = duration(key, s)?;
    if d < min {
        return Err(invalid(
            key,
            format!("must be at least {}", humantime::format_duration(min)),
        ));
    }
    Ok(d)
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = raw
            .listen
            .parse()
            .map_err(|_| invalid("listen", format!("`{}` is not an address:port", raw.listen)))?;
        if raw.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        let retry_schedule = raw
            .retry_schedule
            .items()
            .iter()
            .map(|s| duration("retry_schedule", s))
            .collect::<Result<Vec<_>, _>>()?;
        let request_timeout = duration("request_timeout", &raw.request_timeout)?;
        if request_timeout.is_zero() || request_timeout > MAX_REQUEST_TIMEOUT {
            return Err(invalid(
                "request_timeout",
                "must be greater than zero and at most 1h",
            ));
        }
        let allow_subnets = raw
            .allow_subnets
            .items()
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        invalid(
                            "allow_subnets",
                            format!("`{s}` is not a CIDR like 10.0.0.0/8"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if raw.max_payload_bytes == 0 {
            return Err(invalid("max_payload_bytes", "must be greater than zero"));
        }
        let d = raw.delivery;
        if d.max_in_flight == 0 {
            return Err(invalid(
                "delivery.max_in_flight",
                "must be greater than zero",
            ));
        }
        if d.max_per_endpoint == 0 {
            return Err(invalid(
                "delivery.max_per_endpoint",
                "must be greater than zero",
            ));
        }
        if !(0.0..1.0).contains(&d.retry_jitter) {
            return Err(invalid(
                "delivery.retry_jitter",
                "must be at least 0 and below 1",
            ));
        }
        let token = raw.admin_token.trim().to_owned();
        if !token.is_empty() && token.len() < 16 {
            return Err(invalid("admin_token", "must be at least 16 characters"));
        }
        let metrics_token = raw.metrics.token.trim().to_owned();
        if !metrics_token.is_empty() && metrics_token.len() < 16 {
            return Err(invalid("metrics.token", "must be at least 16 characters"));
        }
        let metrics_listen = raw.metrics.listen.trim();
        let metrics_listen = if metrics_listen.is_empty() {
            None
        } else {
            Some(metrics_listen.parse().map_err(|_| {
                invalid(
                    "metrics.listen",
                    format!("`{metrics_listen}` is not an address:port"),
                )
            })?)
        };
        let idempotency_ttl = duration("api.idempotency_ttl", &raw.api.idempotency_ttl)?;
        if raw.health.min_free_disk_percent > 100 {
            return Err(invalid(
                "health.min_free_disk_percent",
                "must be between 0 and 100",
            ));
        }
        Ok(Config {
            listen,
            data_dir: raw.data_dir,
            admin_token: (!token.is_empty()).then_some(token),
            delivery: DeliveryConfig {
                retry_schedule,
                request_timeout,
                allow_subnets,
                threads: match d.threads {
                    0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                    n => n as usize,
                },
                max_in_flight: d.max_in_flight as usize,
                max_per_endpoint: d.max_per_endpoint as usize,
                retry_jitter: d.retry_jitter,
                retry_after_max: duration("delivery.retry_after_max", &d.retry_after_max)?,
                // Else an attempt that takes all of request_timeout outlives
                // its lease, and its claim is delivered again.
                lease_margin: duration_at_least(
                    "delivery.lease_margin",
                    &d.lease_margin,
                    Duration::from_secs(1),
                )?,
                max_response_body_bytes: d.max_response_body_bytes as usize,
                extra_ca_file: Some(d.extra_ca_file.trim())
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from),
            },
            api: ApiConfig {
                max_payload_bytes: raw.max_payload_bytes as usize,
                idempotency_ttl,
                limits: limits(raw.limits)?,
            },
            effective: String::new(),
            log_json: match raw.log_format.trim() {
                "text" => false,
                "json" => true,
                _ => return Err(invalid("log_format", "must be \"text\" or \"json\"")),
            },
            encryption: match (raw.encryption.key.trim(), raw.encryption.key_file.trim()) {
                ("", "") => EncryptionConfig::Default,
                (key, "") => {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD.decode(key);
                    if bytes.map(|b| b.len()) != Ok(32) {
                        return Err(invalid(
                            "encryption.key",
                            "must be 32 bytes as standard base64 (44 characters)",
                        ));
                    }
                    EncryptionConfig::Key(key.to_owned())
                }
                ("", file) => EncryptionConfig::KeyFile(file.into()),
                _ => {
                    return Err(invalid(
                        "encryption.key",
                        "set either encryption.key or encryption.key_file, not both",
                    ));
                }
            },
            scheduler: scheduler(
                raw.scheduler,
                raw.retention,
                raw.endpoint_health,
                raw.watchdog,
                raw.operational,
                idempotency_ttl,
            )?,
            metrics: MetricsConfig {
                token: (!metrics_token.is_empty()).then_some(metrics_token),
                listen: metrics_listen,
            },
            health: HealthConfig {
                min_free_disk_percent: raw.health.min_free_disk_percent,
            },
        })
    }
}

/// Settings whose values are secrets: `check-config` shows only that they are set.
const SECRET_KEYS: [&str; 4] = [
    "admin_token",
    "encryption.key",
    "operational.secret",
    "metrics.token",
];

/// The merged layers as TOML, secrets masked.
fn effective(fig: &Figment) -> String {
    use figment::value::{Dict, Value};
    let mut dict: Dict = fig.extract().unwrap_or_default();
    for key in SECRET_KEYS {
        let mut parts = key.split('.').peekable();
        let mut table = &mut dict;
        while let Some(part) = parts.next() {
            let Some(value) = table.get_mut(part) else {
                break;
            };
            match value {
                Value::Dict(_, inner) if parts.peek().is_some() => table = inner,
                Value::String(_, s) if parts.peek().is_none() && !s.is_empty() => {
                    *s = "********".into();
                    break;
                }
                _ => break,
            }
        }
    }
    toml::to_string(&dict).unwrap_or_else(|e| format!("# cannot show the configuration: {e}\n"))
}

impl Config {
    /// The effective configuration (every layer merged) as TOML, with secrets masked.
    pub fn masked(&self) -> String {
        self.effective.clone()
    }
}

/// `WEBHOOKD_*` variables that are not settings (the command line reads them).
const NOT_SETTINGS: [&str; 1] = ["CONFIG"];

/// Keys whose environment values must stay strings even when they look like numbers.
const RAW_STRING_KEYS: [&str; 8] = [
    "admin_token",
    "data_dir",
    "listen",
    "encryption.key",
    "encryption.key_file",
    "delivery.extra_ca_file",
    "metrics.token",
    "metrics.listen",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Like `load`, with the environment passed in (tests).
    pub fn load_from(file: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULTS_TOML));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile(path.to_owned()));
            }
            fig = fig.merge(Toml::file(path));
        }
        // Environment variables: `WEBHOOKD_A__B` sets key `a.b`. Values are parsed like
        // TOML scalars, except keys that must stay strings even when they look numeric.
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("WEBHOOKD_") else {
                continue;
            };
            if NOT_SETTINGS.contains(&rest) {
                continue;
            }
            let key = rest.to_lowercase().replace("__", ".");
            fig = if RAW_STRING_KEYS.contains(&key.as_str()) {
                fig.merge((key, value.clone()))
            } else {
                let parsed: figment::value::Value =
                    value.parse().expect("parsing a value is infallible");
                fig.merge((key, parsed))
            };
        }
        let raw: RawConfig = fig.extract().map_err(Box::new)?;
        let mut config = Config::try_from(raw)?;
        config.effective = effective(&fig);
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_parse() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8071");
        assert_eq!(c.data_dir, PathBuf::from("./webhookd-data"));
        assert_eq!(c.admin_token, None);
        assert_eq!(c.delivery.retry_schedule.len(), 7);
        assert_eq!(c.delivery.retry_schedule[0], Duration::from_secs(5));
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(15));
        assert!(c.delivery.allow_subnets.is_empty());
        assert_eq!(c.api.max_payload_bytes, 1_048_576);
    }

    #[test]
    fn env_overrides_and_keeps_numeric_strings() {
        let c = Config::load_from(
            None,
            &env(&[
                ("WEBHOOKD_LISTEN", "127.0.0.1:0"),
                ("WEBHOOKD_ADMIN_TOKEN", "0123456789012345678"),
                ("WEBHOOKD_RETRY_SCHEDULE", "500ms,5s"),
                ("WEBHOOKD_ALLOW_SUBNETS", "127.0.0.0/8, ::1/128"),
                ("WEBHOOKD_MAX_PAYLOAD_BYTES", "2048"),
                ("WEBHOOKD_DELIVERY__MAX_IN_FLIGHT", "7"),
                ("WEBHOOKD_CONFIG", "/etc/webhookd/config.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.admin_token.as_deref(), Some("0123456789012345678"));
        assert_eq!(
            c.delivery.retry_schedule,
            vec![Duration::from_millis(500), Duration::from_secs(5)]
        );
        assert_eq!(c.delivery.allow_subnets.len(), 2);
        assert_eq!(c.api.max_payload_bytes, 2048);
        assert_eq!(c.delivery.max_in_flight, 7);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("WEBHOOKD_LISTEN", "nope", "listen"),
            ("WEBHOOKD_RETRY_SCHEDULE", "5s,soon", "retry_schedule"),
            ("WEBHOOKD_REQUEST_TIMEOUT", "0s", "request_timeout"),
            ("WEBHOOKD_REQUEST_TIMEOUT", "61m", "at most 1h"),
            ("WEBHOOKD_ALLOW_SUBNETS", "10.0.0.0/33", "allow_subnets"),
            ("WEBHOOKD_MAX_PAYLOAD_BYTES", "lots", "max_payload_bytes"),
            (
                "WEBHOOKD_DELIVERY__LEASE_MARGIN",
                "0s",
                "delivery.lease_margin",
            ),
            (
                "WEBHOOKD_ENDPOINT_HEALTH__DISABLE_AFTER",
                "0s",
                "endpoint_health.disable_after",
            ),
            ("WEBHOOKD_NO_SUCH_KEY", "1", "no_such_key"),
            (
                "WEBHOOKD_ENDPOINT_HEALTH__DISABLE_AFTER",
                "59s",
                "must be at least 1m",
            ),
            (
                "WEBHOOKD_LIMITS__KEEP_ALIVE",
                "900ms",
                "must be at least 1s",
            ),
            (
                "WEBHOOKD_SCHEDULER__RECONCILE",
                "0 0 0 30 2 *",
                "`0 0 0 30 2 *` never comes",
            ),
            (
                "WEBHOOKD_DELIVERY__RETRY_JITTER",
                "3",
                "delivery.retry_jitter",
            ),
        ];
        for (k, v, key) in cases {
            let err = Config::load_from(None, &env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{k}={v}: `{err}` does not name `{key}`");
        }
    }

    #[test]
    fn scheduler_settings() {
        let c = Config::load_from(
            None,
            &env(&[
                ("WEBHOOKD_SCHEDULER__RETENTION", "off"),
                ("WEBHOOKD_WATCHDOG__EXPECT", "shop:order.created:10m"),
            ]),
        )
        .unwrap();
        let s = &c.scheduler;
        assert!(s.reconcile.is_some() && s.retention.is_none());
        assert_eq!(s.retention_cfg.payload, Duration::from_secs(30 * 86_400));
        assert_eq!(s.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(
            s.watchdog.expect,
            vec![Expectation {
                app: "shop".into(),
                event_type: "order.created".into(),
                every: Duration::from_secs(600)
            }]
        );
        assert_eq!(s.operational.url, None);
    }

    #[test]
    fn metrics_and_health_settings() {
        let c = Config::load_from(None, &[]).unwrap();
        assert_eq!(c.metrics.token, None);
        assert_eq!(c.metrics.listen, None);
        assert_eq!(c.health.min_free_disk_percent, 5);
        let c = Config::load_from(
            None,
            &env(&[
                ("WEBHOOKD_METRICS__TOKEN", "1234567890123456"),
                ("WEBHOOKD_METRICS__LISTEN", "127.0.0.1:9090"),
                ("WEBHOOKD_HEALTH__MIN_FREE_DISK_PERCENT", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(c.metrics.token.as_deref(), Some("1234567890123456"));
        assert_eq!(c.metrics.listen.unwrap().port(), 9090);
        assert_eq!(c.health.min_free_disk_percent, 10);
        let masked = c.masked();
        let metrics_table = masked.split("[metrics]").nth(1).unwrap_or_default();
        assert!(metrics_table.contains("token = \"********\""), "{masked}");
        assert!(!masked.contains("1234567890123456"));
        for (k, v, key) in [
            ("WEBHOOKD_METRICS__TOKEN", "short", "metrics.token"),
            ("WEBHOOKD_METRICS__LISTEN", "nowhere", "metrics.listen"),
            (
                "WEBHOOKD_HEALTH__MIN_FREE_DISK_PERCENT",
                "101",
                "health.min_free_disk_percent",
            ),
        ] {
            let err = Config::load_from(None, &env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{k}={v}: `{err}` does not name `{key}`");
        }
    }

    #[test]
    fn file_layer_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "request_timeout = \"3s\"\n[delivery]\nmax_per_endpoint = 2\n",
        )
        .unwrap();
        let c =
            Config::load_from(Some(&path), &env(&[("WEBHOOKD_REQUEST_TIMEOUT", "4s")])).unwrap();
        assert_eq!(c.delivery.request_timeout, Duration::from_secs(4));
        assert_eq!(c.delivery.max_per_endpoint, 2);
        let err = Config::load_from(Some(&dir.path().join("none.toml")), &[]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingFile(_)));
    }
}
