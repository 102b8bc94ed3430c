//! Makes containerd read `hosts.toml` files: sets the CRI registry
//! `config_path` in containerd's `config.toml`, editing the TOML in place so
//! the user's comments and other settings stay as they are.
//!
//! With `--snapshotter` it also registers berth-snapshotter as a proxy
//! plugin and makes the CRI plugin use it, with snapshot annotations on
//! (the labels that let a snapshotter mount layers lazily). Without it, what
//! an earlier `--snapshotter` set is given back its original value.
//!
//! containerd 1.6/1.7 files (`version = 2`) keep it under
//! `[plugins."io.containerd.grpc.v1.cri".registry]`; containerd 2.x files
//! (`version = 3`) under `[plugins."io.containerd.cri.v1.images".registry]`.
//! containerd 2.x also runs version 2 files, but does not carry the CRI
//! snapshotter keys of one over: in version 2 files they are set in both
//! places (1.x ignores the 2.x table). The transfer service (1.7+, what
//! `ctr image pull` uses on 2.x) unpacks only into the snapshotters its
//! `unpack_config` lists, so berth is added there too (tested against
//! containerd 1.6, 1.7 and 2.1).

use super::EditError;
use toml_edit::{DocumentMut, Item, Table, TableLike};

const V2_PLUGIN: &str = "io.containerd.grpc.v1.cri";
const V3_PLUGIN: &str = "io.containerd.cri.v1.images";
/// The transfer service (containerd 1.7+; what `ctr image pull` uses on
/// 2.x): it unpacks only into snapshotters its `unpack_config` lists.
const TRANSFER_PLUGIN: &str = "io.containerd.transfer.v1.local";
/// The snapshotter containerd unpacks into when `unpack_config` is empty.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// This node's platform as containerd writes it.
fn platform() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "linux/amd64".into(),
        "aarch64" => "linux/arm64".into(),
        "arm" => "linux/arm/v7".into(),
        other => format!("linux/{other}"),
    }
}

/// Sets `snapshotter = "berth"` and `disable_snapshot_annotations = false`
/// in `target` where they differ.
fn use_berth(target: &mut Table) {
    if target.get("snapshotter").and_then(|v| v.as_str()) != Some(SNAPSHOTTER) {
        target["snapshotter"] = toml_edit::value(SNAPSHOTTER);
    }
    if target.get("disable_snapshot_annotations").and_then(|v| v.as_bool()) != Some(false) {
        target["disable_snapshot_annotations"] = toml_edit::value(false);
    }
}

/// Adds berth to the transfer service's `unpack_config` (after the
/// default entry containerd would otherwise assume, when the list was
/// empty), in whichever form the file writes the list.
fn add_unpack_entry(transfer: &mut Table) -> Result<(), EditError> {
    let entry = |snapshotter: &str| {
        let mut t = toml_edit::InlineTable::new();
        t.insert("platform", platform().into());
        t.insert("snapshotter", snapshotter.into());
        t
    };
    let item = transfer.entry("unpack_config").or_insert(Item::ArrayOfTables(toml_edit::ArrayOfTables::new()));
    let is_berth = |t: &dyn TableLike| t.get("snapshotter").and_then(|v| v.as_str()) == Some(SNAPSHOTTER);
    match item {
        Item::ArrayOfTables(list) => {
            if !list.iter().any(|t| is_berth(t)) {
                if list.is_empty() {
                    list.push(entry(DEFAULT_SNAPSHOTTER).into_table());
                }
                list.push(entry(SNAPSHOTTER).into_table());
            }
        }
        Item::Value(toml_edit::Value::Array(list)) => {
            if !list.iter().any(|v| v.as_inline_table().is_some_and(|t| is_berth(t))) {
                if list.is_empty() {
                    list.push(entry(DEFAULT_SNAPSHOTTER));
                }
                list.push(entry(SNAPSHOTTER));
            }
        }
        _ => return Err(EditError::NotATable(format!("plugins.\"{TRANSFER_PLUGIN}\".unpack_config"))),
    }
    Ok(())
}

