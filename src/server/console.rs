//! The web console's files, embedded in the binary at build time (`console/` of the source tree:
//! one page, its script, its style sheet, its icon) and served on the Unix socket only: `/` is
//! the page, `/ui/*` its assets. The console is a client of the documented JSON API and nothing
//! else; this module owns only the files and the headers that confine them (a strict Content
//! Security Policy: no inline script, nothing from another origin, no framing).

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};

use super::body::Body;
use super::error::ApiError;
use super::request::{error_response, Resp};

/// One embedded file.
struct Asset {
    path: &'static str,
    mime: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 4] = [
    Asset {
        path: "/",
        mime: "text/html; charset=utf-8",
        bytes: include_bytes!("../../console/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        mime: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../console/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        mime: "text/css; charset=utf-8",
        bytes: include_bytes!("../../console/app.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        mime: "image/svg+xml",
        bytes: include_bytes!("../../console/icon.svg"),
    },
];

/// What the page may load and run: its own script, style and images (the live views and
/// snapshots included, and `blob:` images of "Try it"), its own API; nothing inline, nothing from
/// elsewhere, never inside another site's frame.
const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's.
pub(crate) fn is_console(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/ui/")
}

/// FNV-1a of the file: its ETag, so a browser revalidates with one small request.
fn etag(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

/// Answers a console path (GET or HEAD).
pub(crate) fn serve(req: &Parts) -> Resp {
    let path = match req.uri.path() {
        "/index.html" => "/",
        p => p,
    };
    if !matches!(req.method, Method::GET | Method::HEAD) {
        return error_response(&ApiError::new(
            405,
            "method_not_allowed",
            format!("{} is not allowed on {path}", req.method),
        ));
    }
    let Some(a) = ASSETS.iter().find(|a| a.path == path) else {
        return error_response(&ApiError::new(
            404,
            "not_found",
            format!("no console file {path}"),
        ));
    };
    let tag = etag(a.bytes);
    let fresh = req
        .headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let body = if fresh || req.method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(a.bytes)
    };
    let mut r = Response::new(Body::full(body));
    if fresh {
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&tag) {
        h.insert(ETAG, v);
    }
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Request;

    fn get(path: &str, etag: Option<&str>) -> Resp {
        let mut b = Request::builder().method(Method::GET).uri(path);
        if let Some(t) = etag {
            b = b.header("if-none-match", t);
        }
        serve(&b.body(()).expect("request").into_parts().0)
    }

    #[test]
    fn the_page_and_its_assets_are_served_confined() {
        let r = get("/", None);
        assert_eq!(r.status(), 200);
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .expect("ascii");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        for p in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg", "/index.html"] {
            assert_eq!(get(p, None).status(), 200, "{p}");
        }
        assert_eq!(get("/ui/../Cargo.toml", None).status(), 404);
        assert_eq!(get("/ui/nothing.js", None).status(), 404);
        let tag = get("/ui/app.js", None).headers()["etag"]
            .to_str()
            .expect("ascii")
            .to_string();
        assert_eq!(get("/ui/app.js", Some(&tag)).status(), 304);
        assert_eq!(get("/ui/app.js", Some("\"other\"")).status(), 200);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(ASSETS[0].bytes).expect("utf-8");
        assert!(
            !html.contains("<script>") && !html.contains(" style=") && !html.contains("onclick")
        );
        assert!(
            html.contains("<script src=\"/ui/app.js\""),
            "the page loads its script"
        );
    }
}
