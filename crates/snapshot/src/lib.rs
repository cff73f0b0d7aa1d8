//! Agent snapshots: a versioned, checksummed archive of an agent's state (the manifest's shape
//! is `clawfleet_proto::snapshot`). [`write`] takes it from a workspace while its agent runs:
//! the agent appends whole lines to its logs, so only each log's complete lines are taken (no
//! half-written turn), and what belongs to this agent's life on this control plane (its event
//! journal, its inbox, its pid and liveness files, a job's credentials) is left out. [`read`]
//! verifies an archive before anything uses it: a truncated or foreign archive, an unknown
//! format version, or a file whose sha256 is not the manifest's is refused, saying which.
//! [`unpack`] writes a verified snapshot into a workspace. [`af`] maps snapshots to and from
//! Letta's Agent File.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Component, Path};

use clawfleet_proto::snapshot::{FORMAT, JournalPosition, MANIFEST, Manifest, Origin, VERSION, WORKSPACE_DIR};

pub mod af;

/// The largest snapshot taken or read (its files, uncompressed).
pub const MAX_BYTES: u64 = 512 * 1024 * 1024;

/// What of a workspace is not the agent's state to carry: its life on this control plane
/// (journal, inbox, identity), its process files, and a Slurm job's script, credentials and log.
const LEFT_OUT: &[&str] = &[
    "epoch",
    "events.jsonl",
    "events.1.jsonl",
    "inbox.jsonl",
    "inbox.1.jsonl",
    "agent.pid",
    "alive",
    "agent.secrets",
    "job.sh",
    "agent.log",
];

/// The logs the agent appends to while it runs: only their complete lines are taken.
const LOGS: &[&str] = &["conversation.jsonl", "conversation.1.jsonl"];

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("reading the workspace {path}: {error}")]
    Workspace { path: String, error: std::io::Error },
    #[error("the workspace is over the {} MiB a snapshot holds", MAX_BYTES / (1024 * 1024))]
    TooLarge,
    #[error("the archive is truncated or is not a clawfleet snapshot: {0}")]
    Unreadable(String),
    #[error("the archive is not a clawfleet snapshot: {0}")]
    NotASnapshot(String),
    #[error("the snapshot is format version {found}; this clawfleet reads version {VERSION}")]
    UnknownVersion { found: u32 },
    #[error("the snapshot was altered: {0}")]
    Tampered(String),
    #[error("writing {path}: {error}")]
    Unpack { path: String, error: std::io::Error },
}

/// A verified snapshot: its manifest, and each file (its path under the workspace) with its
/// content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub manifest: Manifest,
    pub files: Files,
}

/// A workspace's files as a snapshot holds them: each path (relative, `/`-joined) and its content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The sha256 of `bytes`, lowercase hex (what a manifest holds of each file, and what racks
/// send with an archive they transfer).
pub fn sha256_hex(bytes: &[u8]) -> String {
    sha256(bytes)
}

fn sha256(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The workspace's files as a snapshot holds them (paths relative to the workspace, `/`-joined),
/// and what was skipped.
fn collect(workspace: &Path) -> Result<(Files, Vec<String>), SnapshotError> {
    let io = |path: &Path, error| SnapshotError::Workspace { path: path.display().to_string(), error };
    let (mut files, mut skipped, mut total) = (BTreeMap::new(), Vec::new(), 0u64);
    let mut dirs = vec![(workspace.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir).map_err(|e| io(&dir, e))?.collect::<Result<_, _>>().map_err(|e| io(&dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                skipped.push(format!("{prefix}{}: not a UTF-8 name", entry.file_name().to_string_lossy()));
                continue;
            };
            let rel = format!("{prefix}{name}");
            if prefix.is_empty() && LEFT_OUT.contains(&name.as_str()) {
                continue;
            }
            let kind = entry.file_type().map_err(|e| io(&entry.path(), e))?;
            if kind.is_dir() {
                dirs.push((entry.path(), format!("{rel}/")));
            } else if kind.is_file() {
                let mut bytes = std::fs::read(entry.path()).map_err(|e| io(&entry.path(), e))?;
                if prefix.is_empty() && LOGS.contains(&name.as_str()) {
                    // A line being appended now is not part of the snapshot.
                    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                    bytes.truncate(complete);
                }
                total += bytes.len() as u64;
                if total > MAX_BYTES {
                    return Err(SnapshotError::TooLarge);
                }
                files.insert(rel, bytes);
            } else {
                skipped.push(format!("{rel}: a link or special file"));
            }
        }
    }
    Ok((files, skipped))
}

/// Where the agent's journal had got to: the last complete line of `events.jsonl`.
fn journal(workspace: &Path) -> Option<JournalPosition> {
    let text = std::fs::read_to_string(workspace.join("events.jsonl")).ok()?;
    let last = text.lines().rev().filter(|l| !l.trim().is_empty()).find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())?;
    Some(JournalPosition { epoch: last["epoch"].as_str()?.to_owned(), seq: last["seq"].as_u64()? })
}