/// What the edit found.
#[derive(Debug, PartialEq, Eq)]
pub struct Edited {
    pub text: String,
    /// The file still has deprecated `registry.mirrors`/`configs` entries,
    /// which containerd ignores once `config_path` is set.
    pub legacy_mirrors: bool,
}

fn table<'a>(parent: &'a mut Table, key: &str) -> Result<&'a mut Table, EditError> {
    let item = parent.entry(key).or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    item.as_table_mut().ok_or_else(|| EditError::NotATable(key.to_string()))
}

fn parse(text: &str) -> Result<(DocumentMut, &'static str), EditError> {
    let doc: DocumentMut =
        if text.trim().is_empty() { "version = 2\n".parse().expect("valid TOML") } else { text.parse()? };
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(1);
    let plugin = match version {
        2 => V2_PLUGIN,
        3 => V3_PLUGIN,
        v => return Err(EditError::TomlVersion(v)),
    };
    Ok((doc, plugin))
}

/// The proxy plugin name containerd knows berth-snapshotter by.
pub const SNAPSHOTTER: &str = "berth";

/// Returns `text` with `[proxy_plugins.berth]` pointing at `address` and the
/// CRI plugin using it: `snapshotter = "berth"` and
/// `disable_snapshot_annotations = false` (under `.containerd` in version 2
/// files, on the images plugin in version 3).
pub fn set_snapshotter(text: &str, address: &str) -> Result<String, EditError> {
    let (mut doc, plugin) = parse(text)?;
    let root = doc.as_table_mut();
    let proxy = table(table(root, "proxy_plugins")?, SNAPSHOTTER)?;
    if proxy.get("type").and_then(|v| v.as_str()) != Some("snapshot") {
        proxy["type"] = toml_edit::value("snapshot");
    }
    if proxy.get("address").and_then(|v| v.as_str()) != Some(address) {
        proxy["address"] = toml_edit::value(address);
    }
    let cri = table(table(root, "plugins")?, plugin)?;
    use_berth(if plugin == V2_PLUGIN { table(cri, "containerd")? } else { cri });
    if plugin == V2_PLUGIN {
        // containerd 2.x reads version 2 files but does not carry these two
        // keys over to its images plugin; containerd 1.x ignores the table.
        use_berth(table(table(root, "plugins")?, V3_PLUGIN)?);
    }
    add_unpack_entry(table(table(root, "plugins")?, TRANSFER_PLUGIN)?)?;
    Ok(doc.to_string())
}

