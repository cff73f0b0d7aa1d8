//! Desired state declared as a whole (a fleet.toml): what changes, fleet by fleet and field by
//! field, to make the existing fleets match it. The file is the truth: a field it leaves out
//! takes its default, and a fleet it leaves out is terminated only with `prune`.

use std::collections::{BTreeMap, BTreeSet};

use clawfleet_proto::api::{ApplyPlan, ChangeOp, FieldChange, FleetChange, MaxUnavailable};

use crate::spec::FleetSpec;

/// A fleet as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    pub spec: FleetSpec,
    pub terminating: bool,
}

/// Why a declaration cannot be applied as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    #[error("fleet '{0}' is declared twice")]
    Twice(String),
    #[error(
        "fleet '{fleet}' runs on the {from} backend and is declared on {to}: a fleet does not move between backends \
         (terminate it first, or declare the new one under another name)"
    )]
    Backend { fleet: String, from: String, to: String },
    #[error("fleet '{0}' is still terminating: apply again once it is gone")]
    Terminating(String),
}

/// The longest a value is shown in a plan (a prompt is cut, with its size said).
const SHOWN_CHARS: usize = 60;

fn shown(text: &str) -> String {
    if text.chars().count() <= SHOWN_CHARS {
        format!("{text:?}")
    } else {
        let start: String = text.chars().take(SHOWN_CHARS).collect();
        format!("{start:?}… ({} bytes)", text.len())
    }
}

/// Each field of a spec, as compared (`None`: unset), in a fixed order.
fn fields(spec: &FleetSpec) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("backend", Some(spec.backend.to_string())),
        ("replicas", Some(spec.replicas.to_string())),
        ("brain", Some(spec.brain.to_string())),
        ("prompt", spec.prompt.clone()),
        ("version", Some(spec.version.clone())),
        ("image", spec.image.clone()),
        ("cluster", spec.cluster.as_ref().map(|c| serde_json::to_string(c).expect("cluster profiles serialize"))),
        ("deploy.max_unavailable", Some(spec.deploy.max_unavailable.unwrap_or(MaxUnavailable::Count(1)).to_string())),
        ("deploy.canary", spec.deploy.canary.map(|n| n.to_string())),
        ("deploy.deadline_s", spec.deploy.deadline_s.map(|d| d.to_string())),
        ("env", (!spec.env.is_empty()).then(|| spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))),
        ("secrets", (!spec.secrets.is_empty()).then(|| spec.secrets.join(","))),
    ]
}

/// A field's value as a plan shows it: a prompt quoted and cut.
fn show(field: &str, value: Option<String>) -> Option<String> {
    value.map(|v| if field == "prompt" { shown(&v) } else { v })
}

/// What changes, in fleet name order. Nothing is planned when any fleet cannot be applied.
pub fn diff(existing: &[Existing], wanted: &[FleetSpec], prune: bool) -> Result<ApplyPlan, DiffError> {
    let mut declared: BTreeMap<&str, &FleetSpec> = BTreeMap::new();
    for spec in wanted {
        if declared.insert(spec.name.as_str(), spec).is_some() {
            return Err(DiffError::Twice(spec.name.to_string()));
        }
    }
    let existing: BTreeMap<&str, &Existing> = existing.iter().map(|e| (e.spec.name.as_str(), e)).collect();
    let names: BTreeSet<&str> = declared.keys().chain(existing.keys()).copied().collect();
    let mut plan = ApplyPlan::default();
    for name in names {
        match (existing.get(name), declared.get(name)) {
            (None, Some(new)) => plan.changes.push(FleetChange {
                fleet: name.to_owned(),
                op: ChangeOp::Create,
                fields: fields(new)
                    .into_iter()
                    .filter_map(|(field, to)| Some(FieldChange { field: field.into(), from: None, to: Some(show(field, to)?) }))
                    .collect(),
            }),
            (Some(old), Some(_)) if old.terminating => return Err(DiffError::Terminating(name.to_owned())),
            (Some(old), Some(new)) if old.spec.backend != new.backend => {
                return Err(DiffError::Backend { fleet: name.to_owned(), from: old.spec.backend.to_string(), to: new.backend.to_string() });
            }
            (Some(old), Some(new)) => {
                let changed: Vec<FieldChange> = fields(&old.spec)
                    .into_iter()
                    .zip(fields(new))
                    .filter(|((_, from), (_, to))| from != to)
                    .map(|((field, from), (_, to))| {
                        let (from, to) = (show(field, from), show(field, to));
                        // Two prompts that differ only past where they are cut.
                        let to = if from == to { to.map(|t| format!("{t} (differs further on)")) } else { to };
                        FieldChange { field: field.into(), from, to }
                    })
                    .collect();
                if !changed.is_empty() {
                    plan.changes.push(FleetChange { fleet: name.to_owned(), op: ChangeOp::Update, fields: changed });
                }
            }
            (Some(old), None) if old.terminating => {}
            (Some(_), None) if prune => plan.changes.push(FleetChange { fleet: name.to_owned(), op: ChangeOp::Terminate, fields: vec![] }),
            (Some(_), None) => plan.left_alone.push(name.to_owned()),
            (None, None) => unreachable!("every name comes from one side"),
        }
    }
    Ok(plan)
}

