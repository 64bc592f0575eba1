//! The web console's files, compiled into the binary: one HTML page, its stylesheet and its
//! script (vanilla JavaScript, no build step, nothing fetched from elsewhere). The routes that
//! serve them are in `rest::console`; every data call the page makes goes to the REST API with
//! the caller's credential.

/// The content type and bytes of the console file `name`, if there is one.
pub fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, t, b)| (*t, *b))
}

const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/console.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_that_are_served() {
        let html = String::from_utf8_lossy(include_bytes!("assets/index.html"));
        for name in ["console.css", "console.js", "favicon.svg"] {
            assert!(html.contains(&format!("/ui/{name}")), "{name}");
            assert!(asset(name).is_some(), "{name}");
        }
        assert!(asset("../Cargo.toml").is_none());
        // Nothing from another origin: the console works offline and leaks nothing.
        for (name, _, body) in ASSETS {
            // An SVG names its XML namespace with a URL; nothing fetches it.
            let text = String::from_utf8_lossy(body).replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{name}"
            );
        }
    }
}
