//! Beside the request flow, for the process layer: systemd's readiness protocol. When the
//! service manager sets `NOTIFY_SOCKET`, the gateway tells it `READY=1` once it serves,
//! `RELOADING=1` (with `MONOTONIC_USEC`, which `Type=notify-reload` needs) and `READY=1`
//! around every reload, whatever triggered it, and `STOPPING=1` at the first shutdown
//! signal. One datagram per message on a Unix socket, as `sd_notify(3)` sends it: no C
//! library.
//!
//! Off until the binary calls [`enable_from_env`], so a gateway started in-process (tests,
//! the demo library) never writes to a socket it was not given.

#[cfg(unix)]
pub use imp::*;

/// Elsewhere there is no service manager to tell: every call does nothing.
#[cfg(not(unix))]
mod none {
    /// Notifications stay off.
    pub fn enable_from_env() -> Result<(), String> {
        Ok(())
    }
    pub fn ready(_status: &str) {}
    pub fn reloading() {}
    pub fn stopping() {}
}
#[cfg(not(unix))]
pub use none::*;

#[cfg(unix)]
mod imp {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    use std::sync::OnceLock;

    struct Notifier {
        socket: UnixDatagram,
        target: SocketAddr,
        /// As given, for logs.
        name: String,
    }

    static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

    /// Reads `NOTIFY_SOCKET` (a path, or `@name` for an abstract socket) and sends
    /// notifications there from now on. Returns an error to log when the variable is set but
    /// unusable; without it, notifications stay off.
    pub fn enable_from_env() -> Result<(), String> {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else {
            let _ = NOTIFIER.set(None);
            return Ok(());
        };
        let name = name.to_string_lossy().into_owned();
        let made = target(&name).and_then(|target| {
            let socket = UnixDatagram::unbound()
                .map_err(|e| format!("cannot create a socket for NOTIFY_SOCKET: {e}"))?;
            Ok(Notifier {
                socket,
                target,
                name: name.clone(),
            })
        });
        match made {
            Ok(n) => {
                let _ = NOTIFIER.set(Some(n));
                Ok(())
            }
            Err(e) => {
                let _ = NOTIFIER.set(None);
                Err(e)
            }
        }
    }

    fn target(name: &str) -> Result<SocketAddr, String> {
        if let Some(abstract_name) = name.strip_prefix('@') {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                return SocketAddr::from_abstract_name(abstract_name.as_bytes())
                    .map_err(|e| format!("NOTIFY_SOCKET={name}: {e}"));
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            return Err(format!(
                "NOTIFY_SOCKET={name}: abstract sockets ({abstract_name}) exist only on Linux"
            ));
        }
        if name.starts_with('/') {
            return SocketAddr::from_pathname(name)
                .map_err(|e| format!("NOTIFY_SOCKET={name}: {e}"));
        }
        Err(format!(
            "NOTIFY_SOCKET={name}: only a socket path or an abstract name (@…) is supported"
        ))
    }

    /// Sends one notification (`KEY=value` lines). Failures are logged, never fatal: the
    /// service manager going away must not stop the gateway.
    fn send(message: &str) {
        let Some(Some(n)) = NOTIFIER.get() else {
            return;
        };
        if let Err(e) = n.socket.send_to_addr(message.as_bytes(), &n.target) {
            tracing::warn!(socket = %n.name, error = %e, "cannot notify the service manager");
        }
    }

    /// The one-line `STATUS=` text: no newline may end the message early.
    fn status_line(status: &str) -> String {
        status.replace(['\n', '\r'], " ")
    }

    /// The gateway serves (after start, and after each reload, applied or not).
    pub fn ready(status: &str) {
        send(&format!("READY=1\nSTATUS={}\n", status_line(status)));
    }

    /// A reload starts.
    pub fn reloading() {
        let usec = monotonic_usec();
        send(&format!(
            "RELOADING=1\nSTATUS=reloading the configuration\nMONOTONIC_USEC={usec}\n"
        ));
    }

    /// Shutdown starts: draining, then exit.
    pub fn stopping() {
        send("STOPPING=1\nSTATUS=draining in-flight requests\n");
    }

    /// CLOCK_MONOTONIC in microseconds, as systemd compares it with its own.
    fn monotonic_usec() -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000
            + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn monotonic_time_moves_forward_in_microseconds() {
            let a = monotonic_usec();
            let b = monotonic_usec();
            assert!(a > 0 && b >= a);
        }

        #[test]
        fn socket_names_are_paths_or_abstract() {
            assert!(target("/run/systemd/notify").is_ok());
            assert!(target("@/org/freedesktop/systemd1/notify/1").is_ok());
            assert!(target("vsock:2:1234").is_err());
            assert_eq!(status_line("a\nb"), "a b");
        }
    }
}
