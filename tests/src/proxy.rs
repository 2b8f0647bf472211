//! A TCP proxy that stands for a stable address (a DNS name, a VIP, a managed service's
//! endpoint) in failover and half-open tests.
//!
//! [`Proxy::start`] listens on a free loopback port and forwards each new connection to the
//! *current* upstream port. [`Proxy::set_upstream`] switches where new connections go (as a DNS
//! or VIP switch after a failover does) while existing ones stay on their old upstream.
//! [`Proxy::blackhole_existing`] makes every existing connection silently drop bytes in both
//! directions while both sockets stay open: a half-open flow, as a NAT or load balancer that
//! forgot the flow leaves it. New connections after that work normally.
//!
//! Plain threads (two per connection), so the proxy keeps forwarding whatever the test's runtime
//! is doing. Dropping the proxy closes the listener and every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits for its upstream to accept a connection; a client whose upstream
/// does not accept in time is disconnected.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A TCP proxy on a free loopback port; see the [module docs](self).
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    upstream: AtomicU16,
    stop: AtomicBool,
    links: Mutex<Vec<Arc<Link>>>,
}

impl Shared {
    fn links(&self) -> MutexGuard<'_, Vec<Arc<Link>>> {
        self.links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One proxied connection: the client's socket and the upstream's.
#[derive(Debug)]
struct Link {
    client: TcpStream,
    server: TcpStream,
    /// Bytes are read and dropped in both directions; sockets stay open.
    blackholed: AtomicBool,
    closed: AtomicBool,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl Proxy {
    /// Starts a proxy whose connections go to `127.0.0.1:<upstream>`.
    ///
    /// # Panics
    ///
    /// When no loopback port can be bound.
    pub fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy's port");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            upstream: AtomicU16::new(upstream),
            stop: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
        });
        let accept = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{port}"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy's accept thread")
        };
        Proxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<proxy port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port new connections go to.
    pub fn upstream(&self) -> u16 {
        self.shared.upstream.load(Ordering::SeqCst)
    }

    /// Sends new connections to `127.0.0.1:<port>`; existing ones stay where they are.
    pub fn set_upstream(&self, port: u16) {
        self.shared.upstream.store(port, Ordering::SeqCst);
    }

    /// Makes every connection open now drop all bytes in both directions, keeping both sockets
    /// open (no FIN, no RST): neither side can tell until a timeout. Returns how many there were.
    pub fn blackhole_existing(&self) -> usize {
        let links = self.shared.links();
        let mut n = 0;
        for link in links.iter().filter(|l| !l.closed.load(Ordering::Relaxed)) {
            link.blackholed.store(true, Ordering::SeqCst);
            n += 1;
        }
        n
    }

    /// Connections open now (black-holed ones included).
    pub fn open_connections(&self) -> usize {
        self.shared
            .links()
            .iter()
            .filter(|l| !l.closed.load(Ordering::Relaxed))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for link in self.shared.links().drain(..) {
            link.close();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let upstream = SocketAddr::from(([127, 0, 0, 1], shared.upstream.load(Ordering::SeqCst)));
        // No upstream: the client is disconnected, as by a VIP with no backend.
        let Ok(server) = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let (Ok(client_write), Ok(server_write)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        let link = Arc::new(Link {
            client,
            server,
            blackholed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        {
            let mut links = shared.links();
            links.retain(|l| !l.closed.load(Ordering::Relaxed));
            links.push(link.clone());
        }
        let up = link.clone();
        let spawned_up = std::thread::Builder::new()
            .name("proxy-up".into())
            .spawn(move || pump(client_read, server_write, &up, true));
        let down = link.clone();
        let spawned_down = std::thread::Builder::new()
            .name("proxy-down".into())
            .spawn(move || pump(server_read, client_write, &down, false));
        if spawned_up.is_err() || spawned_down.is_err() {
            link.close();
        }
    }
}

/// Copies bytes from `from` to `to` until either side closes; while the link is black-holed the
/// bytes are read and dropped. The end of the stream is passed on unless the link is
/// black-holed and it is the upstream that closed (a half-open flow tells the client nothing).
fn pump(mut from: TcpStream, mut to: TcpStream, link: &Link, from_client: bool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if link.blackholed.load(Ordering::SeqCst) {
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if from_client || !link.blackholed.load(Ordering::SeqCst) {
        link.close();
    }
}
