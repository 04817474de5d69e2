//! The web pages: served HTML and its headers over plain HTTP, and the pages driven in a real
//! browser (Debian's chromium through chromedriver, from tests/web/check_web.py with selenium):
//! search, the sizes shown equal the API's, the INT8 view, copying a snippet, an upload through
//! the form with a token, deleting it, a hostile README that must stay inert, and screenshots
//! at phone and desktop widths (target/web-screenshots, printed by .ci/run).

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::sha;
use crate::hf_client::run_check;
use crate::hub::{TOKEN, create_repo, inline};
use crate::server::{
    Endpoint, Opts, TestServer, client, get, post_form, small_model_bytes, unique,
};

/// A README that would run script in three ways if it were not sanitised.
const HOSTILE_README: &str = "---\nlicense: apache-2.0\ntags:\n- \"<b>tag</b>\"\n---\n# Card\n\n\
    <script>window.pwned = 'script'</script>\n\n\
    <img src=\"x\" onerror=\"window.pwned = 'onerror'\">\n\n\
    [a link](javascript:window.pwned='link')\n";

/// A commit title with markup and quotes, to be shown as text.
const TITLE: &str = "Card with <script>window.pwned='title'</script> and \"quotes\"";

/// A public model with weights, then a commit whose README and title are hostile; and a
/// private model. Returns (public name, private name).
async fn models(s: &TestServer) -> (String, String) {
    let ns = unique("web");
    let public = format!("{ns}/tiny");
    let private = format!("{ns}/hidden");
    assert_eq!(
        create_repo(s, &public, TOKEN, false).await.0,
        StatusCode::OK
    );
    assert_eq!(
        create_repo(s, &private, TOKEN, true).await.0,
        StatusCode::OK
    );
    let weights = small_model_bytes(8101);
    let files = vec![
        ("file", "model.safetensors".to_string(), weights),
        (
            "file",
            "config.json".to_string(),
            br#"{"model_type": "llama"}"#.to_vec(),
        ),
    ];
    let (status, v) = post_form(s, &public, files, Some(TOKEN)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let header = json!({"key": "header", "value": {"summary": TITLE, "description": ""}});
    let body = format!(
        "{header}\n{}",
        inline("README.md", HOSTILE_README.as_bytes())
    );
    let r = client()
        .post(s.at(&format!("/api/models/{public}/commit/main")))
        .bearer_auth(TOKEN)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    (public, private)
}

#[tokio::test]
async fn pages_escape_what_users_wrote_and_show_only_what_the_api_shows() {
    let s = TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    });
    let (public, private) = models(&s).await;

    // Searched, since other tests sharing the catalog may fill the first page.
    let ns = public.split('/').next().unwrap();
    let home = get(&s, &format!("/?q={ns}")).await;
    assert_eq!(home.status(), StatusCode::OK);
    let csp = home.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let html = home.text().await.unwrap();
    assert!(html.contains(&public), "the public model is listed");
    assert!(
        !html.contains(&private),
        "a private model is not shown to a browser"
    );
    assert_eq!(
        get(&s, &format!("/{private}")).await.status(),
        StatusCode::NOT_FOUND
    );

    let page = get(&s, &format!("/{public}")).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("Card with &lt;script&gt;"),
        "the title is text"
    );
    assert!(
        html.contains("&lt;b&gt;tag&lt;/b&gt;"),
        "YAML tags are text"
    );
    for raw in ["<script>window", "onerror", "javascript:", "<b>tag"] {
        assert!(!html.contains(raw), "{raw} reached the page");
    }
    for (path, kind) in [
        ("/static/app.js", "javascript"),
        ("/static/style.css", "css"),
    ] {
        let r = get(&s, path).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().contains(kind));
    }
    assert_eq!(
        get(&s, "/static/nope.js").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Where the browser test saves its screenshots (kept after the run; .ci/run prints them).
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web-screenshots")
}

#[tokio::test]
#[ignore = "needs QSTORE_TEST_PYTHON (selenium) and Debian's chromium + chromium-driver"]
async fn pages_work_in_a_real_browser() {
    let python = crate::needs::python("QSTORE_TEST_PYTHON", "selenium");
    let chromedriver = crate::needs::chromedriver();
    let s = TestServer::with(Opts {
        tokens: vec![TOKEN.into()],
        ..Opts::default()
    });
    let (public, _) = models(&s).await;
    let details: Value = get(&s, &format!("/models/{public}"))
        .await
        .json()
        .await
        .unwrap();
    let head = &details["revisions"][0];
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("to-upload");
    std::fs::create_dir(&folder).unwrap();
    let weights = small_model_bytes(8102);
    std::fs::write(folder.join("model.safetensors"), &weights).unwrap();
    std::fs::write(folder.join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let expected = json!({
        "server": s.url,
        "token": TOKEN,
        "repo": public,
        "title": TITLE,
        "sizes": {
            "blob": head["blob_bytes"],
            "high": head["served_bytes"]["bf16"],
            "int8": head["served_bytes"]["int8"],
        },
        "upload": {
            "name": format!("{}/uploaded", unique("web")),
            "files": [folder.join("model.safetensors"), folder.join("config.json")],
            "sha256": sha(&weights),
        },
        "chromedriver": chromedriver,
        "screenshots": shots,
    });
    let path = dir.path().join("expected.json");
    std::fs::write(&path, expected.to_string()).unwrap();
    run_check(
        python,
        "tests/web/check_web.py",
        vec![path.into_os_string()],
    )
    .await;
}
