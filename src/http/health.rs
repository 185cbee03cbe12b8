//! `/livez` (the process runs) and `/healthz` (the service can do its job).
//!
//! `/healthz` asks every actor concurrently from the request's own task, each
//! with its own timeout, so one stuck actor cannot delay the answer past the
//! contract's 2 s, and a missing answer reads as an error, never as "ok".

use std::collections::BTreeMap;

use hyper::StatusCode;
use ractor::call_t;
use serde::Serialize;
use serde_json::Value;

use super::error::json;
use super::{AppContext, HttpResponse};
use crate::actors::persistence::PersistenceMsg;
use crate::actors::protocol::{DispatcherMsg, IngressMsg, MailerMsg, SupervisorMsg};
use crate::actors::webhooks::WebhooksMsg;

/// Per-actor budget inside `/healthz`; the queries run in parallel.
const HEALTH_CALL_TIMEOUT_MS: u64 = 1500;

pub fn livez() -> HttpResponse {
    json(StatusCode::OK, &serde_json::json!({"status": "alive"}))
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    checks: BTreeMap<&'static str, String>,
    actors: BTreeMap<&'static str, Value>,
}

fn check<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    }
}

pub async fn healthz(ctx: &AppContext) -> HttpResponse {
    let persistence = ctx.registry.persistence();
    let supervisor = ctx.registry.supervisor();
    let dispatcher = ctx.registry.dispatcher();
    let mailers = ctx.registry.mailers();

    let database = async {
        let Some(p) = &persistence else {
            return Err("persistence actor is restarting".to_owned());
        };
        match call_t!(p, PersistenceMsg::Ping, HEALTH_CALL_TIMEOUT_MS) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(ractor::RactorErr::Timeout) => Err("timeout".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    let persistence_report = async {
        let p = persistence.as_ref()?;
        call_t!(p, PersistenceMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let supervisor_report = async {
        let s = supervisor.as_ref()?;
        call_t!(s, SupervisorMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let redis = async {
        let Some(d) = &dispatcher else {
            return Err("dispatcher is restarting".to_owned());
        };
        match call_t!(d, DispatcherMsg::Ping, HEALTH_CALL_TIMEOUT_MS) {
            Ok(r) => r,
            Err(ractor::RactorErr::Timeout) => Err("timeout".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    let ingress = ctx.registry.ingress();
    let ingress_report = async {
        let i = ingress.as_ref()?;
        call_t!(i, IngressMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let dispatcher_report = async {
        let d = dispatcher.as_ref()?;
        call_t!(d, DispatcherMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let webhooks = ctx.registry.webhooks();
    let webhooks_report = async {
        let w = webhooks.as_ref()?;
        call_t!(w, WebhooksMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    // One task per mailer, so they are asked at the same time; awaiting the
    // handles in order then costs the slowest answer, not the sum.
    let mailer_tasks: Vec<_> = mailers
        .into_iter()
        .map(|m| {
            tokio::spawn(async move {
                let m = m?;
                call_t!(m, MailerMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
            })
        })
        .collect();
    let mailer_reports = async {
        let mut reports = Vec::with_capacity(mailer_tasks.len());
        for t in mailer_tasks {
            reports.push(t.await.ok().flatten());
        }
        reports
    };
    let (
        database,
        redis,
        persistence_report,
        supervisor_report,
        dispatcher_report,
        ingress_report,
        mailer_reports,
        webhooks_report,
    ) = tokio::join!(
        database,
        redis,
        persistence_report,
        supervisor_report,
        dispatcher_report,
        ingress_report,
        mailer_reports,
        webhooks_report
    );

    let alive = mailer_reports.iter().filter(|r| r.is_some()).count();
    let mailers_check = if dispatcher_report.is_none() {
        Err("the dispatcher does not answer".to_owned())
    } else if alive == 0 {
        Err(format!(
            "none of {} mailers is running",
            mailer_reports.len()
        ))
    } else {
        Ok(())
    };

    // Reachable is not enough: until the migrations are applied the service
    // cannot accept anything, and health must say so.
    let database = database.and_then(|()| match &persistence_report {
        Some(r) if !r.schema_ready => Err("schema migrations not applied yet".to_owned()),
        _ => Ok(()),
    });
    let mut checks = BTreeMap::new();
    checks.insert("database", check(database));
    checks.insert("redis", check(redis));
    checks.insert("mailers", check(mailers_check));
    // Only the actor itself counts: a receiver that is down or failing is
    // the receiver's trouble, and its events wait in the outbox.
    if ctx.config.webhooks.enabled() {
        let answered = webhooks_report
            .as_ref()
            .map(|_| ())
            .ok_or("the webhooks actor does not answer");
        checks.insert("webhooks", check(answered));
    }

    let to_value = |v: Option<Value>| v.unwrap_or_else(|| Value::String("error: no answer".into()));
    let mut actors = BTreeMap::new();
    actors.insert(
        "supervisor",
        to_value(supervisor_report.and_then(|r| serde_json::to_value(r).ok())),
    );
    actors.insert(
        "persistence",
        to_value(persistence_report.and_then(|r| serde_json::to_value(r).ok())),
    );
    actors.insert(
        "dispatcher",
        to_value(dispatcher_report.and_then(|r| serde_json::to_value(r).ok())),
    );
    actors.insert(
        "http_ingress",
        to_value(ingress_report.and_then(|r| serde_json::to_value(r).ok())),
    );
    actors.insert(
        "webhooks",
        to_value(webhooks_report.and_then(|r| serde_json::to_value(r).ok())),
    );
    actors.insert(
        "mailers",
        Value::Array(
            mailer_reports
                .into_iter()
                .map(|r| to_value(r.and_then(|r| serde_json::to_value(r).ok())))
                .collect(),
        ),
    );

    let healthy = checks.values().all(|c| c == "ok");
    let body = HealthBody {
        status: if healthy { "healthy" } else { "unhealthy" },
        checks,
        actors,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}

/// Prometheus text. Gauges that mirror actor state are refreshed first, by
/// asking the actors (each with a timeout, concurrently).
pub async fn metrics(ctx: &AppContext) -> HttpResponse {
    let persistence = ctx.registry.persistence();
    let dispatcher = ctx.registry.dispatcher();
    let pool = async {
        let p = persistence.as_ref()?;
        call_t!(p, PersistenceMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let queue = async {
        let d = dispatcher.as_ref()?;
        call_t!(d, DispatcherMsg::Report, HEALTH_CALL_TIMEOUT_MS).ok()
    };
    let (pool, queue) = tokio::join!(pool, queue);
    let m = &ctx.metrics;
    if let Some(p) = pool {
        m.db_pool_connections.set(p.pool_connections.into());
        m.db_pool_idle.set(p.pool_idle.into());
    }
    if let Some(q) = queue {
        if let Some(d) = q.queue_depth {
            m.queue_depth.set(d as i64);
        }
        if let Some(r) = q.scheduled_retries {
            m.scheduled_retries.set(r as i64);
        }
    }
    let mut resp = super::error::json_response(StatusCode::OK, m.encode());
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    resp
}