/// How many turns a conversation log holds (its user messages).
fn turns(files: &Files) -> u64 {
    LOGS.iter()
        .filter_map(|l| files.get(*l))
        .flat_map(|bytes| bytes.split(|b| *b == b'\n'))
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter(|m| m["role"] == "user")
        .count() as u64
}

/// The first of `secrets` (name, value) whose value appears in any file: a workspace that
/// holds one is not snapshotted.
pub fn holds_secret<'a>(
    files: &BTreeMap<String, Vec<u8>>,
    secrets: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<(String, String)> {
    for (name, value) in secrets {
        let needle = value.as_bytes();
        if needle.len() < 6 {
            continue;
        }
        if let Some(path) = files.iter().find(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle)).map(|(p, _)| p) {
            return Some((name.to_owned(), path.clone()));
        }
    }
    None
}

/// Reads a workspace as a snapshot would hold it, without writing an archive: what
/// [`holds_secret`] checks before [`write`].
pub fn files_of(workspace: &Path) -> Result<Files, SnapshotError> {
    collect(workspace).map(|(files, _)| files)
}

/// Writes the snapshot of `workspace` to `out` (gzip'd tar: the workspace's files under
/// `workspace/`, then `manifest.json`); returns its manifest.
pub fn write(workspace: &Path, origin: Origin, out: impl Write) -> Result<Manifest, SnapshotError> {
    let (files, skipped) = collect(workspace)?;
    write_files(&files, skipped, journal(workspace), origin, out)
}

/// Writes a snapshot of `files` (a workspace's, or an Agent File's, `af::files_of`).
pub fn write_files(
    files: &Files,
    skipped: Vec<String>,
    journal: Option<JournalPosition>,
    origin: Origin,
    out: impl Write,
) -> Result<Manifest, SnapshotError> {
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        origin,
        journal,
        turns: turns(files),
        files: files.iter().map(|(p, b)| (p.clone(), sha256(b))).collect(),
        skipped,
    };
    let unwritable = |e: std::io::Error| SnapshotError::Workspace { path: "the archive".into(), error: e };
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(out, flate2::Compression::default()));
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_cksum();
        tar.append_data(&mut header, path, bytes)
    };
    for (path, bytes) in files {
        add(&format!("{WORKSPACE_DIR}/{path}"), bytes).map_err(unwritable)?;
    }
    add(MANIFEST, &serde_json::to_vec_pretty(&manifest).expect("a manifest serializes")).map_err(unwritable)?;
    tar.into_inner().and_then(|gz| gz.finish()).map_err(unwritable)?.flush().map_err(unwritable)?;
    Ok(manifest)
}

