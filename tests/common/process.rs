//! The real `gru-serve` binary as a child process: a free port, waiting for
//! SERVING, and SIGTERM with the exit awaited. Every wait is bounded.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A spawned server, killed if the test ends without stopping it.
pub struct Spawned(pub Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Spawned {
    /// Polls the health Check RPC at `addr` until SERVING (60 s at most);
    /// fails at once if the process exits first.
    pub async fn wait_serving(&mut self, addr: &str) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("gru-serve exited before serving: {status}");
            }
            if let Ok(ch) = Channel::from_shared(addr.to_string())
                .unwrap()
                .connect()
                .await
            {
                let status = HealthClient::new(ch.clone())
                    .check(HealthCheckRequest::default())
                    .await
                    .map(|r| r.into_inner().status);
                if matches!(status, Ok(s) if s == ServingStatus::Serving as i32) {
                    return ch;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gru-serve not SERVING within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and asserts a clean exit within 30 s.
    pub async fn terminate(&mut self) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "gru-serve did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "gru-serve exited with {status}");
    }
}

/// GETs `path` from an HTTP/1.1 port: (status code, body); None when the
/// port does not answer (closed, or no reply within 5 s).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()??;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}
