//! A second origin: a tiny static web server on its own port that serves the
//! example contact form (`examples/contact-form.html`), pointed at the
//! service under test, as a blog embedding it would.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const FORM: &str = include_str!("../../examples/contact-form.html");
/// The service address the example ships with, which a site edits.
const SHIPPED_SERVICE: &str = "data-service=\"http://localhost:8002\"";

pub struct Site {
    pub addr: SocketAddr,
    page: Arc<Mutex<String>>,
    server: JoinHandle<()>,
}

impl Site {
    /// Listens (so that its origin is known before the service starts);
    /// serves the form once [`point_at`](Self::point_at) says where to post.
    pub async fn start() -> Self {
        let page = Arc::new(Mutex::new(String::new()));
        let shared = page.clone();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the site");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let page = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    // The request head only; the page is all there is.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let found = head.starts_with(b"GET / ") || head.starts_with(b"GET /contact");
                    let (status, body) = if found {
                        ("200 OK", page.as_str())
                    } else {
                        ("404 Not Found", "not found")
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Site { addr, page, server }
    }

    /// Serves the form set to post to `service` (`http://host:port`).
    pub fn point_at(&self, service: &str) {
        assert!(
            FORM.contains(SHIPPED_SERVICE),
            "the example names its service"
        );
        *self.page.lock().unwrap() =
            FORM.replace(SHIPPED_SERVICE, &format!("data-service=\"{service}\""));
    }

    /// The page's origin, as the browser sends it in `Origin`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn url(&self) -> String {
        format!("{}/contact", self.origin())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.server.abort();
    }
}
