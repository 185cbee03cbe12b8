//! Configuration: every variable of the contract, read once at start into one
//! typed [`Config`], with all defaults in this file.
//!
//! Loading never panics. A bad value yields a [`ConfigError`] that names the
//! variable and the value, and `main` turns it into one line and exit code 1.
//! Secrets are wrapped in [`Secret`] so that `?config` can be logged as is.
//! The source of variables is a function, so tests build configurations from
//! a map instead of mutating the process environment.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

mod cors;
mod secret;
mod vars;
mod webhooks;

pub use cors::CorsConfig;
pub use secret::Secret;
use vars::Vars;
pub use webhooks::WebhookConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailBackend {
    Console,
    File,
    Smtp,
}

impl EmailBackend {
    /// Accepts our short names and Django's dotted backend paths, so that an
    /// existing `.env` of the Django service keeps working.
    fn parse(raw: &str) -> Option<Self> {
        match raw.trim() {
            "console" | "django.core.mail.backends.console.EmailBackend" => Some(Self::Console),
            "file" | "django.core.mail.backends.filebased.EmailBackend" => Some(Self::File),
            "smtp" | "django.core.mail.backends.smtp.EmailBackend" => Some(Self::Smtp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub use_tls: bool,
    pub use_ssl: bool,
    pub user: String,
    pub password: Secret,
    pub timeout: Duration,
    /// `EMAIL_TLS_CA_FILE`: extra trusted roots (PEM) for STARTTLS and
    /// implicit TLS, on top of the bundled web PKI roots; for a relay with a
    /// private CA. Read and checked at start.
    pub tls_ca_file: Option<PathBuf>,
    /// The certificates of `tls_ca_file`, DER.
    pub tls_extra_roots: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub backoff_factor: f64,
}

impl RetryPolicy {
    /// Delay before retry `n` (1-based): `base × factor^(n-1)`, capped at one day
    /// so that a large factor cannot overflow a timestamp.
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(64) as i32;
        let ms = self.base_delay.as_millis() as f64 * self.backoff_factor.powi(exp);
        Duration::from_millis(ms.min(86_400_000.0) as u64)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub database_url: Secret,
    pub redis_url: Secret,
    pub redis_key_prefix: String,
    pub email_backend: EmailBackend,
    pub email_file_path: PathBuf,
    pub smtp: SmtpConfig,
    pub default_from_email: String,
    pub contact_recipient: String,
    pub mailer_workers: usize,
    pub retry: RetryPolicy,
    /// Bearer tokens; empty means the internal endpoints are open.
    pub api_tokens: Vec<Secret>,
    pub log_format: LogFormat,
    pub rust_log: String,
    /// `POST /api/contact/` per client IP per minute; 0 is off.
    pub contact_rate_limit: u32,
    pub shutdown_timeout: Duration,
    pub idempotency_ttl: Duration,
    /// Browser origins allowed to call the API (`CORS_*`).
    pub cors: CorsConfig,
    /// Status webhooks (`WEBHOOK_*`, in `webhooks.rs`).
    pub webhooks: WebhookConfig,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {variable}={value:?}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub reason: String,
}

impl Config {
    /// Reads the process environment, after loading `.env` from the working
    /// directory when there is one (variables already set win, as in Django's
    /// `python-dotenv` set-up).
    pub fn from_env() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => {
                return Err(ConfigError {
                    variable: ".env",
                    value: String::new(),
                    reason: e.to_string(),
                });
            }
        }
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Builds a configuration from a map; what is missing takes its default.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| vars.get(k).cloned())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let v = Vars { get: &get };
        let database_url = match v.opt("DATABASE_URL") {
            Some(url) => url,
            None => {
                let host = v.string("DB_HOST", "localhost");
                let port: u16 = v.parse("DB_PORT", 5432)?;
                let name = v.string("DB_NAME", "email_service");
                let user = v.string("DB_USER", "postgres");
                let pass = v.string("DB_PASS", "");
                let enc = |s: &str| {
                    percent_encoding::utf8_percent_encode(s, crate::util::URL_COMPONENT).to_string()
                };
                let auth = if pass.is_empty() {
                    enc(&user)
                } else {
                    format!("{}:{}", enc(&user), enc(&pass))
                };
                format!("postgres://{auth}@{host}:{port}/{}", enc(&name))
            }
        };
        if database_url.parse::<tokio_postgres::Config>().is_err() {
            return Err(v.error("DATABASE_URL", "***", "not a PostgreSQL connection URL"));
        }
        let redis_url = match v.opt("REDIS_URL") {
            Some(url) => url,
            None => {
                let host = v.string("REDIS_HOST", "127.0.0.1");
                let port: u16 = v.parse("REDIS_PORT", 6379)?;
                format!("redis://{host}:{port}/")
            }
        };
        if redis::Client::open(redis_url.as_str()).is_err() {
            return Err(v.error("REDIS_URL", "***", "not a Redis URL"));
        }
        let email_backend = {
            let raw = v.string("EMAIL_BACKEND", "console");
            EmailBackend::parse(&raw).ok_or_else(|| {
                v.error(
                    "EMAIL_BACKEND",
                    &raw,
                    "expected console, file or smtp (or Django's dotted name)",
                )
            })?
        };
        let log_format = match v.string("LOG_FORMAT", "json").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            other => return Err(v.error("LOG_FORMAT", other, "expected json or pretty")),
        };
        let rust_log = v.string("RUST_LOG", "info");
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&rust_log) {
            return Err(v.error(
                "RUST_LOG",
                &rust_log,
                &format!("not a valid log filter ({e}); e.g. info or info,email_service=debug"),
            ));
        }
        let redis_key_prefix = v.string("REDIS_KEY_PREFIX", "email-service");
        if redis_key_prefix.is_empty() {
            return Err(v.error("REDIS_KEY_PREFIX", "", "must not be empty"));
        }
        let mailer_workers: usize = v.parse("MAILER_WORKERS", 4)?;
        if !(1..=256).contains(&mailer_workers) {
            return Err(v.error(
                "MAILER_WORKERS",
                &mailer_workers.to_string(),
                "must be between 1 and 256",
            ));
        }
        let backoff_factor: f64 = v.parse("EMAIL_RETRY_BACKOFF_FACTOR", 5.0)?;
        if !(backoff_factor.is_finite() && backoff_factor >= 1.0) {
            return Err(v.error(
                "EMAIL_RETRY_BACKOFF_FACTOR",
                &backoff_factor.to_string(),
                "must be a number >= 1",
            ));
        }
        let email_timeout: u64 = v.parse("EMAIL_TIMEOUT", 10)?;
        if email_timeout == 0 {
            return Err(v.error("EMAIL_TIMEOUT", "0", "must be at least 1 second"));
        }
        let idempotency_ttl_hours: u64 = v.parse("IDEMPOTENCY_TTL_HOURS", 24)?;
        if idempotency_ttl_hours == 0 || idempotency_ttl_hours > 24 * 365 {
            return Err(v.error(
                "IDEMPOTENCY_TTL_HOURS",
                &idempotency_ttl_hours.to_string(),
                "must be between 1 and 8760",
            ));
        }
        let tls_ca_file = v.opt("EMAIL_TLS_CA_FILE").map(PathBuf::from);
        let tls_extra_roots = match &tls_ca_file {
            None => Vec::new(),
            Some(path) => read_pem_certificates(path)
                .map_err(|reason| v.error("EMAIL_TLS_CA_FILE", &path.to_string_lossy(), &reason))?,
        };
        let api_tokens = v
            .string("API_TOKEN", "")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .collect();

        Ok(Config {
            host: v.parse("HOST", IpAddr::from([0, 0, 0, 0]))?,
            port: v.parse("PORT", 8002)?,
            database_url: Secret::new(database_url),
            redis_url: Secret::new(redis_url),
            redis_key_prefix,
            email_backend,
            email_file_path: PathBuf::from(v.string("EMAIL_FILE_PATH", "./sent_emails")),
            smtp: SmtpConfig {
                host: v.string("EMAIL_HOST", "localhost"),
                port: v.parse("EMAIL_PORT", 25)?,
                use_tls: v.bool("EMAIL_USE_TLS", false)?,
                use_ssl: v.bool("EMAIL_USE_SSL", false)?,
                user: v.string("EMAIL_HOST_USER", ""),
                password: Secret::new(v.string("EMAIL_HOST_PASSWORD", "")),
                timeout: Duration::from_secs(email_timeout),
                tls_ca_file,
                tls_extra_roots,
            },
            default_from_email: v.mailbox("DEFAULT_FROM_EMAIL", "noreply@localhost")?,
            contact_recipient: v.mailbox("CONTACT_RECIPIENT", "admin@localhost")?,
            mailer_workers,
            retry: RetryPolicy {
                max_retries: v.parse("EMAIL_MAX_RETRIES", 3)?,
                base_delay: Duration::from_millis(v.parse("EMAIL_RETRY_BASE_DELAY_MS", 5000)?),
                backoff_factor,
            },
            api_tokens,
            log_format,
            rust_log,
            contact_rate_limit: v.parse("CONTACT_RATE_LIMIT", 0)?,
            shutdown_timeout: Duration::from_secs(v.parse("SHUTDOWN_TIMEOUT", 30)?),
            idempotency_ttl: Duration::from_secs(idempotency_ttl_hours * 3600),
            cors: cors::read(&v)?,
            webhooks: webhooks::load(&v)?,
        })
        .and_then(|c: Config| {
            if c.smtp.use_tls && c.smtp.use_ssl {
                Err(v.error(
                    "EMAIL_USE_SSL",
                    "true",
                    "EMAIL_USE_TLS and EMAIL_USE_SSL are mutually exclusive",
                ))
            } else {
                Ok(c)
            }
        })
    }
}

