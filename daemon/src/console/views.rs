//! The pages, as maud templates: every value is escaped by maud, links are
//! relative (the console may sit behind a prefix), and each page is whole
//! without JavaScript.

use super::format::{ago, bytes, ratio, until, when};
use super::node::NodeStatus;
use super::{confirmation_word, short};
use crate::names::{Reference, RepoName};
use crate::registry::browse::{ImageView, RepoList, TagRow};
use crate::registry::Referrer;
use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use std::time::SystemTime;

/// What every page shows around its content.
pub struct Chrome<'a> {
    pub user: Option<&'a str>,
    pub node: &'a str,
}

/// A relative link to a console page with its query.
fn link(page: &str, pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    format!("{page}?{}", s.finish())
}

fn repo_link(repo: &str) -> String {
    link("repo", &[("name", repo)])
}

fn image_link(repo: &str, reference: &str) -> String {
    link("image", &[("name", repo), ("ref", reference)])
}

fn layout(chrome: &Chrome, title: &str, crumbs: &[(&str, String)], body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Berth on " (chrome.node) }
                link rel="stylesheet" href="assets/console.css";
                script src="assets/console.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Console" {
                        a.brand href="./" { "Berth" }
                        a href="./" { "Repositories" }
                        a href="node" { "Node" }
                    }
                    span.who {
                        (chrome.node)
                        @if let Some(u) = chrome.user { " · " span data-test="user" { (u) } }
                    }
                }
                @if !crumbs.is_empty() {
                    nav.crumbs aria-label="Breadcrumb" {
                        ol {
                            @for (i, (label, href)) in crumbs.iter().enumerate() {
                                li {
                                    @if i + 1 == crumbs.len() { span aria-current="page" { (label) } }
                                    @else { a href=(href) { (label) } }
                                }
                            }
                        }
                    }
                }
                main #main { (body) }
                footer { "berthd " (crate::VERSION) }
            }
        }
    }
}

/// A digest shortened for reading, whole in its title (a link to `href`
/// when given), with a copy button beside it.
fn digest_cell(d: &str, href: Option<&str>) -> Markup {
    let shown = d.split_once(':').map_or(d, |(_, hex)| hex).chars().take(12).collect::<String>();
    html! {
        @if let Some(href) = href { a href=(href) { code.digest title=(d) { (shown) } } }
        @else { code.digest title=(d) { (shown) } }
        button.copy type="button" data-copy=(d) aria-label={ "Copy " (d) } { "copy" }
    }
}

fn time_cell(t: Option<SystemTime>, now: SystemTime) -> Markup {
    html! {
        @match t {
            Some(t) => time datetime=(when(t)) title=(when(t)) { (ago(t, now)) },
            None => span.muted { "never" },
        }
    }
}