/// The plan as `diff` prints it: `+`, `~` with old → new, `-`.
pub fn render(plan: &ApplyPlan) -> String {
    let mut out = String::new();
    for change in &plan.changes {
        out.push_str(&format!("{} fleet {}\n", change.op.sign(), change.fleet));
        for f in &change.fields {
            let line = match (change.op, &f.from, &f.to) {
                (ChangeOp::Create, _, Some(to)) => format!("{}: {to}", f.field),
                (_, from, to) => {
                    format!("{}: {} → {}", f.field, from.as_deref().unwrap_or("(unset)"), to.as_deref().unwrap_or("(unset)"))
                }
            };
            out.push_str(&format!("    {line}\n"));
        }
    }
    for name in &plan.left_alone {
        out.push_str(&format!("  fleet {name} is not declared: left alone (--prune terminates it)\n"));
    }
    let count = |op| plan.changes.iter().filter(|c| c.op == op).count();
    out.push_str(&format!(
        "{} to create, {} to change, {} to terminate\n",
        count(ChangeOp::Create),
        count(ChangeOp::Update),
        count(ChangeOp::Terminate)
    ));
    out
}

#[cfg(test)]
mod tests {
    use clawfleet_proto::api::{DeployPolicy, LaunchRequest};
    use expect_test::{Expect, expect};

    use super::*;
    use crate::BrainSpec;

    fn spec(name: &str, replicas: u32, edit: impl FnOnce(&mut LaunchRequest)) -> FleetSpec {
        let mut req = LaunchRequest { name: name.into(), replicas, ..LaunchRequest::default() };
        edit(&mut req);
        FleetSpec::from_request(&req, &BrainSpec::Echo).unwrap()
    }

    fn existing(spec: FleetSpec) -> Existing {
        Existing { spec, terminating: false }
    }

    fn check(existing: &[Existing], wanted: &[FleetSpec], prune: bool, expected: Expect) {
        let text = match diff(existing, wanted, prune) {
            Ok(plan) => render(&plan),
            Err(e) => format!("error: {e}\n"),
        };
        expected.assert_eq(&text);
    }

    #[test]
    fn creates_changes_and_leaves_alone() {
        let web = spec("web", 2, |_| {});
        check(
            &[],
            std::slice::from_ref(&web),
            false,
            expect![[r#"
            + fleet web
                backend: local
                replicas: 2
                brain: echo
                version: 1
                deploy.max_unavailable: 1
            1 to create, 0 to change, 0 to terminate
        "#]],
        );
        check(
            &[existing(web.clone())],
            std::slice::from_ref(&web),
            false,
            expect![[r#"
            0 to create, 0 to change, 0 to terminate
        "#]],
        );
        let changed = spec("web", 4, |r| {
            r.version = Some("2".into());
            r.prompt = Some("You are terse.".into());
            r.deploy = Some(DeployPolicy { max_unavailable: Some(MaxUnavailable::Percent(25)), ..Default::default() });
        });
        let old = existing(spec("old", 1, |_| {}));
        check(
            &[existing(web.clone()), old.clone()],
            std::slice::from_ref(&changed),
            false,
            expect![[r#"
            ~ fleet web
                replicas: 2 → 4
                prompt: (unset) → "You are terse."
                version: 1 → 2
                deploy.max_unavailable: 1 → 25%
              fleet old is not declared: left alone (--prune terminates it)
            0 to create, 1 to change, 0 to terminate
        "#]],
        );
        check(
            &[existing(web), old],
            &[changed],
            true,
            expect![[r#"
            - fleet old
            ~ fleet web
                replicas: 2 → 4
                prompt: (unset) → "You are terse."
                version: 1 → 2
                deploy.max_unavailable: 1 → 25%
            0 to create, 1 to change, 1 to terminate
        "#]],
        );
    }

    #[test]
    fn long_prompts_are_cut_but_still_compared() {
        let a = spec("p", 1, |r| r.prompt = Some(format!("{}a", "x".repeat(80))));
        let b = spec("p", 1, |r| r.prompt = Some(format!("{}b", "x".repeat(80))));
        check(
            &[existing(a)],
            &[b],
            false,
            expect![[r#"
            ~ fleet p
                prompt: "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"… (81 bytes) → "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"… (81 bytes) (differs further on)
            0 to create, 1 to change, 0 to terminate
        "#]],
        );
    }

    #[test]
    fn what_cannot_be_applied_plans_nothing() {
        let web = spec("web", 1, |_| {});
        let docker = spec("web", 1, |r| r.backend = Some("docker".into()));
        check(
            &[existing(web.clone())],
            &[spec("a", 1, |_| {}), docker],
            false,
            expect![[r#"
            error: fleet 'web' runs on the local backend and is declared on docker: a fleet does not move between backends (terminate it first, or declare the new one under another name)
        "#]],
        );
        check(
            &[Existing { spec: web.clone(), terminating: true }],
            std::slice::from_ref(&web),
            false,
            expect![[r#"
            error: fleet 'web' is still terminating: apply again once it is gone
        "#]],
        );
        check(
            &[],
            &[web.clone(), web.clone()],
            false,
            expect![[r#"
            error: fleet 'web' is declared twice
        "#]],
        );
        // A terminating fleet that is not declared is neither left alone nor pruned again.
        check(
            &[Existing { spec: web, terminating: true }],
            &[],
            true,
            expect![[r#"
            0 to create, 0 to change, 0 to terminate
        "#]],
        );
    }
}
