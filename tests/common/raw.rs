//! Raw HTTP/1.1 over TCP, for what a well-behaved client cannot send:
//! declared lengths that lie, chunked bodies, stalled heads, two requests on
//! one connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::REQUEST_TIMEOUT;

/// A response read off a raw connection.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "raw response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One TCP connection speaking HTTP/1.1 by hand.
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; a write error (the server may have answered and closed
    /// already) is returned, not raised.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads exactly one response (the service always sends Content-Length).
    pub async fn read_response(&mut self) -> RawResponse {
        read_one_response(&mut self.stream, &mut self.buf).await
    }

    /// Waits for the server to close the connection (EOF or reset); returns
    /// how long that took, or `None` if it stayed open past `deadline`.
    pub async fn wait_for_close(&mut self, deadline: Duration) -> Option<Duration> {
        let started = Instant::now();
        let wait = async {
            let mut chunk = [0u8; 4096];
            loop {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(deadline, wait)
            .await
            .ok()
            .map(|()| started.elapsed())
    }
}

/// Reads one response from `reader`; `buf` keeps bytes read past it.
pub async fn read_one_response<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> RawResponse {
    tokio::time::timeout(REQUEST_TIMEOUT, read_response_inner(reader, buf))
        .await
        .expect("no raw response in time")
        .unwrap_or_else(|e| panic!("reading a raw response: {e}"))
}

async fn fill<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = reader.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn read_response_inner<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> Result<RawResponse, String> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        match fill(reader, buf).await {
            Ok(0) => {
                return Err(format!(
                    "connection closed before a full response head: {:?}",
                    String::from_utf8_lossy(buf)
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("read error before a full head: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or("response without Content-Length")?;
    let body_start = head_end + 4;
    while buf.len() < body_start + length {
        match fill(reader, buf).await {
            Ok(0) => return Err("connection closed in the middle of a body".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("read error in a body: {e}")),
        }
    }
    let body = buf[body_start..body_start + length].to_vec();
    buf.drain(..body_start + length);
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends `request` on a new connection and reads one response, writing and
/// reading at the same time: the server may answer (413) and stop reading
/// before everything is written.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let request = request.to_vec();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        let _ = writer.flush().await;
        // Keep the write half open until the response is read.
        writer
    });
    let mut buf = Vec::new();
    let resp = read_one_response(&mut reader, &mut buf).await;
    write.abort();
    resp
}