/// Undoes [`set_snapshotter`]: each value it sets that still holds berth's
/// is given back the one it had in `original` (the file before berthd first
/// changed it), or removed when it had none, and the tables only it created go
/// away. A file whose proxy plugin and CRI snapshotter are not berth's comes
/// back unchanged.
pub fn unset_snapshotter(text: &str, original: &str) -> Result<String, EditError> {
    let (mut doc, plugin) = parse(text)?;
    let orig = parse(original).map(|(d, _)| d).unwrap_or_default();
    let cri: &[&str] = if plugin == V2_PLUGIN { &["plugins", plugin, "containerd"] } else { &["plugins", plugin] };
    let cri_value =
        |doc: &DocumentMut, key: &str| lookup(doc.as_table(), cri).and_then(|t| t.get(key)?.as_value().cloned());
    let ours_proxy = lookup(doc.as_table(), &["proxy_plugins", SNAPSHOTTER])
        .and_then(|p| p.get("type")?.as_str().map(|t| t == "snapshot"))
        .unwrap_or(false);
    let ours_cri = cri_value(&doc, "snapshotter").is_some_and(|v| v.as_str() == Some(SNAPSHOTTER));
    if !ours_proxy && !ours_cri {
        return Ok(text.to_string());
    }
    if ours_proxy {
        restore(doc.as_table_mut(), orig.as_table(), &["proxy_plugins"], SNAPSHOTTER);
    }
    let mut targets = vec![cri];
    if plugin == V2_PLUGIN {
        targets.push(&["plugins", V3_PLUGIN]);
    }
    for path in targets {
        let value =
            |doc: &DocumentMut, key: &str| lookup(doc.as_table(), path).and_then(|t| t.get(key)?.as_value().cloned());
        if value(&doc, "snapshotter").is_none_or(|v| v.as_str() != Some(SNAPSHOTTER)) {
            continue;
        }
        if value(&doc, "disable_snapshot_annotations").is_some_and(|v| v.as_bool() == Some(false)) {
            restore(doc.as_table_mut(), orig.as_table(), path, "disable_snapshot_annotations");
        }
        restore(doc.as_table_mut(), orig.as_table(), path, "snapshotter");
    }
    let unpack = lookup(doc.as_table(), &["plugins", TRANSFER_PLUGIN, "unpack_config"]);
    let berth_unpacks = match unpack {
        Some(Item::ArrayOfTables(list)) => {
            list.iter().any(|t| t.get("snapshotter").and_then(|v| v.as_str()) == Some(SNAPSHOTTER))
        }
        Some(Item::Value(toml_edit::Value::Array(list))) => list.iter().any(|v| {
            v.as_inline_table().and_then(|t| t.get("snapshotter")?.as_str().map(|s| s == SNAPSHOTTER)) == Some(true)
        }),
        _ => false,
    };
    if berth_unpacks {
        restore(doc.as_table_mut(), orig.as_table(), &["plugins", TRANSFER_PLUGIN], "unpack_config");
    }
    Ok(doc.to_string())
}

fn lookup<'a>(root: &'a Table, path: &[&str]) -> Option<&'a Item> {
    let (first, rest) = path.split_first()?;
    rest.iter().try_fold(root.get(first)?, |item, key| item.as_table_like()?.get(key))
}

fn lookup_table_mut<'a>(root: &'a mut Table, path: &[&str]) -> Option<&'a mut dyn TableLike> {
    let mut table: &mut dyn TableLike = root;
    for key in path {
        table = table.get_mut(key)?.as_table_like_mut()?;
    }
    Some(table)
}

/// Sets `key` of the table at `path` in `doc` to its item in `orig`, or
/// removes it when `orig` has none; then removes the tables on `path` left
/// empty that `orig` does not have.
fn restore(doc: &mut Table, orig: &Table, path: &[&str], key: &str) {
    let Some(table) = lookup_table_mut(doc, path) else { return };
    let before = lookup(orig, path).and_then(|t| t.as_table_like()?.get_key_value(key));
    match (before, table.get_mut(key)) {
        (Some((_, item)), Some(slot)) => *slot = item.clone(),
        // With its key as it was written (indentation included).
        (Some((k, item)), None) => _ = table.entry_format(k).or_insert(item.clone()),
        (None, _) => _ = table.remove(key),
    }
    for depth in (1..=path.len()).rev() {
        if lookup(orig, &path[..depth]).is_some() {
            break;
        }
        let Some(parent) = lookup_table_mut(doc, &path[..depth - 1]) else { break };
        let name = path[depth - 1];
        if !parent.get(name).and_then(|t| t.as_table_like()).is_some_and(|t| t.is_empty()) {
            break;
        }
        parent.remove(name);
    }
}

