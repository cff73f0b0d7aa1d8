//! `fleet.toml`: fleets declared in a file under version control, one table per fleet.
//!
//! ```toml
//! [fleets.squad]
//! replicas = 3
//! brain = "echo"
//! version = "2"
//! prompt = "You are terse."
//!
//! [fleets.hpc]
//! backend = "slurm"
//! replicas = 8
//! cluster = { partition = "debug", time_limit = "01:00:00" }
//! deploy = { max_unavailable = "25%" }
//! env = { PROJECT = "climate" }
//! secrets = ["OPENAI_API_KEY"]     # clawfleet secret set OPENAI_API_KEY
//! ```
//!
//! [`parse`] reads the shape (unknown fields and wrong types are refused, each error with the
//! line and column it is at); what the values mean is checked by `core::spec`, and
//! [`Declared::locate`] finds where a field of a fleet was written, for its errors.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::api::{DeployPolicy, LaunchRequest};
use crate::cluster::ClusterSpec;

/// The largest fleet file read.
pub const MAX_FLEET_FILE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    fleets: BTreeMap<Spanned<String>, Spanned<Decl>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decl {
    #[serde(default)]
    backend: Option<Spanned<String>>,
    replicas: Spanned<u32>,
    #[serde(default)]
    brain: Option<Spanned<String>>,
    #[serde(default)]
    prompt: Option<Spanned<String>>,
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    cluster: Option<Spanned<ClusterSpec>>,
    #[serde(default)]
    deploy: Option<Spanned<DeployPolicy>>,
    #[serde(default)]
    env: Option<Spanned<BTreeMap<String, String>>>,
    #[serde(default)]
    secrets: Option<Spanned<Vec<String>>>,
}

/// A line and a column (both from 1) in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// A fleet file that could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", at.map(|p| format!("{p}: ")).unwrap_or_default())]
pub struct FileError {
    pub at: Option<Position>,
    pub message: String,
}

/// One declared fleet: what it asks for, and where each of its fields was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Declared {
    pub request: LaunchRequest,
    /// The fleet's table, then each field's value, by field name.
    at: Position,
    fields: BTreeMap<&'static str, Position>,
}

impl Declared {
    /// Where `field` of this fleet was written (its table when it was not).
    pub fn locate(&self, field: &str) -> Position {
        self.fields.get(field).copied().unwrap_or(self.at)
    }
}

/// Where byte `offset` of `text` is.
fn position(text: &str, offset: usize) -> Position {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Position { line, column }
}

