//! The dashboard at `/enhanced-orchestration`: one static page, its script
//! and style, and the chart library (uPlot, vendored), all compiled into the
//! binary so nothing is loaded from elsewhere at run time. The page reads
//! the API from the browser with the user's token; the server adds only
//! headers: a Content-Security-Policy that allows nothing but these files
//! and API calls to this origin, and no framing, sniffing or referrers.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Where the dashboard is served (outside the API's base path).
pub const PATH: &str = "/enhanced-orchestration";

/// Scripts, styles and connections from this origin only; no inline code,
/// no plugins, no framing, no form posts elsewhere.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../assets/dashboard/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/app.css"),
    ),
    (
        "uplot.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/uPlot.iife.min.js"),
    ),
    (
        "uplot.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/dashboard/vendor/uPlot.min.css"),
    ),
];

fn serve(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change only with the binary; a short cache keeps a wall
    // screen's reloads cheap without pinning an old version for long.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    resp
}

/// `GET /enhanced-orchestration`: the page.
pub async fn page() -> Response {
    serve("index.html")
}

/// `GET /enhanced-orchestration/{asset}`: its script, style and charts.
pub async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_loads_is_served_and_nothing_inline() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        for (name, _, _) in &ASSETS[1..] {
            assert!(
                html.contains(&format!("{PATH}/{name}\"")),
                "{name} is not loaded"
            );
        }
        // The CSP allows no inline script or style.
        assert!(!html.contains("<script>") && !html.contains("style="));
        assert!(!html.contains("<style"));
    }

    #[test]
    fn the_vendored_chart_library_is_the_documented_version() {
        let js = std::str::from_utf8(ASSETS[3].2).unwrap();
        assert!(js.starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"));
        let readme = include_str!("../../assets/dashboard/vendor/README.md");
        assert!(readme.contains("uPlot 1.6.32"));
    }

    #[test]
    fn the_script_writes_api_strings_as_text_never_as_html() {
        let js = std::str::from_utf8(ASSETS[1].2).unwrap();
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "app.js uses {sink}");
        }
    }
}