/// The certificates of a PEM file (DER), at least one.
fn read_pem_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_map(&map)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(&[]).unwrap();
        assert_eq!(c.port, 8002);
        assert_eq!(c.host.to_string(), "0.0.0.0");
        assert_eq!(
            c.database_url.expose(),
            "postgres://postgres@localhost:5432/email_service"
        );
        assert_eq!(c.redis_url.expose(), "redis://127.0.0.1:6379/");
        assert_eq!(c.redis_key_prefix, "email-service");
        assert_eq!(c.email_backend, EmailBackend::Console);
        assert_eq!(c.mailer_workers, 4);
        assert_eq!(c.retry.max_retries, 3);
        assert_eq!(c.smtp.timeout, Duration::from_secs(10));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert!(c.api_tokens.is_empty());
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn database_url_is_built_from_its_parts_with_escaping() {
        let c = load(&[
            ("DB_HOST", "db"),
            ("DB_PORT", "6543"),
            ("DB_NAME", "mail"),
            ("DB_USER", "svc"),
            ("DB_PASS", "p@ss/word"),
        ])
        .unwrap();
        assert_eq!(
            c.database_url.expose(),
            "postgres://svc:p%40ss%2Fword@db:6543/mail"
        );
    }

    #[test]
    fn retry_delays_follow_the_schedule() {
        let c = load(&[]).unwrap();
        let secs: Vec<u64> = (1..=3).map(|n| c.retry.delay(n).as_secs()).collect();
        assert_eq!(secs, vec![5, 25, 125]);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let cases = [
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("DB_PORT", "x"),
            ("EMAIL_BACKEND", "carrier-pigeon"),
            ("EMAIL_USE_TLS", "maybe"),
            ("MAILER_WORKERS", "0"),
            ("EMAIL_RETRY_BACKOFF_FACTOR", "0.5"),
            ("LOG_FORMAT", "xml"),
            ("DEFAULT_FROM_EMAIL", "not an address"),
            ("HOST", "example"),
            ("IDEMPOTENCY_TTL_HOURS", "0"),
            ("SHUTDOWN_TIMEOUT", "-1"),
            ("RUST_LOG", "email_service=loud"),
            ("EMAIL_TLS_CA_FILE", "/nonexistent/ca.pem"),
            ("EMAIL_TLS_CA_FILE", "/dev/null"),
        ];
        for (var, value) in cases {
            let err = load(&[(var, value)]).expect_err(var);
            assert_eq!(err.variable, var, "{var}={value}");
            assert!(err.to_string().contains(var));
        }
    }

    #[test]
    fn django_backend_names_are_accepted() {
        for (name, want) in [
            (
                "django.core.mail.backends.smtp.EmailBackend",
                EmailBackend::Smtp,
            ),
            (
                "django.core.mail.backends.filebased.EmailBackend",
                EmailBackend::File,
            ),
            (
                "django.core.mail.backends.console.EmailBackend",
                EmailBackend::Console,
            ),
        ] {
            assert_eq!(
                load(&[("EMAIL_BACKEND", name)]).unwrap().email_backend,
                want
            );
        }
    }

    #[test]
    fn secrets_never_print() {
        let c = load(&[
            ("EMAIL_HOST_PASSWORD", "hunter2"),
            ("API_TOKEN", "tok-a, tok-b"),
            ("DATABASE_URL", "postgres://u:dbsecret@h/db"),
        ])
        .unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains("tok-a"));
        assert!(!printed.contains("dbsecret"));
        assert_eq!(c.api_tokens.len(), 2);
        assert_eq!(c.api_tokens[1].expose(), "tok-b");
    }
}