/// Reads a fleet file: its fleets in name order.
pub fn parse(text: &str) -> Result<Vec<Declared>, FileError> {
    if text.len() > MAX_FLEET_FILE_BYTES {
        return Err(FileError {
            at: None,
            message: format!("the file is {} bytes, over the {MAX_FLEET_FILE_BYTES}-byte limit", text.len()),
        });
    }
    let raw: Raw = toml::from_str(text).map_err(|e| FileError {
        at: e.span().map(|s| position(text, s.start)),
        // toml's own message, without the snippet it draws around the place.
        message: e.message().trim().to_owned(),
    })?;
    Ok(raw
        .fleets
        .into_iter()
        .map(|(name, decl)| {
            let at = position(text, name.span().start);
            let decl = decl.into_inner();
            let mut fields = BTreeMap::new();
            fields.insert("name", at);
            fields.insert("replicas", position(text, decl.replicas.span().start));
            let mut take = |field: &'static str, span: Option<std::ops::Range<usize>>| {
                if let Some(span) = span {
                    fields.insert(field, position(text, span.start));
                }
            };
            take("backend", decl.backend.as_ref().map(Spanned::span));
            take("brain", decl.brain.as_ref().map(Spanned::span));
            take("prompt", decl.prompt.as_ref().map(Spanned::span));
            take("version", decl.version.as_ref().map(Spanned::span));
            take("image", decl.image.as_ref().map(Spanned::span));
            take("cluster", decl.cluster.as_ref().map(Spanned::span));
            take("deploy", decl.deploy.as_ref().map(Spanned::span));
            take("env", decl.env.as_ref().map(Spanned::span));
            take("secrets", decl.secrets.as_ref().map(Spanned::span));
            let request = LaunchRequest {
                name: name.into_inner(),
                replicas: decl.replicas.into_inner(),
                backend: decl.backend.map(Spanned::into_inner),
                brain: decl.brain.map(Spanned::into_inner),
                prompt: decl.prompt.map(Spanned::into_inner),
                version: decl.version.map(Spanned::into_inner),
                image: decl.image.map(Spanned::into_inner),
                cluster: decl.cluster.map(Spanned::into_inner),
                deploy: decl.deploy.map(Spanned::into_inner),
                env: decl.env.map(Spanned::into_inner).unwrap_or_default(),
                secrets: decl.secrets.map(Spanned::into_inner).unwrap_or_default(),
            };
            Declared { request, at, fields }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::api::MaxUnavailable;

    fn error(text: &str, expected: Expect) {
        expected.assert_eq(&parse(text).unwrap_err().to_string());
    }

    #[test]
    fn fleets_are_read_in_name_order_with_where_each_field_is() {
        let text = "[fleets.web]\nreplicas = 2\nbrain = \"echo\"\n\n[fleets.hpc]\nbackend = \"slurm\"\nreplicas = 8\n\
                    cluster = { partition = \"debug\" }\ndeploy = { max_unavailable = \"25%\" }\n";
        let fleets = parse(text).unwrap();
        assert_eq!(fleets.iter().map(|f| f.request.name.as_str()).collect::<Vec<_>>(), ["hpc", "web"]);
        let hpc = &fleets[0];
        assert_eq!(hpc.request.cluster.as_ref().unwrap().partition.as_deref(), Some("debug"));
        assert_eq!(hpc.request.deploy.as_ref().unwrap().max_unavailable, Some(MaxUnavailable::Percent(25)));
        assert_eq!(hpc.locate("replicas"), Position { line: 7, column: 12 });
        assert_eq!(hpc.locate("brain"), Position { line: 5, column: 9 }, "not written: the fleet's table");
        assert_eq!(fleets[1].locate("brain"), Position { line: 3, column: 9 });
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn errors_say_where_and_what() {
        error(
            "[fleets.web]\nreplicas = 2\nreplcas = 3\n",
            expect![
                "line 3, column 1: unknown field `replcas`, expected one of `backend`, `replicas`, `brain`, `prompt`, `version`, `image`, `cluster`, `deploy`, `env`, `secrets`"
            ],
        );
        error("[fleets.web]\nbrain = \"echo\"\n", expect!["line 1, column 1: missing field `replicas`"]);
        error("[fleets.web]\nreplicas = -1\n", expect!["line 2, column 12: invalid value: integer `-1`, expected u32"]);
        error("[fleets.web]\nreplicas = 1\nversion = 2\n", expect!["line 3, column 11: invalid type: integer `2`, expected a string"]);
        error("[fleets.web]\nreplicas = 1\n[fleets.web]\nreplicas = 2\n", expect!["line 3, column 9: duplicate key"]);
        error("[fleet.web]\nreplicas = 1\n", expect!["line 1, column 2: unknown field `fleet`, expected `fleets`"]);
        error(
            "[fleets.web]\nreplicas = 1\ndeploy = { max_unavailable = \"0%\" }\n",
            expect!["line 3, column 30: max_unavailable must be a count of at least 1 or a percentage from 1% to 100%, got '0%'"],
        );
        error(
            "[fleets.web]\nreplicas = 1\ncluster = { partiton = \"x\" }\n",
            expect![
                "line 3, column 13: unknown field `partiton`, expected one of `login_host`, `partition`, `workspace_root`, `cluster_subdir`, `account`, `qos`, `time_limit`, `inject_timeout_seconds`, `transport`, `ssh_retry_attempts`, `ssh_retry_delay_seconds`"
            ],
        );
        error("[fleets.web\n", expect!["line 1, column 12: unclosed table, expected `]`"]);
    }
}
