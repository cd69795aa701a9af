//! A minimal Prometheus endpoint: any `GET` returns the text exposition.

use std::sync::Arc;

use keyrotate::RotatingKeys;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::ops::counters::{render, KeCounters, KeEvent, KeyCounters, NtpCounters, NtpEvent};
use crate::time_source::SharedSystem;

#[derive(Debug, Clone)]
pub struct Registry {
    pub ntp: Vec<Arc<NtpCounters>>,
    pub ke: Arc<KeCounters>,
    pub keys: Arc<RotatingKeys>,
    pub key_events: Arc<KeyCounters>,
    pub time_events: Arc<crate::time_source::TimeCounters>,
    pub system: SharedSystem,
    /// The NTP back end in use (`io-uring` or `portable`).
    pub backend: &'static str,
}

impl Registry {
    pub fn ntp_total(&self, e: NtpEvent) -> u64 {
        self.ntp.iter().map(|c| c.get(e)).sum()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let ntp: Vec<_> = NtpEvent::ALL
            .iter()
            .map(|&e| {
                let (n, l) = e.metric();
                (n, l, self.ntp_total(e))
            })
            .collect();
        render(&mut out, &ntp);
        let ke: Vec<_> = KeEvent::ALL
            .iter()
            .map(|&e| {
                let (n, l) = e.metric();
                (n, l, self.ke.get(e))
            })
            .collect();
        render(&mut out, &ke);
        render(&mut out, &self.key_events.samples());
        render(&mut out, &self.time_events.samples());
        let sys = self.system.load();
        let ring = self.keys.load();
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# TYPE ntsd_ntp_workers gauge\nntsd_ntp_workers {}",
            self.ntp.len()
        );
        let _ = writeln!(
            out,
            "# TYPE ntsd_ntp_backend_info gauge\nntsd_ntp_backend_info{{backend=\"{}\"}} 1",
            self.backend
        );
        let _ = writeln!(
            out,
            "# TYPE ntsd_leap_indicator gauge\nntsd_leap_indicator {}",
            sys.leap as u8
        );
        let _ = writeln!(
            out,
            "# TYPE ntsd_stratum gauge\nntsd_stratum {}",
            sys.stratum
        );
        let _ = writeln!(
            out,
            "# TYPE ntsd_key_current_id gauge\nntsd_key_current_id {}",
            ring.current_id()
        );
        let _ = writeln!(
            out,
            "# TYPE ntsd_keys_accepted gauge\nntsd_keys_accepted {}",
            ring.entries().len()
        );
        out
    }
}

pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (mut stream, _) = tokio::select! {
            r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let body = registry.render();
        tokio::spawn(async move {
            let mut req = [0u8; 1024];
            let read =
                tokio::time::timeout(std::time::Duration::from_secs(2), stream.read(&mut req))
                    .await;
            let ok =
                matches!(read, Ok(Ok(n)) if req.get(..n).is_some_and(|r| r.starts_with(b"GET ")));
            let resp = if ok {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_owned()
            };
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