/// Returns `text` with `config_path` including `certs_d`. An existing
/// different `config_path` is kept after ours (containerd accepts a
/// `:`-separated list).
pub fn set_config_path(text: &str, certs_d: &str) -> Result<Edited, EditError> {
    let (mut doc, plugin) = parse(text)?;
    let root = doc.as_table_mut();
    let plugins = table(root, "plugins")?;
    let cri = table(plugins, plugin)?;
    let registry = table(cri, "registry")?;
    let legacy_mirrors = registry.contains_key("mirrors") || registry.contains_key("configs");
    let current = registry.get("config_path").and_then(|v| v.as_str()).unwrap_or("").to_string();
    if !current.split(':').any(|p| p.trim_end_matches('/') == certs_d.trim_end_matches('/')) {
        let value = if current.is_empty() { certs_d.to_string() } else { format!("{certs_d}:{current}") };
        registry["config_path"] = toml_edit::value(value);
    }
    Ok(Edited { text: doc.to_string(), legacy_mirrors })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"# containerd 1.6 config, as Ubuntu ships it
version = 2
root = "/var/lib/containerd"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"   # keep me
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = ""
"#;

    #[test]
    fn sets_config_path_keeping_comments() {
        let e = set_config_path(V2, "/etc/containerd/certs.d").unwrap();
        assert!(e.text.contains("# containerd 1.6 config, as Ubuntu ships it"));
        assert!(e.text.contains("# keep me"));
        assert!(e.text.contains(r#"config_path = "/etc/containerd/certs.d""#), "{}", e.text);
        // Idempotent.
        assert_eq!(set_config_path(&e.text, "/etc/containerd/certs.d").unwrap().text, e.text);
    }

    #[test]
    fn version_3_and_missing_files() {
        let v3 =
            "version = 3\n[plugins.'io.containerd.cri.v1.images'.registry]\n  config_path = '/etc/docker/certs.d'\n";
        let e = set_config_path(v3, "/etc/containerd/certs.d").unwrap();
        let doc: DocumentMut = e.text.parse().unwrap();
        assert_eq!(
            doc["plugins"][V3_PLUGIN]["registry"]["config_path"].as_str(),
            Some("/etc/containerd/certs.d:/etc/docker/certs.d")
        );
        let fresh = set_config_path("", "/x").unwrap();
        let doc: DocumentMut = fresh.text.parse().unwrap();
        assert_eq!(doc["plugins"][V2_PLUGIN]["registry"]["config_path"].as_str(), Some("/x"));
        assert!(set_config_path("version = 1\n", "/x").is_err());
        assert!(set_config_path("not toml [", "/x").is_err());
        let legacy = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"docker.io\"]\n  endpoint = [\"https://m\"]\n";
        assert!(set_config_path(legacy, "/x").unwrap().legacy_mirrors);
    }

    #[test]
    fn snapshotter_v2_and_v3() {
        let out = set_snapshotter(V2, "/run/berth/snapshotter.sock").unwrap();
        assert!(out.contains("# keep me"));
        let doc: DocumentMut = out.parse().unwrap();
        assert_eq!(doc["proxy_plugins"]["berth"]["type"].as_str(), Some("snapshot"));
        assert_eq!(doc["proxy_plugins"]["berth"]["address"].as_str(), Some("/run/berth/snapshotter.sock"));
        let ctd = &doc["plugins"][V2_PLUGIN]["containerd"];
        assert_eq!(ctd["snapshotter"].as_str(), Some("berth"));
        assert_eq!(ctd["disable_snapshot_annotations"].as_bool(), Some(false));
        let images = &doc["plugins"][V3_PLUGIN];
        assert_eq!(images["snapshotter"].as_str(), Some("berth"), "containerd 2.x reading a version 2 file");
        assert_eq!(images["disable_snapshot_annotations"].as_bool(), Some(false));
        let unpack = doc["plugins"][TRANSFER_PLUGIN]["unpack_config"].as_array_of_tables().unwrap();
        let snapshotters: Vec<_> = unpack.iter().map(|t| t["snapshotter"].as_str().unwrap()).collect();
        assert_eq!(snapshotters, ["overlayfs", "berth"], "the implicit default is kept beside berth");
        assert!(unpack.iter().all(|t| t["platform"].as_str() == Some(platform().as_str())));
        assert_eq!(set_snapshotter(&out, "/run/berth/snapshotter.sock").unwrap(), out, "idempotent");

        // An unpack_config of the operator's, as an inline array: berth is added, theirs kept.
        let theirs = "version = 2\n[plugins.\"io.containerd.transfer.v1.local\"]\n  unpack_config = [{platform = \"linux/amd64\", snapshotter = \"zfs\"}]\n";
        let out = set_snapshotter(theirs, "/s.sock").unwrap();
        let doc: DocumentMut = out.parse().unwrap();
        let list = doc["plugins"][TRANSFER_PLUGIN]["unpack_config"].as_array().unwrap();
        let snapshotters: Vec<_> =
            list.iter().map(|v| v.as_inline_table().unwrap()["snapshotter"].as_str().unwrap()).collect();
        assert_eq!(snapshotters, ["zfs", "berth"]);
        assert_eq!(unset_snapshotter(&out, theirs).unwrap(), theirs, "byte for byte");

        let v3 = "version = 3\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n  disable_snapshot_annotations = true\n";
        let doc: DocumentMut = set_snapshotter(v3, "/s.sock").unwrap().parse().unwrap();
        assert_eq!(doc["plugins"][V3_PLUGIN]["snapshotter"].as_str(), Some("berth"));
        assert_eq!(doc["plugins"][V3_PLUGIN]["disable_snapshot_annotations"].as_bool(), Some(false));
        assert_eq!(doc["proxy_plugins"]["berth"]["address"].as_str(), Some("/s.sock"));
    }

    #[test]
    fn unset_snapshotter_gives_back_the_original_values() {
        // A file with no CRI containerd table: berthd's tables go again.
        let with_path = set_config_path(V2, "/etc/containerd/certs.d").unwrap().text;
        let on = set_snapshotter(&with_path, "/run/berth/snapshotter.sock").unwrap();
        let off = unset_snapshotter(&on, V2).unwrap();
        assert!(!off.contains("proxy_plugins") && !off.contains("berth"), "{off}");
        assert!(!off.contains("disable_snapshot_annotations") && !off.contains(".containerd]"), "{off}");
        assert!(off.contains("# keep me") && off.contains("config_path = \"/etc/containerd/certs.d\""), "{off}");
        assert_eq!(off, with_path, "as if --snapshotter never ran");
        assert_eq!(unset_snapshotter(&off, V2).unwrap(), off, "idempotent");

        // containerd's own defaults (overlayfs, annotations off) come back.
        let defaults = "version = 2\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n      default_runtime_name = \"runc\"\n      disable_snapshot_annotations = true\n      snapshotter = \"overlayfs\"\n";
        let on = set_snapshotter(defaults, "/s.sock").unwrap();
        let off: DocumentMut = unset_snapshotter(&on, defaults).unwrap().parse().unwrap();
        let ctd = &off["plugins"][V2_PLUGIN]["containerd"];
        assert_eq!(ctd["snapshotter"].as_str(), Some("overlayfs"));
        assert_eq!(ctd["disable_snapshot_annotations"].as_bool(), Some(true));
        assert_eq!(ctd["default_runtime_name"].as_str(), Some("runc"));
        assert!(off.get("proxy_plugins").is_none(), "{off}");
        assert_eq!(unset_snapshotter(&on, defaults).unwrap(), defaults, "byte for byte here");

        // version 3, and a proxy plugin named berth that was there before.
        let v3 = "version = 3\n[proxy_plugins.berth]\n  type = 'snapshot'\n  address = '/mine.sock'\n[plugins.'io.containerd.cri.v1.images']\n  snapshotter = 'overlayfs'\n";
        let on = set_snapshotter(v3, "/s.sock").unwrap();
        let off: DocumentMut = unset_snapshotter(&on, v3).unwrap().parse().unwrap();
        assert_eq!(off["plugins"][V3_PLUGIN]["snapshotter"].as_str(), Some("overlayfs"));
        assert!(off["plugins"][V3_PLUGIN].get("disable_snapshot_annotations").is_none(), "{off}");
        assert_eq!(off["proxy_plugins"]["berth"]["address"].as_str(), Some("/mine.sock"));

        // Someone else's snapshotter: left as it is.
        let other = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"stargz\"\n  disable_snapshot_annotations = false\n";
        assert_eq!(unset_snapshotter(other, "").unwrap(), other);
    }
}
