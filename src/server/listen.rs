//! Listening sockets: systemd socket activation (`LISTEN_FDS`: names `detect` and `http`, or else
//! the address family: AF_UNIX = detection, AF_INET/AF_INET6 = health) or our
//! own binding. The detection socket file gets the configured mode and group; a stale socket is
//! replaced, a live one or a non-socket path is refused. The health listener is loopback-only
//! unless remote access is explicitly allowed.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::SockaddrLike;
use tokio::net::{TcpListener, UnixListener};

use crate::config::Config;

/// Errors while setting up the listeners.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
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
pub(crate) struct Listeners {
    pub detect: UnixListener,
    pub http: TcpListener,
    /// The socket file we created (removed on exit while it is still ours); `None` when systemd
    /// owns it.
    pub socket_file: Option<SocketFile>,
}

fn sock_err(path: &Path, message: impl Into<String>) -> ListenError {
    ListenError::Socket {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The socket file this daemon created: removed on exit only while the path still is that socket
/// (same device and inode), so a file someone else put there later is never deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::symlink_metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether `path` still is the socket this daemon bound.
    fn is_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .map(|m| m.file_type().is_socket() && m.dev() == self.dev && m.ino() == self.ino)
            .unwrap_or(false)
    }

    /// Removes the socket file if it is still ours; says why not otherwise.
    pub(crate) fn remove_if_ours(&self) {
        if !self.is_ours() {
            tracing::warn!(path = %self.path.display(), "the socket path no longer is our socket; leaving it");
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the socket file");
        }
    }
}

/// Removes a socket left behind by a process that is gone. Only `ECONNREFUSED` proves that nobody
/// listens: any other failure (permission denied, a full backlog) may be a live socket of another
/// service, which is never taken over.
fn remove_stale_socket(path: &Path) -> Result<(), ListenError> {
    let probe = std::os::unix::net::UnixStream::connect(path).map(drop);
    stale_verdict(probe).map_err(|m| sock_err(path, m))?;
    std::fs::remove_file(path)
        .map_err(|e| sock_err(path, format!("cannot remove stale socket: {e}")))?;
    tracing::info!(path = %path.display(), "replaced a stale socket");
    Ok(())
}

/// Whether a connection attempt proves the socket stale (`Ok`), or why it must be left alone.
fn stale_verdict(connect: std::io::Result<()>) -> Result<(), String> {
    match connect {
        Ok(()) => Err("another process is listening on this socket".into()),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!(
            "cannot tell whether this socket is in use ({e}); refusing to replace it"
        )),
    }
}

/// Binds with the socket file created in its final `mode` (under a umask that clears every other
/// bit), so there is no moment where it is more open than asked and no chmod by path afterwards.
/// The umask is per process: binds that set it take turns (tests bind in parallel threads).
static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener, ListenError> {
    use nix::sys::stat::{umask, Mode};
    let keep = Mode::from_bits_truncate((!mode & 0o777) as nix::libc::mode_t);
    let bound = {
        let _turn = UMASK.lock().unwrap_or_else(|e| e.into_inner());
        let previous = umask(keep);
        let bound = UnixListener::bind(path);
        umask(previous);
        bound
    };
    bound.map_err(|e| sock_err(path, format!("cannot bind: {e}")))
}

/// Gives the socket file to `group` without following a symlink put at its path.
fn set_group(path: &Path, group: &str) -> Result<(), ListenError> {
    let grp = nix::unistd::Group::from_name(group)
        .map_err(|e| sock_err(path, format!("cannot look up group {group}: {e}")))?
        .ok_or_else(|| sock_err(path, format!("group {group} does not exist")))?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        path,
        None,
        Some(grp.gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| sock_err(path, format!("cannot set group {group}: {e}")))
}

/// Binds the Unix socket at `path` with `mode` and optional `group`; returns the listener and the
/// socket file it created.
pub(crate) fn bind_unix(
    path: &Path,
    mode: u32,
    group: Option<&str>,
) -> Result<(UnixListener, SocketFile), ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => remove_stale_socket(path)?,
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
    let l = bind_with_mode(path, mode)?;
    let file = SocketFile::of(path).map_err(|e| sock_err(path, e.to_string()))?;
    if let Some(g) = group {
        if let Err(e) = set_group(path, g) {
            file.remove_if_ours();
            return Err(e);
        }
    }
    Ok((l, file))
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

