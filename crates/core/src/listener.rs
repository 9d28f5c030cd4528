//! Listening sockets that a reload keeps: a component rebuilt with the same address takes
//! over the socket its previous instance listened on instead of binding again, so that the
//! port never closes (no connection is refused meanwhile, the backlog is kept) and an
//! address with port 0 keeps its port.
//!
//! A socket is shared by the [`Listener`]s that hold it and closes with the last one. While
//! the topology replaces a component, it [`hold`]s that component's sockets, from before
//! the old instance stops until the new one is built; [`bind`] hands a held socket of the
//! same component and address over. Outside a hold `bind` always binds: two components, or
//! two pipelines built by one test process, never share a socket by accident.
//!
//! The registry is the process's own, as the port space is.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

/// A bound, non-blocking listening socket, shared with the instances that take it over.
#[derive(Debug, Clone)]
pub struct Listener {
    socket: Arc<std::net::TcpListener>,
}

impl Listener {
    /// The address the socket is bound to (the port chosen when port 0 was asked).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A tokio listener on the same socket (through a duplicated descriptor), to accept
    /// with. Dropping it stops accepting; the socket stays open while a [`Listener`] or a
    /// hold has it.
    ///
    /// # Errors
    /// When the descriptor cannot be duplicated (out of descriptors).
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled (tokio's `TcpListener::from_std` panics).
    pub fn to_tokio(&self) -> io::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::from_std(self.socket.try_clone()?)
    }
}

struct Entry {
    component_id: String,
    /// The address asked for (`127.0.0.1:0` stays that, whatever port it got).
    address: SocketAddr,
    socket: Weak<std::net::TcpListener>,
    /// Holds open on it: while any, `bind` hands it over.
    holds: usize,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// The listening socket of component `component_id` on `address`: the held socket of the
/// instance it replaces when that one listened on the same `address`, else a new socket
/// bound there (non-blocking, as tokio wants it).
///
/// # Errors
/// What binding says (the port is taken, or needs privileges).
pub fn bind(component_id: &str, address: SocketAddr) -> io::Result<Listener> {
    let mut entries = registry();
    entries.retain(|entry| entry.socket.strong_count() > 0);
    let held = entries
        .iter()
        .filter(|entry| {
            entry.holds > 0 && entry.component_id == component_id && entry.address == address
        })
        .find_map(|entry| entry.socket.upgrade());
    if let Some(socket) = held {
        return Ok(Listener { socket });
    }
    let socket = std::net::TcpListener::bind(address)?;
    socket.set_nonblocking(true)?;
    let socket = Arc::new(socket);
    entries.push(Entry {
        component_id: component_id.to_owned(),
        address,
        socket: Arc::downgrade(&socket),
        holds: 0,
    });
    Ok(Listener { socket })
}

/// Keeps the sockets of component `component_id` open, and ready to be handed over by
/// [`bind`], until the returned guard is dropped.
pub fn hold(component_id: &str) -> Held {
    let mut entries = registry();
    let mut sockets = Vec::new();
    for entry in entries
        .iter_mut()
        .filter(|entry| entry.component_id == component_id)
    {
        if let Some(socket) = entry.socket.upgrade() {
            entry.holds += 1;
            sockets.push(socket);
        }
    }
    Held { sockets }
}

/// The sockets [`hold`] keeps; dropping it lets them close with their last [`Listener`].
#[derive(Debug)]
pub struct Held {
    sockets: Vec<Arc<std::net::TcpListener>>,
}

impl Held {
    /// How many sockets it keeps.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether it keeps none.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut entries = registry();
        for entry in entries.iter_mut() {
            let Some(socket) = entry.socket.upgrade() else {
                continue;
            };
            if self.sockets.iter().any(|held| Arc::ptr_eq(held, &socket)) {
                entry.holds = entry.holds.saturating_sub(1);
            }
        }
        // The sockets themselves drop after the lock: closing them needs no registry.
        drop(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[test]
    fn without_a_hold_every_bind_gets_a_socket_of_its_own() {
        let a = bind("listener-tests-own", any_port()).unwrap();
        let b = bind("listener-tests-own", any_port()).unwrap();
        assert_ne!(a.local_addr().unwrap(), b.local_addr().unwrap());
    }

    #[test]
    fn a_held_socket_goes_to_the_same_component_on_the_same_address() {
        let old = bind("listener-tests-held", any_port()).unwrap();
        let port = old.local_addr().unwrap();
        let held = hold("listener-tests-held");
        assert_eq!(held.len(), 1);
        // The old instance stops: the socket stays open, still listening.
        drop(old);
        assert!(
            std::net::TcpStream::connect(port).is_ok(),
            "still listening"
        );
        let other = bind("listener-tests-other", any_port()).unwrap();
        assert_ne!(other.local_addr().unwrap(), port, "another component binds");
        let new = bind("listener-tests-held", any_port()).unwrap();
        assert_eq!(new.local_addr().unwrap(), port, "taken over, port 0 kept");
        drop(held);
        assert_eq!(new.local_addr().unwrap(), port);
        // Once the hold is over, a further instance binds again.
        let later = bind("listener-tests-held", any_port()).unwrap();
        assert_ne!(later.local_addr().unwrap(), port);
    }

    #[test]
    fn a_held_socket_nobody_takes_over_closes_with_the_hold() {
        let old = bind("listener-tests-moved", any_port()).unwrap();
        let port = old.local_addr().unwrap();
        let held = hold("listener-tests-moved");
        drop(old);
        let elsewhere = bind(
            "listener-tests-moved",
            SocketAddr::from(([127, 0, 0, 1], port.port())),
        );
        assert!(
            elsewhere.is_err(),
            "another address asked: the held socket is not handed over, and still holds its port"
        );
        drop(held);
        assert!(std::net::TcpStream::connect(port).is_err(), "closed");
    }
}
