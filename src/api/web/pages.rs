//! The markup of the pages (maud: every interpolated string is escaped; only the model card,
//! sanitised by `markdown::card_html`, goes in as HTML).

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::charts::{self, Bar};
use super::{ModelRow, ModelView, human_bytes};
use crate::format::Precision;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · qstore" }
                link rel="stylesheet" href="/static/style.css";
                script src="/static/app.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "qstore" }
                    span.tagline { "one blob, two precisions" }
                }
                main { (body) }
                footer { "qstore · " a href="/models" { "JSON API" } }
            }
        }
    }
}

/// Registry totals over the models listed.
pub struct Totals {
    pub models: usize,
    pub stored: u64,
    pub separate: u64,
    pub blobs: u64,
}

pub struct HomeView<'a> {
    pub q: &'a str,
    pub sort: &'a str,
    pub page: usize,
    pub pages: usize,
    pub rows: &'a [ModelRow],
    pub totals: Totals,
    pub base: &'a str,
}

fn percent(saved: f64) -> String {
    format!("{:.0}%", saved * 100.0)
}

pub fn home(v: &HomeView) -> Markup {
    let saved = if v.totals.separate == 0 {
        0.0
    } else {
        1.0 - v.totals.blobs as f64 / v.totals.separate as f64
    };
    let link = |page: usize| {
        format!(
            "/?q={}&sort={}&page={page}",
            percent_encoding::utf8_percent_encode(v.q, percent_encoding::NON_ALPHANUMERIC),
            v.sort
        )
    };
    layout(
        "Models",
        html! {
            section.totals {
                div { strong #total-models { (v.totals.models) } " models" }
                div { strong #total-stored data-bytes=(v.totals.stored) { (human_bytes(v.totals.stored)) } " stored" }
                div { strong #total-separate data-bytes=(v.totals.separate) { (human_bytes(v.totals.separate)) }
                    " as separate BF16 + INT8 weight files" }
                div { strong #total-savings { (percent(saved)) } " saved on weights by one blob per model" }
            }
            form.search method="get" action="/" {
                input type="search" name="q" value=(v.q) placeholder="Search by name or author" aria-label="Search";
                select name="sort" aria-label="Sort" {
                    @for (value, label) in [("recent", "Recently updated"), ("size", "Largest"), ("savings", "Most saved"), ("name", "Name")] {
                        option value=(value) selected[v.sort == value] { (label) }
                    }
                }
                button type="submit" { "Search" }
            }
            @if v.rows.is_empty() {
                p.empty { "No models" @if !v.q.is_empty() { " match " q { (v.q) } } "." }
            } @else {
                ul.models {
                    @for row in v.rows {
                        li.model {
                            a.name href=(format!("/{}", row.name)) { (row.name) }
                            div.meta {
                                @if let Some(d) = &row.dtype { span.badge { (d.to_uppercase()) " + INT8" } }
                                span data-bytes=(row.stored) { (human_bytes(row.stored)) " stored" }
                                @if row.separate > 0 {
                                    span.saved { (percent(row.savings)) " saved" }
                                }
                            }
                        }
                    }
                }
            }
            nav.pages {
                @if v.page > 1 { a rel="prev" href=(link(v.page - 1)) { "← Previous" } }
                span { "Page " (v.page) " of " (v.pages) }
                @if v.page < v.pages { a rel="next" href=(link(v.page + 1)) { "Next →" } }
            }
            (upload_panel(None))
            p.hint { "Clients: " code { "HF_ENDPOINT=" (v.base) } }
        },
    )
}

/// Upload and delete need a token typed here (held by the page script in memory only).
fn upload_panel(repo: Option<&str>) -> Markup {
    html! {
        details.panel #manage {
            summary { @if repo.is_some() { "Upload a new revision or delete" } @else { "Upload a model" } }
            form #upload-form data-repo=[repo] {
                label { "API token " input #token type="password" autocomplete="off" placeholder="qst_… (empty on a local server)"; }
                @if repo.is_none() {
                    label { "Model name " input #upload-name type="text" required placeholder="org/name" pattern="[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?"; }
                }
                label { "Files " input #upload-files type="file" multiple; }
                label { "or a folder " input #upload-folder type="file" webkitdirectory; }
                button type="submit" { "Upload" }
                progress #upload-progress max="100" value="0" hidden {}
                p #upload-status role="status" {}
            }
            @if let Some(repo) = repo {
                button.danger #delete-model type="button" data-repo=(repo) { "Delete this model" }
            }
        }
    }
}

pub fn model(v: &ModelView) -> Markup {
    let c = &v.commit;
    let dtype = c
        .blob
        .as_ref()
        .map_or("bf16".to_string(), |b| b.high_dtype.clone());
    let int8_view = v.precision == Precision::Int8;
    let switch = other_view(&v.rev, c, int8_view);
    layout(
        &v.name,
        html! {
            h1 #model-name { (v.name) }
            p.revline {
                "Revision " code #revision { (v.rev) } " · commit " code { (short(if int8_view { &c.int8_id } else { &c.id })) }
                " · " span #view { @if int8_view { "INT8 (LLM.int8)" } @else { (dtype.to_uppercase()) } }
                " · " a #switch-view href=(format!("/{}?rev={}", v.name, switch)) {
                    @if int8_view { "show " (dtype.to_uppercase()) } @else { "show INT8" }
                }
            }
            @if !v.tags.is_empty() {
                ul.tags { @for (k, val) in &v.tags { li { span.k { (k) } " " (val) } } }
            }
            @if let Some(blob) = &c.blob {
                section #storage {
                    h2 { "What is stored, what is served" }
                    (charts::storage_bars(&[
                        Bar { label: format!("{} weights", dtype.to_uppercase()), bytes: blob.high_size, class: "high" },
                        Bar { label: "INT8 weights".into(), bytes: blob.int8_size, class: "int8" },
                        Bar { label: "both as separate files".into(), bytes: blob.high_size + blob.int8_size, class: "separate" },
                        Bar { label: "one .qstore blob (both)".into(), bytes: blob.size, class: "blob" },
                    ]))
                    p {
                        "The blob holds both precisions in "
                        strong #blob-bytes data-bytes=(blob.size) { (human_bytes(blob.size)) }
                        ", " (percent(super::savings(blob))) " less than the two weight files ("
                        span #high-bytes data-bytes=(blob.high_size) { (human_bytes(blob.high_size)) } " + "
                        span #int8-bytes data-bytes=(blob.int8_size) { (human_bytes(blob.int8_size)) } ")."
                    }
                }
                @if !v.tensors.is_empty() {
                    section #tensors {
                        h2 { "Bits per parameter, per quantized tensor" }
                        (charts::bits_per_param(&v.tensors))
                        p.hint { "Every stored byte of the tensor (INT8 base, residual, scales, index share) × 8 / parameters: both precisions together." }
                    }
                }
            }
            section #files {
                h2 { "Files" }
                table.files {
                    thead { tr { th { "Path" } th { (dtype.to_uppercase()) " view" } th { "INT8 view" } } }
                    tbody {
                        @for f in &v.files {
                            tr {
                                td.path {
                                    a href=(format!("/{}/resolve/{}/{}", v.name, v.rev, f.path)) { (f.path) }
                                }
                                td data-bytes=[f.high] { @if let Some(n) = f.high { (human_bytes(n)) } @else { "—" } }
                                td data-bytes=[f.int8] { @if let Some(n) = f.int8 { (human_bytes(n)) } @else { "—" } }
                            }
                        }
                    }
                }
            }
            section #use { h2 { "Use it" } (snippets(v)) }
            @if let Some(card) = &v.card {
                section #card { h2 { "Model card" } article.card { (PreEscaped(card)) } }
            }
            section #refs {
                h2 { "Branches and tags" }
                ul.refs {
                    @for (name, target) in &v.branches {
                        li { "branch " a href=(format!("/{}?rev={}", v.name, name)) { (name) } " → " code { (short(target)) } }
                    }
                    @for (name, target) in &v.tags_refs {
                        li { "tag " a href=(format!("/{}?rev={}", v.name, name)) { (name) } " → " code { (short(target)) } }
                    }
                }
            }
            section #history {
                h2 { "History" }
                ol.history {
                    @for h in &v.history {
                        li {
                            a href=(format!("/{}?rev={}", v.name, h.id)) { code { (short(&h.id)) } }
                            " " span.title { (h.title) } " · " span.author { (h.author) } " · "
                            time { (date(h.created_at)) }
                            " " button.link.delete-rev type="button" data-repo=(v.name) data-rev=(h.id) { "delete" }
                        }
                    }
                }
            }
            (upload_panel(Some(&v.name)))
        },
    )
}

