//! The admin page's files over HTTP: served without the token (they hold no
//! data), with their content types, a strict policy and revalidation; its
//! data calls still need the token.

use hyper::Method;

use crate::common::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_and_its_files_are_served_with_a_strict_policy() {
    let app = spawn_app_with(&[("API_TOKEN", "secret")]).await;
    for (path, content_type, needle) in [
        (
            "/admin/",
            "text/html",
            "<script type=\"module\" src=\"/admin/main.js\"",
        ),
        (
            "/admin",
            "text/html",
            "<link rel=\"stylesheet\" href=\"/admin/admin.css\">",
        ),
        ("/admin/main.js", "text/javascript", "import"),
        ("/admin/dom.js", "text/javascript", "textContent"),
        ("/admin/admin.css", "text/css", ".detail"),
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            r.header("content-type").unwrap().starts_with(content_type),
            "{path}: {:?}",
            r.header("content-type")
        );
        assert!(r.text().contains(needle), "{path} lacks {needle}");
        let csp = r.header("content-security-policy").expect("a CSP");
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(directive), "{path}: {directive} not in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("cache-control"), Some("no-cache"));

        let etag = r.header("etag").expect("an ETag").to_owned();
        let again = app
            .send(Method::GET, path, &[("if-none-match", &etag)], "")
            .await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        let stale = app
            .send(Method::GET, path, &[("if-none-match", "\"old\"")], "")
            .await;
        assert_eq!(stale.status, 200, "{path}");
    }
    // No inline script or handler for the policy to have to allow.
    let page = app.get("/admin/").await.text();
    assert!(!page.contains("<script>") && !page.contains(" onclick="));
    assert!(!page.contains("<style"));

    assert_eq!(app.get("/admin/other.js").await.status, 404);
    assert_eq!(
        app.get("/api/contact/").await.status,
        401,
        "data needs the token"
    );
    let r = app.send(Method::POST, "/admin/", &[], "").await;
    assert_eq!(r.status, 405);
    app.shutdown().await;
}
