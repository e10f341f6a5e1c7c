//! The two HTML pages the server serves, `/` (`page.html`) and `/explore` (`explore.html`), with
//! the script they share (`upload.js`: the token flow and the image upload) inlined where each
//! page's script says `// @include upload.js`. Each is still one file on the wire, with no
//! external resources; the shared code is written once.

use std::sync::LazyLock;

/// Where a page's script takes the shared upload code.
const INCLUDE: &str = "// @include upload.js\n";

/// The page's source with `upload.js` inlined at its one include line.
fn with_upload_js(page: &str) -> String {
    debug_assert_eq!(
        page.matches(INCLUDE).count(),
        1,
        "one include line per page"
    );
    page.replacen(INCLUDE, include_str!("upload.js"), 1)
}

/// The classifier page served at `/`.
pub static CLASSIFIER_PAGE: LazyLock<String> =
    LazyLock::new(|| with_upload_js(include_str!("page.html")));

/// The explorer page served at `/explore` and written by `resnet trace --html`.
pub static EXPLORE_PAGE: LazyLock<String> =
    LazyLock::new(|| with_upload_js(include_str!("explore.html")));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_pages_carry_the_shared_script_once_and_no_include_line() {
        for page in [&*CLASSIFIER_PAGE, &*EXPLORE_PAGE] {
            assert!(!page.contains("@include"));
            assert_eq!(page.matches("function wireUpload(").count(), 1);
            assert_eq!(page.matches("async function api(").count(), 1);
            assert!(page.contains("wireUpload("));
        }
    }
}