/// The revision name of the same commit in the other precision: `main` ↔ `int8`, a branch or
/// tag `REF` ↔ `int8-REF`, a commit id ↔ its twin id.
fn other_view(rev: &str, c: &crate::storage::CommitRecord, int8_view: bool) -> String {
    match (int8_view, rev) {
        (true, "int8") => "main".into(),
        (true, r) if r == c.int8_id => c.id.clone(),
        (true, r) => r.strip_prefix("int8-").unwrap_or("main").into(),
        (false, "main") => "int8".into(),
        (false, r) if r == c.id => c.int8_id.clone(),
        (false, r) => format!("int8-{r}"),
    }
}

fn snippets(v: &ModelView) -> Markup {
    let (base, repo) = (&v.base, &v.name);
    let weights = v
        .files
        .iter()
        .find(|f| f.path.ends_with(".safetensors"))
        .map_or("model.safetensors", |f| f.path.as_str());
    let list = [
        (
            "curl",
            format!("curl -fLO {base}/{repo}/resolve/{}/{weights}", v.rev),
        ),
        (
            "hf download",
            format!("HF_ENDPOINT={base} hf download {repo} --revision {}", v.rev),
        ),
        (
            "huggingface_hub",
            format!(
                "import os\nos.environ[\"HF_ENDPOINT\"] = \"{base}\"\nfrom huggingface_hub import snapshot_download\npath = snapshot_download(\"{repo}\", revision=\"{}\")",
                v.rev
            ),
        ),
        (
            "transformers (main)",
            format!(
                "import os\nos.environ[\"HF_ENDPOINT\"] = \"{base}\"\nfrom transformers import AutoModel\nmodel = AutoModel.from_pretrained(\"{repo}\")"
            ),
        ),
        (
            "transformers (int8)",
            format!(
                "import os\nos.environ[\"HF_ENDPOINT\"] = \"{base}\"\nfrom transformers import AutoModel\nmodel = AutoModel.from_pretrained(\"{repo}\", revision=\"int8\", device_map=\"cpu\")  # needs bitsandbytes"
            ),
        ),
    ];
    html! {
        @for (i, (label, text)) in list.iter().enumerate() {
            div.snippet {
                div.snippet-head {
                    span { (label) }
                    button.copy type="button" data-copy=(format!("snippet-{i}")) { "Copy" }
                }
                pre { code #(format!("snippet-{i}")) { (text) } }
            }
        }
    }
}

pub fn not_found(name: &str, message: &str) -> Markup {
    layout(
        "Not found",
        html! {
            h1 { "Not found" }
            p { (message) }
            p { a href="/" { "All models" } " · " code { (name) } }
        },
    )
}

fn short(id: &str) -> &str {
    id.get(..10).unwrap_or(id)
}

fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_other_view_of_every_kind_of_revision() {
        let c = crate::storage::CommitRecord {
            id: "h".repeat(40),
            int8_id: "i".repeat(40),
            repo: "r".into(),
            parent: None,
            title: String::new(),
            message: String::new(),
            author: String::new(),
            created_at: 0,
            blob: None,
        };
        assert_eq!(other_view("main", &c, false), "int8");
        assert_eq!(other_view("int8", &c, true), "main");
        assert_eq!(other_view("v1", &c, false), "int8-v1");
        assert_eq!(other_view("int8-v1", &c, true), "v1");
        assert_eq!(other_view(&c.id, &c, false), c.int8_id);
        assert_eq!(other_view(&c.int8_id, &c, true), c.id);
    }
}
