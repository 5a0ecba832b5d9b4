//! Listening sockets: systemd socket activation (`LISTEN_FDS`: names `detect` and `http`, or else
//! the address family: AF_UNIX = detection, AF_INET/AF_INET6 = health) or our
//! own binding. The detection socket file gets the configured mode and group; a stale socket is
//! replaced, a live one or a non-socket path is refused. The health listener is loopback-only
//! unless remote access is explicitly allowed.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::SockaddrLike;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;

/// Errors while setting up the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("socket activation: {0}")]
    Activation(String),
}

/// The two listeners.
#[derive(Debug)]
pub struct Listeners {
    pub detect: UnixListener,
    pub http: TcpListener,
    /// The socket file we created (removed on exit); `None` when systemd owns it.
    pub socket_file: Option<PathBuf>,
}

fn sock_err(path: &Path, message: impl Into<String>) -> ListenError {
    ListenError::Socket {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Binds the Unix socket at `path` with `mode` and optional `group`.
pub fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(sock_err(
                    path,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)
                .map_err(|e| sock_err(path, format!("cannot remove stale socket: {e}")))?;
            tracing::info!(path = %path.display(), "replaced a stale socket");
        }
        Ok(_) => {
            return Err(sock_err(
                path,
                "exists and is not a socket; refusing to replace it",
            ))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(path, e.to_string())),
    }
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.exists() {
            std::fs::create_dir_all(parent)
                .map_err(|e| sock_err(parent, format!("cannot create directory: {e}")))?;
        }
    }
    let l = UnixListener::bind(path).map_err(|e| sock_err(path, format!("cannot bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| sock_err(path, format!("cannot set mode {mode:o}: {e}")))?;
    if let Some(g) = group {
        let grp = nix::unistd::Group::from_name(g)
            .map_err(|e| sock_err(path, format!("cannot look up group {g}: {e}")))?
            .ok_or_else(|| sock_err(path, format!("group {g} does not exist")))?;
        nix::unistd::chown(path, None, Some(grp.gid))
            .map_err(|e| sock_err(path, format!("cannot set group {g}: {e}")))?;
    }
    Ok(l)
}

fn check_http_addr(addr: &std::net::SocketAddr, allow_remote: bool) -> Result<(), ListenError> {
    if !allow_remote && !addr.ip().is_loopback() {
        return Err(ListenError::Activation(format!(
            "http socket {addr} is not loopback; set IV_HTTP_ALLOW_REMOTE=true to allow it"
        )));
    }
    Ok(())
}

fn unix_from_fd(fd: RawFd) -> Result<UnixListener, ListenError> {
    // SAFETY: systemd passed this descriptor to us (LISTEN_FDS/LISTEN_PID matched our pid) and
    // nothing else in the process owns it; we take ownership exactly once.
    let std_l = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    std_l
        .set_nonblocking(true)
        .map_err(|e| ListenError::Activation(format!("fd {fd}: {e}")))?;
    UnixListener::from_std(std_l)
        .map_err(|e| ListenError::Activation(format!("fd {fd} is not a Unix listener: {e}")))
}

fn tcp_from_fd(fd: RawFd) -> Result<TcpListener, ListenError> {
    // SAFETY: as above, a descriptor handed to us by systemd and owned by nothing else.
    let std_l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std_l
        .set_nonblocking(true)
        .map_err(|e| ListenError::Activation(format!("fd {fd}: {e}")))?;
    TcpListener::from_std(std_l)
        .map_err(|e| ListenError::Activation(format!("fd {fd} is not a TCP listener: {e}")))
}

impl Listeners {
    /// Takes the sockets systemd passed, binding whatever it did not pass.
    pub async fn from_config(cfg: &Config) -> Result<Self, ListenError> {
        let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
            .map_err(|e| ListenError::Activation(e.to_string()))?
            .collect();
        let mut detect = None;
        let mut http = None;
        for (fd, name) in passed {
            // One socket unit cannot name its descriptors differently, so besides the names
            // `detect` and `http` the address family decides: AF_UNIX is detection, AF_INET(6) health.
            let role = match name.as_str() {
                "detect" | "http" => name.clone(),
                _ => match nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(fd)
                    .ok()
                    .and_then(|a| a.family())
                {
                    Some(nix::sys::socket::AddressFamily::Unix) => "detect".into(),
                    Some(
                        nix::sys::socket::AddressFamily::Inet
                        | nix::sys::socket::AddressFamily::Inet6,
                    ) => "http".into(),
                    other => {
                        return Err(ListenError::Activation(format!(
                            "passed socket {name:?} (fd {fd}) has an unexpected family {other:?}"
                        )))
                    }
                },
            };
            let slot_taken = if role == "detect" {
                detect.is_some()
            } else {
                http.is_some()
            };
            if slot_taken {
                return Err(ListenError::Activation(format!(
                    "more than one {role} socket was passed"
                )));
            }
            if role == "detect" {
                detect = Some(unix_from_fd(fd)?);
            } else {
                http = Some(tcp_from_fd(fd)?);
            }
        }
        let socket_file = if detect.is_some() {
            None
        } else {
            Some(cfg.socket_path.clone())
        };
        let detect = match detect {
            Some(l) => l,
            None => bind_unix(
                &cfg.socket_path,
                cfg.socket_mode.0,
                cfg.socket_group.as_deref(),
            )?,
        };
        let http = match http {
            Some(l) => l,
            None => TcpListener::bind(cfg.http_addr)
                .await
                .map_err(|e| ListenError::Tcp {
                    addr: cfg.http_addr.to_string(),
                    source: e,
                })?,
        };
        let local = http
            .local_addr()
            .map_err(|e| ListenError::Activation(e.to_string()))?;
        check_http_addr(&local, cfg.http_allow_remote)?;
        Ok(Listeners {
            detect,
            http,
            socket_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_files_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&p).expect("bind");
        } // dropped: the file stays, nobody listens
        let l = bind_unix(&p, 0o600, None).expect("stale replaced");
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind_unix(&p, 0o600, None).expect_err("live socket");
        assert!(e.to_string().contains("another process"), "{e}");
        drop(l);
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").expect("write");
        let e = bind_unix(&f, 0o600, None).expect_err("regular file");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&f).expect("kept"), b"x");
        let e = bind_unix(&p, 0o600, Some("no-such-group-iv")).expect_err("group");
        assert!(e.to_string().contains("does not exist"), "{e}");
    }
}
