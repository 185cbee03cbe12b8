//! `/metrics` labels stay bounded whatever clients send: any method that is
//! not a standard one counts as `OTHER`, any unknown path as `unmatched`.

use hyper::Method;

use crate::common::spawn_app;

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "OTHER",
];
const ROUTES: [&str; 8] = [
    "/livez",
    "/healthz",
    "/metrics",
    "/api/contact/",
    "/api/notify/",
    "/api/contact/{id}/",
    "/api/notify/{id}/",
    "unmatched",
];

/// The value of `name="..."` in a metric line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_methods_and_paths_add_no_metric_series() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for i in 0..40 {
        let random = uuid::Uuid::new_v4().simple().to_string();
        // Valid tokens hyper passes on: upper case, mixed, and lower-case
        // spellings of real methods (methods are case-sensitive).
        let method = match i % 4 {
            0 => format!("X{}", random.to_uppercase()),
            1 => format!("Foo{}", &random[..8]),
            2 => "get".to_owned(),
            _ => format!("PURGE{i}"),
        };
        let path = match i % 3 {
            0 => "/api/notify/".to_owned(),
            1 => format!("/api/contact/{random}/"),
            _ => format!("/nowhere/{random}"),
        };
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = app.send(m, &path, &[], "").await;
        assert!(
            r.status == 405 || r.status == 404,
            "{method} {path}: {}",
            r.status
        );
        sent.push((method, path, random));
    }
    let metrics = String::from_utf8(app.get("/metrics").await.body.to_vec()).unwrap();
    for (method, path, random) in &sent {
        assert!(
            !metrics.contains(&format!("\"{method}\"")),
            "a series for method {method}"
        );
        assert!(!metrics.contains(random.as_str()), "a series for {path}");
    }
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("email_service_http_requests_total{"))
        .collect();
    for line in &series {
        let method = label(line, "method").unwrap_or_else(|| panic!("{line}"));
        let route = label(line, "route").unwrap_or_else(|| panic!("{line}"));
        assert!(METHODS.contains(&method), "method label {method:?}: {line}");
        assert!(ROUTES.contains(&route), "route label {route:?}: {line}");
    }
    // The 40 requests are counted, under OTHER.
    let other: u64 = series
        .iter()
        .filter(|l| label(l, "method") == Some("OTHER"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(other, 40, "{metrics}");
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("email_service_http_request_duration_seconds"))
    {
        if let Some(route) = label(line, "route") {
            assert!(ROUTES.contains(&route), "route label {route:?}: {line}");
        }
    }
    app.shutdown().await;
}