/// The health listener: the one systemd passed, or a new one on `http_addr`; loopback unless
/// remote access is allowed.
async fn bind_http(cfg: &Config, passed: Option<TcpListener>) -> Result<TcpListener, ListenError> {
    let http = match passed {
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
    Ok(http)
}

impl Listeners {
    /// Takes the sockets systemd passed, binding whatever it did not pass.
    pub(crate) async fn from_config(cfg: &Config) -> Result<Self, ListenError> {
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
        let (detect, socket_file) = match detect {
            Some(l) => (l, None),
            None => {
                let (l, file) = bind_unix(
                    &cfg.socket_path,
                    cfg.socket_mode.0,
                    cfg.socket_group.as_deref(),
                )?;
                (l, Some(file))
            }
        };
        // A later failure must not leave the freshly bound socket file behind.
        let http = match bind_http(cfg, http).await {
            Ok(h) => h,
            Err(e) => {
                if let Some(f) = &socket_file {
                    f.remove_if_ours();
                }
                return Err(e);
            }
        };
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

    fn mode_of(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("meta").permissions().mode() & 0o777
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_files_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&p).expect("bind");
        } // dropped: the file stays, nobody listens
        let (l, file) = bind_unix(&p, 0o600, None).expect("stale replaced");
        assert_eq!(mode_of(&p), 0o600);
        assert_eq!(file.path, p);
        let e = bind_unix(&p, 0o600, None).expect_err("live socket");
        assert!(e.to_string().contains("another process"), "{e}");
        drop(l);
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").expect("write");
        let e = bind_unix(&f, 0o600, None).expect_err("regular file");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::read(&f).expect("kept"), b"x");
        let q = dir.path().join("g.sock");
        let e = bind_unix(&q, 0o600, Some("no-such-group-iv")).expect_err("group");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(!q.exists(), "a failed start leaves no socket file behind");
    }

    #[test]
    fn only_connection_refused_means_stale() {
        use std::io::Error;
        assert!(stale_verdict(Err(Error::from(ErrorKind::ConnectionRefused))).is_ok());
        let live = stale_verdict(Ok(())).expect_err("live");
        assert!(live.contains("another process"), "{live}");
        for kind in [
            ErrorKind::PermissionDenied,
            ErrorKind::WouldBlock,
            ErrorKind::TimedOut,
        ] {
            let e = stale_verdict(Err(Error::from(kind))).expect_err("not proven stale");
            assert!(e.contains("refusing to replace"), "{kind:?}: {e}");
        }
    }

    #[tokio::test]
    async fn the_socket_is_created_in_its_mode_and_removed_only_while_ours() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("d.sock");
        let (l, file) = bind_unix(&p, 0o660, None).expect("bind");
        assert_eq!(mode_of(&p), 0o660);
        drop(l);
        // Someone replaced the path with a regular file: it is not ours to delete.
        std::fs::remove_file(&p).expect("rm");
        std::fs::write(&p, b"not ours").expect("write");
        file.remove_if_ours();
        assert_eq!(std::fs::read(&p).expect("kept"), b"not ours");
        std::fs::remove_file(&p).expect("rm");
        // Our own socket is removed.
        let (_l, file) = bind_unix(&p, 0o600, None).expect("bind");
        file.remove_if_ours();
        assert!(!p.exists());
    }

    #[tokio::test]
    async fn a_failed_start_check_removes_the_fresh_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = Config {
            socket_path: dir.path().join("d.sock"),
            // A non-loopback address without the opt-in fails after the socket is bound.
            http_addr: "0.0.0.0:0".parse().expect("addr"),
            http_allow_remote: false,
            ..Config::default()
        };
        let e = Listeners::from_config(&cfg)
            .await
            .expect_err("not loopback");
        assert!(e.to_string().contains("not loopback"), "{e}");
        assert!(!cfg.socket_path.exists(), "socket file left behind");
    }
}