pub fn repositories(chrome: &Chrome, search: &str, list: &RepoList) -> Markup {
    let body = html! {
        h1 { "Repositories" }
        form.search role="search" method="get" action="./" {
            label for="q" { "Search repositories" }
            input #q type="search" name="q" value=(search) placeholder="name contains…" autocomplete="off";
            button type="submit" { "Search" }
        }
        p.muted data-test="count" {
            (list.matching) @if list.matching == 1 { " repository" } @else { " repositories" }
            @if !search.is_empty() { " matching “" (search) "”" }
        }
        @if list.repos.is_empty() {
            p.empty { @if search.is_empty() { "Nothing has been pushed yet. Push with "
                code { "skopeo copy … docker://<node>:<port>/app:v1" } "." } @else { "No repository matches." } }
        } @else {
            div.table {
                table #repositories {
                    thead { tr { th scope="col" { "Repository" } th.num scope="col" { "Tags" } th.num scope="col" { "Size" } } }
                    tbody {
                        @for r in &list.repos {
                            tr {
                                td { a href=(repo_link(&r.name)) { (r.name) } }
                                td.num { (r.tags) }
                                td.num { (bytes(r.size)) }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &list.next {
            p { a rel="next" href=(link("./", &[("q", search), ("last", next)])) { "Next page →" } }
        }
    };
    layout(chrome, "Repositories", &[], body)
}

pub fn repository(chrome: &Chrome, repo: &RepoName, tags: &[TagRow], may_delete: bool, notice: Option<&str>) -> Markup {
    let now = SystemTime::now();
    let name = repo.as_str();
    let body = html! {
        h1 { (name) }
        @if let Some(n) = notice { p.notice role="status" { "Deleted " code { (n) } "." } }
        p.muted { (tags.len()) @if tags.len() == 1 { " tag" } @else { " tags" } }
        @if tags.is_empty() {
            p.empty { "This repository has no tags. Its untagged manifests stay until garbage collection removes them." }
        } @else {
            div.table {
                table #tags {
                    thead { tr {
                        th scope="col" { "Tag" } th scope="col" { "Digest" } th.num scope="col" { "Size" }
                        th scope="col" { "Platforms" } th scope="col" { "Pushed" } th scope="col" { "Last pulled" }
                        @if may_delete { th scope="col" { span.sr { "Actions" } } }
                    } }
                    tbody {
                        @for t in tags {
                            tr {
                                td { a href=(image_link(name, &t.tag)) { (t.tag) } }
                                td { (digest_cell(&t.digest.to_string(), Some(&image_link(name, &t.digest.to_string())))) }
                                td.num { (bytes(t.size)) }
                                td { @for p in &t.platforms { span.tag { (p) } " " } }
                                td { (time_cell(Some(t.pushed), now)) }
                                td { (time_cell(t.pulled, now)) }
                                @if may_delete {
                                    td { a.danger href=(link("delete", &[("name", name), ("ref", &t.tag)])) { "Delete…" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout(chrome, name, &[("Repositories", "./".into()), (name, String::new())], body)
}

/// Which family of referrers an artifact type belongs to.
fn referrer_kind(r: &Referrer) -> &'static str {
    let t = r.artifact_type.as_deref().unwrap_or(&r.media_type).to_ascii_lowercase();
    if t.contains("signature") || t.contains(".sig") || t.contains("notary") {
        "Signatures"
    } else if t.contains("spdx") || t.contains("cyclonedx") || t.contains("sbom") || t.contains("syft") {
        "SBOMs"
    } else if t.contains("in-toto") || t.contains("attestation") || t.contains("provenance") || t.contains("vex") {
        "Attestations"
    } else {
        "Other artifacts"
    }
}

fn list_or_dash(v: &Option<Vec<String>>) -> Markup {
    html! {
        @match v {
            Some(v) if !v.is_empty() => code { (v.join(" ")) },
            _ => span.muted { "–" },
        }
    }
}

pub fn image(chrome: &Chrome, repo: &RepoName, reference: &Reference, img: &ImageView, may_delete: bool) -> Markup {
    let name = repo.as_str();
    let d = img.digest.to_string();
    let title = match reference {
        Reference::Tag(t) => format!("{name}:{t}"),
        Reference::Digest(_) => format!("{name}@{}", short(&img.digest)),
    };
    let kinds = ["Signatures", "SBOMs", "Attestations", "Other artifacts"];
    let body = html! {
        h1 { (title) }
        dl.facts {
            dt { "Digest" } dd { code.wrap data-test="digest" { (d) } button.copy type="button" data-copy=(d) aria-label="Copy digest" { "copy" } }
            dt { "Media type" } dd { code { (img.media_type) } }
            @if let Some(t) = &img.artifact_type { dt { "Artifact type" } dd { code { (t) } } }
            dt { "Manifest size" } dd { (bytes(img.manifest_size)) }
            dt { "Tags" } dd {
                @if img.tags.is_empty() { span.muted { "none (untagged)" } }
                @for t in &img.tags { a.tag href=(image_link(name, t)) { (t) } " " }
            }
            @if let Some(s) = &img.subject {
                dt { "Refers to" } dd { a href=(image_link(name, &s.to_string())) { code { (s) } } }
            }
            @if let Some(c) = &img.config {
                dt { "Platform" } dd { (c.os) "/" (c.architecture) @if let Some(v) = &c.variant { "/" (v) } }
                @if let Some(created) = &c.created { dt { "Created" } dd { (created) } }
            }
        }
        @if !img.children.is_empty() {
            h2 { "Platforms" }
            div.table { table #children {
                thead { tr { th scope="col" { "Platform" } th scope="col" { "Manifest" } th.num scope="col" { "Size" } } }
                tbody { @for c in &img.children { tr {
                    td { (c.platform.as_deref().unwrap_or("unknown")) }
                    td { (digest_cell(&c.digest.to_string(), Some(&image_link(name, &c.digest.to_string())))) }
                    td.num { (bytes(c.size)) }
                } } }
            } }
        }
        @if let Some(c) = &img.config {
            h2 { "Configuration" }
            dl.facts #config {
                dt { "Entrypoint" } dd { (list_or_dash(&c.config.entrypoint)) }
                dt { "Cmd" } dd { (list_or_dash(&c.config.cmd)) }
                @if let Some(w) = c.config.working_dir.as_deref().filter(|w| !w.is_empty()) { dt { "Working directory" } dd { code { (w) } } }
                @if let Some(u) = c.config.user.as_deref().filter(|u| !u.is_empty()) { dt { "User" } dd { code { (u) } } }
                @if let Some(p) = &c.config.exposed_ports { dt { "Ports" } dd { @for k in p.keys() { code { (k) } " " } } }
                dt { "Environment" } dd {
                    @match &c.config.env { Some(env) if !env.is_empty() => ul.plain { @for e in env { li { code.wrap { (e) } } } }, _ => span.muted { "–" } }
                }
                @if let Some(labels) = c.config.labels.as_ref().filter(|l| !l.is_empty()) {
                    dt { "Labels" } dd { ul.plain { @for (k, v) in labels { li { code.wrap { (k) "=" (v) } } } } }
                }
            }
        }
        @if let Some(cb) = &img.config_blob {
            h2 { "Layers" }
            div.table { table #layers {
                thead { tr { th scope="col" { "#" } th scope="col" { "Digest" } th scope="col" { "Media type" } th.num scope="col" { "Size" } } }
                tbody {
                    @for (i, l) in img.layers.iter().enumerate() { tr {
                        td.num { (i + 1) }
                        td { (digest_cell(&l.digest.to_string(), None)) }
                        td { code.small { (l.media_type) } }
                        td.num { (bytes(l.size)) }
                    } }
                }
                tfoot { tr {
                    td {} td colspan="2" { "Total, with the config " (digest_cell(&cb.digest.to_string(), None)) }
                    td.num { (bytes(img.layers.iter().map(|l| l.size).sum::<u64>() + cb.size)) }
                } }
            } }
        }
        @if let Some(c) = img.config.as_ref().filter(|c| !c.history.is_empty()) {
            details #history {
                summary { "History (" (c.history.len()) " steps)" }
                ol.history { @for h in &c.history { li {
                    code.wrap { (h.created_by.as_deref().unwrap_or("")) }
                    @if h.empty_layer { " " span.muted { "(no layer)" } }
                } } }
            }
        }
        h2 { "Referrers" }
        @if img.referrers.is_empty() {
            p.muted #referrers { "No signatures, SBOMs or attestations refer to this manifest." }
        } @else {
            div #referrers {
                @for kind in kinds {
                    @let group: Vec<&Referrer> = img.referrers.iter().filter(|r| referrer_kind(r) == kind).collect();
                    @if !group.is_empty() {
                        h3 { (kind) " (" (group.len()) ")" }
                        ul.plain { @for r in group { li {
                            (digest_cell(&r.digest.to_string(), Some(&image_link(name, &r.digest.to_string()))))
                            " " code.small { (r.artifact_type.as_deref().unwrap_or(&r.media_type)) }
                            " " span.muted { (bytes(r.size)) }
                        } } }
                    }
                }
            }
        }
        @if !img.annotations.is_empty() {
            h2 { "Annotations" }
            ul.plain { @for (k, v) in &img.annotations { li { code.wrap { (k) "=" (v) } } } }
        }
        @if may_delete {
            h2 { "Delete" }
            p {
                a.danger.button href=(link("delete", &[("name", name), ("ref", &d)])) { "Delete this manifest…" }
                " " span.muted { "(removes every tag that names it)" }
            }
        }
    };
    layout(chrome, &title, &[("Repositories", "./".into()), (name, repo_link(name)), (&title, String::new())], body)
}

pub fn confirm_delete(
    chrome: &Chrome,
    repo: &RepoName,
    reference: &Reference,
    tags: &[String],
    error: Option<&str>,
) -> Markup {
    let name = repo.as_str();
    let word = confirmation_word(reference);
    let target = match reference {
        Reference::Tag(t) => format!("{name}:{t}"),
        Reference::Digest(d) => format!("{name}@{d}"),
    };
    let action = link("delete", &[("name", name), ("ref", &reference.to_string())]);
    let body = html! {
        h1 { "Delete " code.wrap { (target) } "?" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @match reference {
            Reference::Tag(t) => p { "The tag " code { (t) } " is removed. The manifest it names stays reachable by digest (and by other tags) until garbage collection removes what nothing names." },
            Reference::Digest(_) => {
                p { "The manifest is removed from " code { (name) } ", with every tag that names it:" }
                @if tags.is_empty() { p.muted { "no tags name it." } }
                @else { ul.plain #doomed { @for t in tags { li { code { (t) } } } } }
                p { "Its layers are freed by the next garbage collection if nothing else uses them." }
            }
        }
        p.warn { "Nodes that pull this reference afterwards get “manifest unknown”. This cannot be undone." }
        form.confirm method="post" action=(action) {
            label for="confirm" { "Type " code { (word) } " to confirm" }
            input #confirm name="confirm" autocomplete="off" required data-word=(word) autofocus;
            div.actions {
                button.danger type="submit" { "Delete" }
                a href=(image_link(name, &reference.to_string())) { "Cancel" }
            }
        }
    };
    layout(chrome, "Delete", &[("Repositories", "./".into()), (name, repo_link(name)), ("Delete", String::new())], body)
}

pub fn node(chrome: &Chrome, s: &NodeStatus) -> Markup {
    let now = SystemTime::now();
    let body = html! {
        h1 { "Node " (s.facts.node) }
        section #storage {
            h2 { "Storage" }
            dl.facts {
                dt { "Backend" } dd { (s.facts.storage) }
                dt { "Health" } dd {
                    @match &s.storage {
                        Ok(t) => span.ok { "reachable (" (t.as_millis()) " ms)" },
                        Err(e) => span.bad role="alert" { "unreachable: " (e) },
                    }
                }
            }
        }
        section #cache {
            h2 { "Node cache" }
            @match &s.cache {
                None => p.muted { "No node cache: the storage is local (a cache is used in front of S3)." },
                Some(c) => dl.facts {
                    dt { "Directory" } dd { code { (c.path.display()) } }
                    dt { "Used" } dd {
                        (bytes(c.used)) " of " (bytes(c.max)) " (" (ratio(c.used, c.max)) ")"
                        meter min="0" max=(c.max) value=(c.used) {}
                    }
                    dt { "Hit ratio" } dd { (ratio(c.hits, c.hits + c.misses)) " (" (c.hits) " hits, " (c.misses) " misses)" }
                    dt { "Bytes" } dd { (bytes(c.hit_bytes)) " served from the cache, " (bytes(c.fill_bytes)) " filled" }
                    dt { "Evictions" } dd { (c.evictions) }
                },
            }
        }
        section #mirrors {
            h2 { "Mirrors" }
            @if s.mirrors.is_empty() { p.muted { "No pull-through mirrors are configured." } }
            @else { div.table { table {
                thead { tr { th scope="col" { "Registry" } th scope="col" { "Upstream" } th scope="col" { "Allowed" }
                    th.num scope="col" { "Hits" } th.num scope="col" { "Misses" } th.num scope="col" { "Errors" } th scope="col" { "Last error" } } }
                tbody { @for m in &s.mirrors { tr {
                    td { (m.name) } td { code { (m.url) } }
                    td { @if m.allow.is_empty() { "everything" } @else { @for a in &m.allow { code { (a) } " " } } }
                    td.num { (m.hits) } td.num { (m.misses) } td.num { (m.errors) " / " (m.requests) }
                    td { @match &m.last_error { Some((t, e)) => { (time_cell(Some(*t), now)) ": " span.bad { (e) } }, None => span.muted { "none" } } }
                } } }
            } } }
        }
        section #gc {
            h2 { "Garbage collection" }
            dl.facts {
                dt { "Last run" } dd {
                    @match &s.last_gc {
                        Ok(Some(r)) => { (time_cell(r.finished_at, now)) " by " (r.holder) ": freed " (bytes(r.deleted_bytes)) " (" (r.deleted) " blobs), "
                            (r.tags_removed) " tags and " (r.manifests_removed) " manifests removed" },
                        Ok(None) => span.muted { "never" },
                        Err(e) => span.bad { (e) },
                    }
                }
                dt { "Next" } dd {
                    @match s.next_gc {
                        Some(t) if t > now => { "due " (until(t, now)) }
                        Some(_) => "due now",
                        None => span.muted { "not scheduled on this node (storage.gc.interval is 0, or read-only)" },
                    }
                }
            }
        }
        section #indexes {
            h2 { "Seek indexes (lazy pulls)" }
            dl.facts {
                dt { "Status" } dd {
                    @if s.indexes_enabled { span.ok { "enabled" } } @else { span.muted { "off: no layerindex.keyfile, so lazy pulls fall back to whole layers" } }
                }
                dt { "Built by this node" } dd { (s.index_builds) ", " (s.index_failures) " failed" }
            }
        }
        @if let Some(t) = s.facts.started { p.muted { "Up since " (when(t)) "." } }
    };
    layout(chrome, "Node", &[], body)
}

pub fn problem(chrome: &Chrome, status: StatusCode, message: &str) -> Markup {
    let title = format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
    let hint = match status {
        StatusCode::UNAUTHORIZED => "Sign in with a user this listener accepts (the browser asks for it).",
        StatusCode::FORBIDDEN => "Your user may not do this on this listener.",
        StatusCode::NOT_FOUND => "It may have been deleted, or the name is misspelt.",
        _ => "",
    };
    let body = html! {
        h1 { (title) }
        p.error role="alert" data-test="problem" { (message) }
        @if !hint.is_empty() { p { (hint) } }
        p { a href="./" { "← Repositories" } }
    };
    layout(chrome, &title, &[], body)
}
