//! A fault-injecting HTTP endpoint in front of the local KMS server.
//!
//! moto cannot show disabled keys, throttling or outages; this proxy can. It listens on a
//! loopback port, forwards each KMS request to the real server, and answers the requests that
//! a rule selects (by operation, a given number of times) with a real KMS error code, an HTTP
//! 5xx, a delay or a closed connection. It also counts the requests it sees per operation, so
//! a test can count KMS traffic of its own client, whatever other tests send to the shared
//! server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the proxy does to a selected request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this HTTP status and KMS error code (`__type`), for example
    /// `(400, "ThrottlingException")` or `(500, "KMSInternalException")`.
    Error {
        /// HTTP status.
        status: u16,
        /// The KMS error code.
        code: &'static str,
    },
    /// Close the connection without an answer.
    Close,
    /// Wait, then forward.
    Delay(Duration),
}

#[derive(Debug)]
struct Rule {
    operation: String,
    fault: Fault,
    remaining: usize,
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<Rule>,
    seen: HashMap<String, usize>,
}

/// A running proxy; it stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Starts a proxy in front of `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> FaultProxy {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("upstream is http://IP:PORT");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = serve(stream, upstream, state).await;
                });
            }
        });
        FaultProxy { addr, state, task }
    }

    /// The proxy's URL, for `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `times` requests of `operation` (`GenerateDataKey`,
    /// `Decrypt`, ..., or `*` for every operation).
    pub fn inject(&self, operation: &str, fault: Fault, times: usize) {
        self.state.lock().expect("lock").rules.push(Rule {
            operation: operation.to_owned(),
            fault,
            remaining: times,
        });
    }

    /// Removes every rule: the end of an outage.
    pub fn clear(&self) {
        self.state.lock().expect("lock").rules.clear();
    }

    /// Requests of `operation` that reached the proxy so far (faulted ones included).
    pub fn seen(&self, operation: &str) -> usize {
        *self
            .state
            .lock()
            .expect("lock")
            .seen
            .get(operation)
            .unwrap_or(&0)
    }
}

struct Request {
    head: String,
    body: Vec<u8>,
    operation: String,
}

async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&byte[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let operation = header("x-amz-target")
        .and_then(|t| t.rsplit('.').next().map(str::to_owned))
        .unwrap_or_default();
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&byte[..n]);
    }
    Ok(Some(Request {
        head,
        body,
        operation,
    }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    state: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    while let Some(request) = read_request(&mut client).await? {
        let fault = {
            let mut state = state.lock().expect("lock");
            *state.seen.entry(request.operation.clone()).or_default() += 1;
            let rule = state.rules.iter_mut().find(|r| {
                r.remaining > 0 && (r.operation == request.operation || r.operation == "*")
            });
            rule.map(|r| {
                r.remaining -= 1;
                r.fault.clone()
            })
        };
        match fault {
            Some(Fault::Close) => return Ok(()),
            Some(Fault::Error { status, code }) => {
                let body = format!(r#"{{"__type":"{code}","message":"injected by the test"}}"#);
                let reason = if status >= 500 {
                    "Server Error"
                } else {
                    "Bad Request"
                };
                let answer = format!(
                    "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-amz-json-1.1\r\nx-amzn-requestid: fault\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                client.write_all(answer.as_bytes()).await?;
            }
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                forward(&mut client, upstream, &request).await?;
            }
            None => forward(&mut client, upstream, &request).await?,
        }
    }
    Ok(())
}

async fn forward(
    client: &mut TcpStream,
    upstream: SocketAddr,
    request: &Request,
) -> std::io::Result<()> {
    let mut server = TcpStream::connect(upstream).await?;
    // One upstream connection per request: ask the server to close it when done.
    let mut head: String = request
        .head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    head.push_str("connection: close\r\n\r\n");
    server.write_all(head.as_bytes()).await?;
    server.write_all(&request.body).await?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).await?;
    // The client may keep its connection; drop the server's `Connection: close`.
    let split = find(&answer, b"\r\n\r\n").map_or(answer.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&answer[..split]);
    let mut fixed: String = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    fixed.push_str("\r\n");
    client.write_all(fixed.as_bytes()).await?;
    client.write_all(&answer[split..]).await?;
    Ok(())
}
