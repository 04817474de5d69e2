//! Model cards as HTML: the README's markdown rendered by pulldown-cmark, then sanitised by
//! ammonia (an allow-list of tags and attributes; links only to http, https and mailto, and
//! marked `noopener noreferrer`), so a card can carry no script, handler or `javascript:` URL.
//! The YAML block at the top is not rendered: the page shows it as tags.

use pulldown_cmark::{Options, Parser, html};

/// The card's body (front matter removed) as safe HTML.
pub fn card_html(readme: &str) -> String {
    let body = strip_front_matter(readme);
    let mut raw = String::new();
    let options =
        Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    html::push_html(&mut raw, Parser::new_ext(body, options));
    ammonia::Builder::default()
        .url_schemes(["http", "https", "mailto"].into_iter().collect())
        .link_rel(Some("noopener noreferrer nofollow"))
        .clean(&raw)
        .to_string()
}

/// The README without its leading `---` YAML block, if it has one.
fn strip_front_matter(readme: &str) -> &str {
    let text = readme.trim_start_matches('\u{feff}');
    let Some(rest) = text.strip_prefix("---") else {
        return text;
    };
    if !rest.starts_with(['\n', '\r']) {
        return text;
    }
    match rest.find("\n---") {
        Some(end) => {
            let after = &rest[end + 4..];
            after.split_once('\n').map_or("", |(_, body)| body)
        }
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_handlers_and_javascript_links_are_removed() {
        let html = card_html(
            "# Title\n\n<script>alert(1)</script>\n\n<img src=x onerror=\"alert(2)\">\n\n\
             [click](javascript:alert(3)) [ok](https://example.com) <a href=\"JaVaScRiPt:alert(4)\">x</a>\n",
        );
        assert!(html.contains("<h1>Title</h1>"), "{html}");
        for bad in [
            "<script",
            "onerror",
            "javascript:",
            "JaVaScRiPt",
            "alert(1)",
        ] {
            assert!(!html.contains(bad), "{bad} in {html}");
        }
        assert!(html.contains("href=\"https://example.com\""), "{html}");
        assert!(html.contains("noopener"), "{html}");
    }

    #[test]
    fn the_yaml_block_is_not_rendered() {
        let html = card_html("---\nlicense: apache-2.0\ntags: [a]\n---\n# Model\ntext\n");
        assert!(!html.contains("license"), "{html}");
        assert!(html.contains("<h1>Model</h1>"), "{html}");
        assert_eq!(card_html("no front matter"), "<p>no front matter</p>\n");
    }
}
