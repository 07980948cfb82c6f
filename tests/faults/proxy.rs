//! A TCP proxy in front of PostgreSQL that a test can cut and restore: the
//! way to make the database unreachable without touching the shared server.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::{AbortHandle, JoinHandle},
};

pub struct Proxy {
    pub address: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let connections = Arc::new(Mutex::new(Vec::<AbortHandle>::new()));
        let accept = {
            let up = Arc::clone(&up);
            let connections = Arc::clone(&connections);
            tokio::spawn(async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        // Closed at once: the database is "unreachable".
                        drop(client);
                        continue;
                    }
                    let relay = tokio::spawn(async move {
                        let Ok(mut server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                    let mut connections = connections.lock().unwrap();
                    connections.retain(|relay| !relay.is_finished());
                    connections.push(relay.abort_handle());
                }
            })
        };
        Self {
            address,
            up,
            connections,
            accept,
        }
    }

    /// Drops every relayed connection (both ends see a reset) and refuses
    /// new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for relay in self.connections.lock().unwrap().drain(..) {
            relay.abort();
        }
    }
}

/// `postgres://user@host:port/db?query` with the host and port replaced.
pub fn through(url: &str, address: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let user = match authority.rsplit_once('@') {
        Some((user, _)) => format!("{user}@"),
        None => String::new(),
    };
    format!("{scheme}://{user}{address}{path}")
}

/// The host and port of a PostgreSQL URL.
pub fn server_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("a URL").1;
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .expect("a numeric host:port in MINICRM_TEST_POSTGRES_URL")
}

#[test]
fn urls_are_pointed_at_the_proxy() {
    let proxy: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    assert_eq!(
        through(
            "postgres://postgres@127.0.0.1:5432/t1?sslmode=disable",
            proxy
        ),
        "postgres://postgres@127.0.0.1:40000/t1?sslmode=disable"
    );
    assert_eq!(
        through("postgres://h/t2", proxy),
        "postgres://127.0.0.1:40000/t2"
    );
    assert_eq!(
        server_of("postgres://postgres@127.0.0.1:5432/test"),
        "127.0.0.1:5432".parse().unwrap()
    );
    assert_eq!(
        server_of("postgres://u:p@localhost/test"),
        "127.0.0.1:5432".parse().unwrap()
    );
}
