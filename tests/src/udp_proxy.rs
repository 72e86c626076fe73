//! The WAN fault layer: a UDP proxy placed between datacenters' gateways
//! (QUIC is UDP), since this kernel has no `netem`. Each direction can delay
//! packets (fixed delay plus uniform jitter), drop a fraction of them (from a
//! seeded generator, so runs repeat) or drop them all (a cut).
//!
//! Clients send to [`UdpProxy::addr`]; each client address gets its own
//! upstream socket towards the target, so replies find their way back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;

/// Conditions of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Conditions {
    /// Added to every packet.
    pub delay: Duration,
    /// Up to this much more, uniformly.
    pub jitter: Duration,
    /// Fraction of packets dropped (0.0 to 1.0).
    pub loss: f64,
    /// Drop everything.
    pub cut: bool,
}

struct State {
    /// Client → target.
    forward: Conditions,
    /// Target → client.
    backward: Conditions,
    rng: u64,
    dropped: u64,
    passed: u64,
}

impl State {
    /// xorshift64*: a small seeded generator, enough for loss and jitter.
    fn next(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// The delay for one packet, or None to drop it.
    fn fate(&mut self, forward: bool) -> Option<Duration> {
        let c = if forward { self.forward } else { self.backward };
        let roll = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        if c.cut || roll < c.loss {
            self.dropped += 1;
            return None;
        }
        self.passed += 1;
        let jitter = if c.jitter.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.next() % c.jitter.as_nanos().max(1) as u64)
        };
        Some(c.delay + jitter)
    }
}

/// A running proxy; stops when dropped.
pub struct UdpProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr, seed: u64) -> std::io::Result<UdpProxy> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            forward: Conditions::default(),
            backward: Conditions::default(),
            rng: seed | 1,
            dropped: 0,
            passed: 0,
        }));
        let task = tokio::spawn(run(front, target, state.clone()));
        Ok(UdpProxy { addr, state, task })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets both directions' conditions.
    pub fn set(&self, forward: Conditions, backward: Conditions) {
        if let Ok(mut s) = self.state.lock() {
            s.forward = forward;
            s.backward = backward;
        }
    }

    /// Cuts (or heals) both directions, keeping delay and loss.
    pub fn cut(&self, cut: bool) {
        if let Ok(mut s) = self.state.lock() {
            s.forward.cut = cut;
            s.backward.cut = cut;
        }
    }

    /// Packets (dropped, passed) so far.
    pub fn counts(&self) -> (u64, u64) {
        self.state
            .lock()
            .map(|s| (s.dropped, s.passed))
            .unwrap_or((0, 0))
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(front: Arc<UdpSocket>, target: SocketAddr, state: Arc<Mutex<State>>) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            break;
        };
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if u.connect(target).await.is_err() {
                    continue;
                }
                let u = Arc::new(u);
                upstreams.insert(client, u.clone());
                tasks.push(AbortOnDrop(tokio::spawn(back(
                    u.clone(),
                    front.clone(),
                    client,
                    state.clone(),
                ))));
                u
            }
        };
        let fate = state.lock().ok().and_then(|mut s| s.fate(true));
        if let Some(delay) = fate {
            send_later(delay, buf[..n].to_vec(), move |packet| {
                let upstream = upstream.clone();
                async move {
                    let _ = upstream.send(&packet).await;
                }
            });
        }
    }
}

/// Target → client, for one client.
async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    state: Arc<Mutex<State>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let n = match upstream.recv(&mut buf).await {
            Ok(n) => n,
            // The target was not listening yet (ICMP port unreachable): it may be later.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(_) => return,
        };
        let fate = state.lock().ok().and_then(|mut s| s.fate(false));
        if let Some(delay) = fate {
            let front = front.clone();
            send_later(delay, buf[..n].to_vec(), move |packet| async move {
                let _ = front.send_to(&packet, client).await;
            });
        }
    }
}

fn send_later<F, Fut>(delay: Duration, packet: Vec<u8>, send: F)
where
    F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if delay.is_zero() {
        tokio::spawn(send(packet));
    } else {
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            send(packet).await;
        });
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn delays_drops_and_cuts_as_told() {
        let (target, _echo) = echo_server().await;
        let proxy = UdpProxy::start(target, 7).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        // Clean: the echo comes back.
        client.send(b"a").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("echo through a clean proxy")
            .unwrap();
        assert_eq!(&buf[..n], b"a");

        // 40 ms each way: the echo takes at least 80 ms.
        let slow = Conditions {
            delay: Duration::from_millis(40),
            ..Default::default()
        };
        proxy.set(slow, slow);
        let start = std::time::Instant::now();
        client.send(b"b").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("echo through a slow proxy")
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(80));

        // Cut: nothing comes back; healed: it does again.
        proxy.cut(true);
        client.send(b"c").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf))
                .await
                .is_err()
        );
        proxy.set(Conditions::default(), Conditions::default());
        client.send(b"d").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
            .await
            .expect("echo after healing")
            .unwrap();
        assert_eq!(&buf[..n], b"d");

        // 50 % loss one way: of 400 packets, roughly half pass (seeded).
        proxy.set(
            Conditions {
                loss: 0.5,
                ..Default::default()
            },
            Conditions::default(),
        );
        let (dropped_before, passed_before) = proxy.counts();
        for _ in 0..400 {
            client.send(b"x").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (dropped, passed) = proxy.counts();
        let (dropped, passed) = (dropped - dropped_before, passed - passed_before);
        assert!(dropped > 120 && dropped < 280, "dropped {dropped} of 400");
        assert!(passed >= 120, "passed {passed}");
    }
}
