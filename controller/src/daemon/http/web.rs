//! The web view: a read-only page for a browser, served by the API's listeners. Three static
//! files built into the binary (`include_str!`, no build step): `index.html`, `app.js` (plain
//! JavaScript, no framework) and `style.css`. The page shows only what it fetches from the JSON
//! API `lazarus status` uses (`/api/status`, `/api/nodes/N`), polled every second, so the CLI
//! and the page show the same facts.
//!
//! Credentials follow the API's rules ([`super::guard`]): the files themselves are public (the
//! same bytes in every binary, no data), and every `/api/*` request the page makes carries the
//! token over TCP. A browser cannot send a bearer token when it navigates, so the page gets it
//! in the URL's fragment (`http://HOST:PORT/#token=…`, never sent to the server, nor in a
//! `Referer`) or from a form, keeps it in `sessionStorage` (this tab only; never a cookie, so no
//! other site's page can make the browser send it), removes it from the address bar, and sends
//! it as `Authorization: Bearer`. The page only reads: it makes GET requests and nothing else.
//!
//! Every answer carries a Content-Security-Policy that allows scripts, styles and requests from
//! the controller's own origin only and no framing, so text from the cluster (node names, error
//! messages) can never run as code; `app.js` also builds the page with DOM calls and
//! `textContent`, never by parsing HTML.

use hyper::Method;

/// One file of the web view.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub body: &'static str,
    pub kind: &'static str,
}

const INDEX: Page = Page {
    body: include_str!("web/index.html"),
    kind: "text/html; charset=utf-8",
};
const APP: Page = Page {
    body: include_str!("web/app.js"),
    kind: "text/javascript; charset=utf-8",
};
const STYLE: Page = Page {
    body: include_str!("web/style.css"),
    kind: "text/css; charset=utf-8",
};

/// The policy sent with every answer of the API's listeners: nothing but this origin's own
/// script, style and requests; no inline script, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The file of the web view at `path_and_query` (a query is ignored), if `method` is GET.
pub fn page(method: &Method, path_and_query: &str) -> Option<&'static Page> {
    if method != Method::GET {
        return None;
    }
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    match path {
        "/" => Some(&INDEX),
        "/ui/app.js" => Some(&APP),
        "/ui/style.css" => Some(&STYLE),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_its_script_and_style_from_its_own_routes() {
        let html = page(&Method::GET, "/").unwrap().body;
        assert!(html.contains(r#"src="ui/app.js""#), "{html}");
        assert!(html.contains(r#"href="ui/style.css""#), "{html}");
        assert!(
            !html.contains("<script>"),
            "no inline script: the policy forbids it"
        );
        assert!(page(&Method::GET, "/ui/app.js").is_some());
        assert!(page(&Method::HEAD, "/").is_none());
        assert!(page(&Method::GET, "/ui/other.js").is_none());
    }

    #[test]
    fn the_script_builds_no_html_from_text() {
        let js = APP.body;
        for unsafe_sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(unsafe_sink), "app.js uses {unsafe_sink}");
        }
        // The token travels only in the Authorization header, kept for this tab only.
        assert!(js.contains("Authorization"));
        assert!(js.contains("sessionStorage"));
        assert!(!js.contains("document.cookie") && !js.contains("localStorage"));
    }
}