/// A path an archive may hold under `workspace/`: relative, with no `..`.
fn plain(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

/// Reads and verifies a snapshot: every file is the manifest's, byte for byte, and nothing else
/// is there.
pub fn read(input: impl Read) -> Result<Snapshot, SnapshotError> {
    let unreadable = |e: std::io::Error| SnapshotError::Unreadable(e.to_string());
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(input));
    let (mut manifest, mut files, mut total) = (None, BTreeMap::new(), 0u64);
    for entry in archive.entries().map_err(unreadable)? {
        let mut entry = entry.map_err(unreadable)?;
        let path = entry.path().map_err(unreadable)?.to_string_lossy().into_owned();
        if !entry.header().entry_type().is_file() {
            return Err(SnapshotError::NotASnapshot(format!("'{}' is not a file", path.chars().take(80).collect::<String>())));
        }
        total += entry.size();
        if total > MAX_BYTES {
            return Err(SnapshotError::TooLarge);
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry.read_to_end(&mut bytes).map_err(unreadable)?;
        match path.strip_prefix(&format!("{WORKSPACE_DIR}/")) {
            _ if path == MANIFEST => manifest = Some(bytes),
            Some(rel) if plain(rel) => {
                files.insert(rel.to_owned(), bytes);
            }
            _ => return Err(SnapshotError::NotASnapshot(format!("unexpected entry '{}'", path.chars().take(80).collect::<String>()))),
        }
    }
    let manifest = manifest.ok_or_else(|| SnapshotError::NotASnapshot(format!("it has no {MANIFEST}")))?;
    let head: serde_json::Value = serde_json::from_slice(&manifest).map_err(|e| SnapshotError::NotASnapshot(format!("{MANIFEST}: {e}")))?;
    if head["format"] != FORMAT {
        return Err(SnapshotError::NotASnapshot(format!("{MANIFEST} says format {}", head["format"])));
    }
    let found = head["version"].as_u64().unwrap_or(0) as u32;
    if found != VERSION {
        return Err(SnapshotError::UnknownVersion { found });
    }
    let manifest: Manifest = serde_json::from_value(head).map_err(|e| SnapshotError::NotASnapshot(format!("{MANIFEST}: {e}")))?;
    for (path, sum) in &manifest.files {
        match files.get(path) {
            None => return Err(SnapshotError::Tampered(format!("'{path}' is missing"))),
            Some(bytes) if sha256(bytes) != *sum => return Err(SnapshotError::Tampered(format!("'{path}' does not match its sha256"))),
            Some(_) => {}
        }
    }
    if let Some(extra) = files.keys().find(|p| !manifest.files.contains_key(*p)) {
        return Err(SnapshotError::Tampered(format!("'{extra}' is not in the manifest")));
    }
    Ok(Snapshot { manifest, files })
}

/// The first link on the way from `workspace` to `path` (its own path included), if any: what
/// an unpack must not follow (an agent may leave links in its workspace, to anywhere).
fn link_on_the_way(workspace: &Path, path: &str) -> Option<String> {
    let mut at = workspace.to_path_buf();
    for part in path.split('/') {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return Some(at.display().to_string()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Writes a verified snapshot's files into `workspace` (created if missing), never through a
/// link the workspace holds (checked before anything is written). The conversation becomes
/// wholly the snapshot's: a log it does not have is emptied.
pub fn unpack(snapshot: &Snapshot, workspace: &Path) -> Result<(), SnapshotError> {
    let paths = snapshot.files.keys().map(String::as_str).chain(LOGS.iter().copied());
    if let Some(link) = paths.into_iter().find_map(|p| link_on_the_way(workspace, p)) {
        let error = std::io::Error::other("it is a link in the workspace, which a restore does not follow");
        return Err(SnapshotError::Unpack { path: link, error });
    }
    for log in LOGS.iter().filter(|l| !snapshot.files.contains_key(**l)) {
        let to = workspace.join(log);
        if to.exists() {
            std::fs::write(&to, b"").map_err(|error| SnapshotError::Unpack { path: to.display().to_string(), error })?;
        }
    }
    // What is written belongs to whoever owns the workspace (an agent may run as a user of its
    // own while the control plane writes as root).
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(workspace).map(|m| (m.uid(), m.gid())).ok();
    for (path, bytes) in &snapshot.files {
        let to = workspace.join(path);
        let failed = |error| SnapshotError::Unpack { path: to.display().to_string(), error };
        let mut made = Vec::new();
        let mut dir = to.parent();
        while let Some(d) = dir.filter(|d| *d != workspace && !d.exists()) {
            made.push(d.to_path_buf());
            dir = d.parent();
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(failed)?;
        }
        std::fs::write(&to, bytes).map_err(failed)?;
        if let Some((uid, gid)) = owner {
            for p in made.iter().chain([&to]) {
                std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(failed)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Origin {
        Origin {
            clawfleet_version: "0.1.0".into(),
            created_at: "2026-12-03T12:00:00Z".into(),
            source: "http://127.0.0.1:8080".into(),
            fleet: "squad".into(),
            slot: 1,
            brain: "echo".into(),
            system_prompt: Some("Be terse.".into()),
            fleet_version: "1".into(),
        }
    }

    /// A workspace as an agent leaves it, mid-write of its conversation.
    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        std::fs::write(ws.join("epoch"), "e1").unwrap();
        std::fs::write(ws.join("events.jsonl"), "{\"epoch\":\"e1\",\"seq\":1}\n{\"epoch\":\"e1\",\"seq\":7}\n").unwrap();
        std::fs::write(ws.join("inbox.jsonl"), "{}\n").unwrap();
        std::fs::write(
            ws.join("conversation.jsonl"),
            "{\"role\":\"user\",\"content\":\"hi\"}\n{\"role\":\"assistant\",\"content\":\"hi\"}\n{\"role\":\"user\",\"con",
        )
        .unwrap();
        std::fs::write(ws.join("config.json"), "{\"system_prompt\": \"x\"}").unwrap();
        std::fs::create_dir_all(ws.join("repo/src")).unwrap();
        std::fs::write(ws.join("repo/src/main.rs"), "fn main() {}\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ws.join("link")).unwrap();
        dir
    }

    fn archive() -> (Vec<u8>, Manifest) {
        let dir = workspace();
        let mut out = Vec::new();
        let manifest = write(dir.path(), source(), &mut out).unwrap();
        (out, manifest)
    }

    #[test]
    fn a_snapshot_holds_the_agents_state_and_only_whole_turns() {
        let (bytes, manifest) = archive();
        assert_eq!(manifest.files.keys().collect::<Vec<_>>(), ["config.json", "conversation.jsonl", "repo/src/main.rs"]);
        assert_eq!(manifest.turns, 1, "the half-written turn is not in it");
        assert_eq!(manifest.journal, Some(JournalPosition { epoch: "e1".into(), seq: 7 }));
        assert_eq!(manifest.skipped, ["link: a link or special file"]);
        let snap = read(bytes.as_slice()).unwrap();
        assert_eq!(snap.manifest, manifest);
        assert!(snap.files["conversation.jsonl"].ends_with(b"\"hi\"}\n"));
        let into = tempfile::tempdir().unwrap();
        unpack(&snap, into.path()).unwrap();
        assert_eq!(std::fs::read_to_string(into.path().join("repo/src/main.rs")).unwrap(), "fn main() {}\n");
        // A link the workspace holds is not followed: nothing is written.
        let elsewhere = tempfile::tempdir().unwrap();
        let trap = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), trap.path().join("repo")).unwrap();
        let err = unpack(&snap, trap.path()).unwrap_err().to_string();
        assert!(err.ends_with("repo: it is a link in the workspace, which a restore does not follow"), "{err}");
        assert!(std::fs::read_dir(elsewhere.path()).unwrap().next().is_none(), "nothing written through the link");
        assert!(!trap.path().join("conversation.jsonl").exists(), "nothing written at all");
    }

    /// Rebuilds an archive with its files changed by `f` (path, content), the manifest as is.
    fn altered(bytes: &[u8], f: impl Fn(&str, Vec<u8>) -> Option<(String, Vec<u8>)>) -> Vec<u8> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut content = Vec::new();
            entry.read_to_end(&mut content).unwrap();
            if let Some((path, content)) = f(&path, content) {
                // The name as it is, `..` and all (the builder would refuse it).
                let mut header = tar::Header::new_gnu();
                header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_size(content.len() as u64);
                header.set_mode(0o600);
                header.set_entry_type(tar::EntryType::Regular);
                header.set_cksum();
                tar.append(&header, content.as_slice()).unwrap();
            }
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_tampered_truncated_foreign_or_newer_archive_is_refused_saying_why() {
        let (bytes, _) = archive();
        let refused = |b: &[u8]| read(b).unwrap_err().to_string();
        let changed =
            altered(&bytes, |p, c| Some((p.to_owned(), if p.ends_with("main.rs") { b"fn main() { evil() }\n".to_vec() } else { c })));
        assert_eq!(refused(&changed), "the snapshot was altered: 'repo/src/main.rs' does not match its sha256");
        let missing = altered(&bytes, |p, c| (!p.ends_with("config.json")).then(|| (p.to_owned(), c)));
        assert_eq!(refused(&missing), "the snapshot was altered: 'config.json' is missing");
        let extra =
            altered(&bytes, |p, c| Some((if p.ends_with("config.json") { "workspace/other.json".into() } else { p.to_owned() }, c)));
        assert!(refused(&extra).starts_with("the snapshot was altered: "), "{}", refused(&extra));
        let escape = altered(&bytes, |p, c| Some((if p.ends_with("config.json") { "workspace/../x".into() } else { p.to_owned() }, c)));
        assert_eq!(refused(&escape), "the archive is not a clawfleet snapshot: unexpected entry 'workspace/../x'");
        let newer = altered(&bytes, |p, c| {
            let c = if p == MANIFEST { String::from_utf8(c).unwrap().replace("\"version\": 1", "\"version\": 9").into_bytes() } else { c };
            Some((p.to_owned(), c))
        });
        assert_eq!(refused(&newer), "the snapshot is format version 9; this clawfleet reads version 1");
        let bare = altered(&bytes, |p, c| (p != MANIFEST).then(|| (p.to_owned(), c)));
        assert_eq!(refused(&bare), "the archive is not a clawfleet snapshot: it has no manifest.json");
        assert!(refused(&bytes[..bytes.len() / 2]).starts_with("the archive is truncated or is not a clawfleet snapshot"));
        assert!(refused(b"PK\x03\x04 a zip").starts_with("the archive is truncated or is not a clawfleet snapshot"));
    }

    /// Run as root (as CI runs): what a restore writes belongs to the workspace's owner.
    #[test]
    fn what_a_restore_writes_belongs_to_the_workspaces_owner() {
        use std::os::unix::fs::MetadataExt;
        let (bytes, _) = archive();
        let snap = read(bytes.as_slice()).unwrap();
        let into = tempfile::tempdir().unwrap();
        if std::os::unix::fs::chown(into.path(), Some(65534), Some(65534)).is_err() {
            eprintln!("not root: the owner of a restore's files is not tested here");
            return;
        }
        unpack(&snap, into.path()).unwrap();
        for p in ["conversation.jsonl", "repo", "repo/src", "repo/src/main.rs"] {
            assert_eq!(std::fs::metadata(into.path().join(p)).unwrap().uid(), 65534, "{p}");
        }
    }

    #[test]
    fn a_workspace_that_holds_a_secret_is_found_out() {
        let dir = workspace();
        std::fs::write(dir.path().join("repo/.env"), "OPENAI_API_KEY=sk-live-123456\n").unwrap();
        let files = files_of(dir.path()).unwrap();
        let secrets = [("SHORT", "abc"), ("OPENAI_API_KEY", "sk-live-123456")];
        assert_eq!(holds_secret(&files, secrets), Some(("OPENAI_API_KEY".into(), "repo/.env".into())));
        assert_eq!(holds_secret(&files, [("OTHER", "not-there-at-all")]), None);
    }
}
