//! Prometheus metrics, through `prometheus-client` (OpenMetrics text). One
//! [`Metrics`] per running service, shared by the HTTP layer and the actors;
//! gauges that mirror actor state (pool, queue depth) are refreshed when
//! `/metrics` is scraped, by asking the actors.

use std::sync::{Arc, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub kind: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub kind: String,
    pub action: String,
    /// `changed`, `refused` or `not_found`; for a bulk action (`action`
    /// `bulk_cancel`, `bulk_retry`) each message it matched counts once,
    /// as `changed` or `unchanged`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `delivered`, `retry`, `failed` (given up) or `gone` (410).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChildLabels {
    pub child: String,
}

/// Reads how many log lines the log writer has dropped so far.
type DroppedSource = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Set by the logging set-up, which runs in `main` before any [`Metrics`]
/// exists, and read at every scrape. Unset (in-process tests), it reads 0.
static DROPPED_LOG_LINES: RwLock<Option<DroppedSource>> = RwLock::new(None);

/// Makes `read` the source of `email_service_log_lines_dropped_total`: the
/// count of log lines dropped because the log buffer was full. The last
/// call wins.
pub fn count_dropped_log_lines(read: impl Fn() -> u64 + Send + Sync + 'static) {
    let mut source = DROPPED_LOG_LINES.write().unwrap_or_else(|e| e.into_inner());
    *source = Some(Arc::new(read));
}

fn dropped_log_lines() -> u64 {
    let source = DROPPED_LOG_LINES
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    source.map_or(0, |read| read())
}

/// Encodes the dropped-log-lines counter from its source at scrape time.
#[derive(Debug)]
struct DroppedLogLines;

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(dropped_log_lines());
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log buffer was full (stdout too slow)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 0.1 ms … ~13 s: for database round trips, which are often under 1 ms.
fn fine_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabels>,
    pub accepted: Family<KindLabels, Counter>,
    pub attempts: Family<OutcomeLabels, Counter>,
    pub send_duration: Histogram,
    pub claim_duration: Histogram,
    pub record_wait: Histogram,
    pub queue_depth: Gauge,
    pub scheduled_retries: Gauge,
    pub leases_reclaimed: Counter,
    pub actor_restarts: Family<ChildLabels, Counter>,
    pub db_pool_connections: Gauge,
    pub db_pool_idle: Gauge,
    pub rate_limited: Counter,
    pub actions: Family<ActionLabels, Counter>,
    pub webhook_attempts: Family<WebhookLabels, Counter>,
    pub webhook_duration: Histogram,
    pub webhook_queue_depth: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("email_service");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            http_duration.clone(),
        );
        let accepted = Family::<KindLabels, Counter>::default();
        registry.register(
            "messages_accepted",
            "Messages committed and answered 202 (replays not counted)",
            accepted.clone(),
        );
        let attempts = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by kind and outcome (sent, transient, permanent, crash)",
            attempts.clone(),
        );
        let send_duration = latency_histogram();
        registry.register(
            "send_duration_seconds",
            "Time of one delivery attempt through the backend",
            send_duration.clone(),
        );
        let claim_duration = fine_histogram();
        registry.register(
            "claim_duration_seconds",
            "Time to claim a batch of due messages in PostgreSQL, as the dispatcher sees it",
            claim_duration.clone(),
        );
        let record_wait = fine_histogram();
        registry.register(
            "record_wait_seconds",
            "Time from the end of a send until its outcome is committed: the mailer's wait before its next send",
            record_wait.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "ready_queue_depth",
            "Entries in the Redis ready stream (unread or in progress)",
            queue_depth.clone(),
        );
        let scheduled_retries = Gauge::default();
        registry.register(
            "scheduled_retries",
            "Retries waiting in the Redis schedule",
            scheduled_retries.clone(),
        );
        let leases_reclaimed = Counter::default();
        registry.register(
            "leases_reclaimed",
            "Expired leases turned back into retries (a sender died mid-send)",
            leases_reclaimed.clone(),
        );
        let actor_restarts = Family::<ChildLabels, Counter>::default();
        registry.register(
            "actor_restarts",
            "Restarts of supervised actors, by child",
            actor_restarts.clone(),
        );
        let db_pool_connections = Gauge::default();
        registry.register(
            "db_pool_connections",
            "Open PostgreSQL connections in the pool",
            db_pool_connections.clone(),
        );
        let db_pool_idle = Gauge::default();
        registry.register(
            "db_pool_idle_connections",
            "Idle PostgreSQL connections in the pool",
            db_pool_idle.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "contact_rate_limited",
            "Contact-form requests refused by the per-IP rate limit",
            rate_limited.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "operator_actions",
            "Operator cancels and resends, by kind, action and result; a bulk action counts each message it matched (changed, unchanged)",
            actions.clone(),
        );
        let webhook_attempts = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook delivery attempts, by what they left the event as (delivered, retry, failed, gone)",
            webhook_attempts.clone(),
        );
        let webhook_duration = latency_histogram();
        registry.register(
            "webhook_attempt_duration_seconds",
            "Time of one webhook attempt, until the receiver's answer or the timeout",
            webhook_duration.clone(),
        );
        let webhook_queue_depth = Gauge::default();
        registry.register(
            "webhook_queue_depth",
            "Webhook events waiting for delivery or a retry, at the last count",
            webhook_queue_depth.clone(),
        );
        registry.register_collector(Box::new(DroppedLogLines));
        Self {
            registry,
            http_requests,
            http_duration,
            accepted,
            attempts,
            send_duration,
            claim_duration,
            record_wait,
            queue_depth,
            scheduled_retries,
            leases_reclaimed,
            actor_restarts,
            db_pool_connections,
            db_pool_idle,
            rate_limited,
            actions,
            webhook_attempts,
            webhook_duration,
            webhook_queue_depth,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    pub fn attempt(&self, kind: &str, outcome: &str) {
        self.attempts
            .get_or_create(&OutcomeLabels {
                kind: kind.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}
