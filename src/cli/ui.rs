//! `intelligent-video ui`: the daemon's Unix socket on a loopback TCP port for this user's browser.
//! It runs as the invoking user, so only someone who can reach the socket (its group is the access
//! control) can serve it, and every request must carry a random token: in the URL it prints once
//! (answered with a redirect that moves it into a `SameSite=Strict`, `HttpOnly` cookie), then in
//! that cookie. Other local users can reach the port but not the token. Requests are forwarded one
//! by one over a new socket connection each (bodies streamed both ways: live views, events), the
//! cookie removed; the daemon's cross-site gate refuses what other pages would send.

use std::convert::Infallible;
use std::io::Read;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::config::{Config, ConfigOverrides};

/// The cookie that carries the token.
const COOKIE_NAME: &str = "iv_ui";

#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// Loopback port to listen on (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Do not open a browser; only print the URL.
    #[arg(long)]
    pub no_browser: bool,
    /// The daemon's socket (default: `socket_path` from the configuration, else the packaged
    /// /run/intelligent-video.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Configuration file (default /etc/intelligent-video/config.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The socket to forward to.
fn socket_path(args: &UiArgs) -> anyhow::Result<PathBuf> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    let cfg = Config::load(args.config.as_deref(), &ConfigOverrides::default())
        .context("invalid configuration")?;
    let packaged = Path::new("/run/intelligent-video.sock");
    Ok(if !cfg.socket_path.exists() && packaged.exists() {
        packaged.to_path_buf()
    } else {
        cfg.socket_path
    })
}

/// 32 random bytes from the kernel, hex.
fn new_token() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("cannot read /dev/urandom for the token")?;
    Ok(hex::encode(b))
}

/// Runs the proxy until interrupted.
pub fn run(args: &UiArgs) -> anyhow::Result<()> {
    let socket = socket_path(args)?;
    std::os::unix::net::UnixStream::connect(&socket).with_context(|| {
        format!(
            "cannot reach the daemon at {} (is it running, and are you in its socket's group, intelligent-video-clients?)",
            socket.display()
        )
    })?;
    let token = new_token()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(serve(args, socket, token))
}

async fn serve(args: &UiArgs, socket: PathBuf, token: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.port))?;
    let addr: SocketAddr = listener.local_addr()?;
    let url = format!("http://{addr}/?token={token}");
    // A closed stdout (the reader went away) must not stop the proxy: print without panicking.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "intelligent-video ui: {url}");
    let _ = writeln!(out, "(for you only: the token is the key; Ctrl-C stops it)");
    let _ = out.flush();
    drop(out);
    if !args.no_browser {
        open_browser(&url);
    }
    let shared = std::sync::Arc::new((socket, token));
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => r.context("accept")?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(req, &shared.0, &shared.1).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Opens `url` in the desktop's browser when there is a desktop.
fn open_browser(url: &str) {
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !desktop {
        return;
    }
    if std::process::Command::new("xdg-open")
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_err()
    {
        eprintln!("no browser could be opened (xdg-open): open the URL above");
    }
}

/// What the request's token says: the cookie's, or a `token=` in the query (then moved into the
/// cookie by a redirect).
enum Access {
    Cookie,
    Query(String),
    Denied,
}

fn access(req: &Request<Incoming>, token: &str) -> Access {
    let same = |t: &str| {
        t.len() == token.len()
            && t.bytes()
                .zip(token.bytes())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
    };
    let cookie_ok = req
        .headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .any(same);
    if cookie_ok {
        return Access::Cookie;
    }
    let query = req.uri().query().unwrap_or("");
    if query
        .split('&')
        .any(|p| p.strip_prefix("token=").is_some_and(same))
    {
        let rest: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("token="))
            .collect();
        let path = req.uri().path();
        return Access::Query(if rest.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", rest.join("&"))
        });
    }
    Access::Denied
}

fn full(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<ProxyBody> {
    full(
        status,
        serde_json::json!({"error": {"kind": kind, "message": message}}).to_string(),
    )
}

async fn handle(req: Request<Incoming>, socket: &Path, token: &str) -> Response<ProxyBody> {
    match access(&req, token) {
        Access::Denied => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "open the URL that `intelligent-video ui` printed: it carries the token",
        ),
        Access::Query(location) => {
            let mut r = full(StatusCode::SEE_OTHER, String::new());
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(LOCATION, v);
            }
            if let Ok(v) = HeaderValue::from_str(&format!(
                "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict"
            )) {
                r.headers_mut().insert(SET_COOKIE, v);
            }
            r
        }
        Access::Cookie => forward(req, socket).await.unwrap_or_else(|e| {
            error(
                StatusCode::BAD_GATEWAY,
                "daemon_unreachable",
                &format!("the daemon at {} did not answer: {e}", socket.display()),
            )
        }),
    }
}

/// Sends `req` (without its cookie) to the daemon over a new socket connection; the answer's
/// body is streamed back as it comes.
async fn forward(mut req: Request<Incoming>, socket: &Path) -> anyhow::Result<Response<ProxyBody>> {
    req.headers_mut().remove(COOKIE);
    let stream = tokio::net::UnixStream::connect(socket).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender.send_request(req).await?;
    Ok(resp.map(BodyExt::boxed))
}
