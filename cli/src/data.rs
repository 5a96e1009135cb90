//! Text data for `train` and `eval`: JSON lines `{"text": ..., "label": ...}` (a class for
//! classification, a number for regression, no label for causal language modelling), the
//! label-to-class rule both commands share, a seeded shuffle and batching into [`Batch`]es.
//!
//! The class rule stores nothing in the delta, so `train` and `eval` must agree on it: string
//! labels map to ids in sorted order of the distinct labels (`"neg"` → 0, `"pos"` → 1);
//! integer labels are the class ids themselves.

use std::path::Path;

use kilotune::train::rng::Rng;
use kilotune::train::trainer::Batch;
use tokenizers::Encoding;

use crate::embed::{pad_and_feed, FeedPlan, TextTokenizer};
use crate::error::{CliError, Result};

/// What the rows' `label` field holds for a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelKind {
    /// A class: a string, or a non-negative integer id.
    Class,
    /// A number (regression).
    Number,
    /// Nothing: the text is its own target (causal LM); a `label` field is ignored.
    None,
}

/// A row's label as the file gives it.
#[derive(Clone, Debug, PartialEq)]
pub enum RawLabel {
    /// A class name.
    Name(String),
    /// A class id.
    Id(u64),
    /// A regression target.
    Number(f64),
}

/// One row of a data file.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The text.
    pub text: String,
    /// Its label; `None` for [`LabelKind::None`].
    pub label: Option<RawLabel>,
}

/// Reads the JSON-lines file at `path`, keeping the first `limit` rows when given. Blank lines
/// are skipped; anything else that is not `{"text": string, "label": ...}` with a label of
/// `kind` is an error naming the line.
pub fn read_jsonl(path: &Path, limit: Option<usize>, kind: LabelKind) -> Result<Vec<Row>> {
    let content = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    let rows = parse_jsonl(&content, limit, kind)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    if rows.is_empty() {
        return Err(CliError::Usage(format!("{} holds no rows", path.display())));
    }
    Ok(rows)
}

/// [`read_jsonl`] on text; the error is `line N: reason`.
pub fn parse_jsonl(
    content: &str,
    limit: Option<usize>,
    kind: LabelKind,
) -> std::result::Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(line, kind).map_err(|reason| format!("line {}: {reason}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(line: &str, kind: LabelKind) -> std::result::Result<Row, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = value
        .as_object()
        .ok_or("expected a JSON object {\"text\": ..., \"label\": ...}")?;
    let text = match obj.get("text") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(_) => return Err("`text` is not a string".into()),
        None => return Err("no `text` field".into()),
    };
    let label = match (kind, obj.get("label")) {
        (LabelKind::None, _) => None,
        (_, None) => return Err("no `label` field".into()),
        (LabelKind::Class, Some(serde_json::Value::String(s))) => Some(RawLabel::Name(s.clone())),
        (LabelKind::Class, Some(serde_json::Value::Number(n))) => {
            Some(RawLabel::Id(n.as_u64().ok_or_else(|| {
                format!("label {n} is not a non-negative integer")
            })?))
        }
        (LabelKind::Class, Some(other)) => {
            return Err(format!("label {other} is neither a string nor an integer"))
        }
        (LabelKind::Number, Some(serde_json::Value::Number(n))) => {
            // serde_json's numbers are finite; f32 overflow is caught where targets are built.
            Some(RawLabel::Number(
                n.as_f64()
                    .ok_or_else(|| format!("label {n} is not a number"))?,
            ))
        }
        (LabelKind::Number, Some(other)) => {
            return Err(format!(
                "label {other} is not a number (regression needs numbers)"
            ))
        }
    };
    Ok(Row { text, label })
}

/// How labels map to class ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classes {
    /// String labels, sorted: class i is `names[i]`.
    Named(Vec<String>),
    /// Integer labels are ids; `count` classes (at least the largest id + 1).
    Ids {
        /// The number of classes.
        count: usize,
    },
}

impl Classes {
    /// The rule applied to `rows`: sorted distinct names, or integer ids. Mixing both is an error.
    pub fn from_rows(rows: &[Row]) -> Result<Classes> {
        let names: std::collections::BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| match &r.label {
                Some(RawLabel::Name(n)) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        let max_id = rows
            .iter()
            .filter_map(|r| match r.label {
                Some(RawLabel::Id(i)) => Some(i),
                _ => None,
            })
            .max();
        match (names.is_empty(), max_id) {
            (false, None) => Ok(Classes::Named(
                names.into_iter().map(str::to_owned).collect(),
            )),
            (true, Some(m)) => {
                let count = usize::try_from(m)
                    .ok()
                    .and_then(|m| m.checked_add(1))
                    .filter(|&c| c <= 1 << 20);
                count.map(|count| Classes::Ids { count }).ok_or_else(|| {
                    CliError::Usage(format!("label {m} is too large for a class id"))
                })
            }
            _ => Err(CliError::Usage(
                "labels mix strings and integers; use one kind".into(),
            )),
        }
    }

    /// The number of classes.
    pub fn count(&self) -> usize {
        match self {
            Classes::Named(n) => n.len(),
            Classes::Ids { count } => *count,
        }
    }

    /// The class id of `label`, or an error if this rule does not know it.
    pub fn id(&self, label: Option<&RawLabel>) -> Result<usize> {
        let Some(label) = label else {
            return Err(CliError::Usage("a row has no label".into()));
        };
        match (self, label) {
            (Classes::Named(names), RawLabel::Name(n)) => names.binary_search(n).map_err(|_| {
                CliError::Usage(format!("label {n:?} is not one of the classes {names:?}"))
            }),
            (Classes::Ids { count }, RawLabel::Id(i)) => usize::try_from(*i)
                .ok()
                .filter(|i| i < count)
                .ok_or_else(|| {
                    CliError::Usage(format!("label {i} is not below the {count} classes"))
                }),
            (Classes::Named(_), RawLabel::Id(i)) => Err(CliError::Usage(format!(
                "label {i} is an integer, but the classes are named"
            ))),
            (Classes::Ids { .. }, RawLabel::Name(n)) => Err(CliError::Usage(format!(
                "label {n:?} is a string, but the classes are integers"
            ))),
            (_, RawLabel::Number(x)) => Err(CliError::Usage(format!(
                "label {x} is a number, not a class"
            ))),
        }
    }

    /// `name=id` pairs for the user, or a note that labels are ids.
    pub fn describe(&self) -> String {
        match self {
            Classes::Named(names) => names
                .iter()
                .enumerate()
                .map(|(i, n)| format!("{n}={i}"))
                .collect::<Vec<_>>()
                .join(", "),
            Classes::Ids { count } => format!("integer labels are class ids 0..{count}"),
        }
    }
}

/// How rows become a task's targets.
pub enum Labels<'a> {
    /// Class ids by this rule.
    Classes(&'a Classes),
    /// The numeric labels, one regression output each.
    Values,
    /// None: the texts are their own targets.
    NextTokens,
}

/// Each row's target, in row order.
enum RowTargets {
    Classes(Vec<usize>),
    Values(Vec<f32>),
    NextTokens,
}

/// Rows tokenized once, with their targets.
pub struct Encoded {
    /// One encoding per row.
    pub encodings: Vec<Encoding>,
    targets: RowTargets,
}

impl Encoded {
    /// Tokenizes `rows` with `tok` and turns their labels into targets as `labels` says.
    pub fn new(rows: &[Row], tok: &TextTokenizer, labels: &Labels<'_>) -> Result<Encoded> {
        let encodings = rows
            .iter()
            .map(|r| tok.encode(&r.text))
            .collect::<Result<Vec<_>>>()?;
        let targets = match labels {
            Labels::Classes(classes) => RowTargets::Classes(
                rows.iter()
                    .map(|r| classes.id(r.label.as_ref()))
                    .collect::<Result<Vec<_>>>()?,
            ),
            Labels::Values => RowTargets::Values(
                rows.iter()
                    .map(|r| match r.label {
                        Some(RawLabel::Number(x)) if (x as f32).is_finite() => Ok(x as f32),
                        Some(RawLabel::Number(x)) => Err(CliError::Usage(format!(
                            "label {x} is too large for an f32 target"
                        ))),
                        _ => Err(CliError::Usage(
                            "regression needs a number as each row's label".into(),
                        )),
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Labels::NextTokens => RowTargets::NextTokens,
        };
        Ok(Encoded { encodings, targets })
    }

    /// The rows.
    pub fn len(&self) -> usize {
        self.encodings.len()
    }

    /// The regression targets, if these are regression rows.
    pub fn values(&self) -> Option<&[f32]> {
        match &self.targets {
            RowTargets::Values(v) => Some(v),
            _ => None,
        }
    }

    /// Batches of `batch` rows in `order`, each padded to its longest member.
    pub fn batches(
        &self,
        order: &[usize],
        batch: usize,
        tok: &TextTokenizer,
        feeds: &FeedPlan,
    ) -> Result<Vec<Batch>> {
        order
            .chunks(batch.max(1))
            .map(|members| {
                let group: Vec<&Encoding> = members.iter().map(|&i| &self.encodings[i]).collect();
                let (_, inputs) = pad_and_feed(tok, feeds, &group)?;
                let inputs = inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect();
                Ok(match &self.targets {
                    RowTargets::Classes(c) => {
                        Batch::classification(inputs, members.iter().map(|&i| c[i]).collect())
                    }
                    RowTargets::Values(v) => {
                        Batch::regression(inputs, members.iter().map(|&i| v[i]).collect())
                    }
                    RowTargets::NextTokens => Batch::causal_lm(inputs),
                })
            })
            .collect()
    }
}

/// A deterministic permutation of `0..n` for `epoch` of a run seeded with `seed`.
pub fn shuffled(n: usize, seed: u64, epoch: u32) -> Vec<usize> {
    let mix = seed ^ (u64::from(epoch) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Rng::new(mix).permutation(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rows_and_names_the_bad_line() {
        let ok = "{\"text\": \"a\", \"label\": \"pos\"}\n\n{\"text\": \"b\", \"label\": \"neg\"}\n";
        let rows = parse_jsonl(ok, None, LabelKind::Class).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(parse_jsonl(ok, Some(1), LabelKind::Class).unwrap().len(), 1);
        let bad = "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\"}\n";
        assert_eq!(
            parse_jsonl(bad, None, LabelKind::Class).unwrap_err(),
            "line 2: no `label` field"
        );
        assert!(parse_jsonl("{oops", None, LabelKind::Class)
            .unwrap_err()
            .starts_with("line 1: not valid JSON"));
        assert!(parse_jsonl("{\"text\": \"a\", \"label\": -1}", None, LabelKind::Class).is_err());
    }

    #[test]
    fn regression_labels_are_numbers_and_causal_lm_rows_need_none() {
        let rows = parse_jsonl(
            "{\"text\":\"a\",\"label\":-0.5}\n{\"text\":\"b\",\"label\":3}",
            None,
            LabelKind::Number,
        )
        .unwrap();
        assert_eq!(rows[0].label, Some(RawLabel::Number(-0.5)));
        assert_eq!(rows[1].label, Some(RawLabel::Number(3.0)));
        assert_eq!(
            parse_jsonl(
                "{\"text\":\"a\",\"label\":\"pos\"}",
                None,
                LabelKind::Number
            )
            .unwrap_err(),
            "line 1: label \"pos\" is not a number (regression needs numbers)"
        );
        let texts = parse_jsonl(
            "{\"text\":\"a\"}\n{\"text\":\"b\",\"label\":1}",
            None,
            LabelKind::None,
        )
        .unwrap();
        assert_eq!(texts.len(), 2);
        assert!(texts.iter().all(|r| r.label.is_none()));
        assert!(parse_jsonl("{\"label\":1}", None, LabelKind::None)
            .unwrap_err()
            .contains("no `text` field"));
    }

    #[test]
    fn string_labels_map_in_sorted_order() {
        let rows = parse_jsonl(
            "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":\"b\",\"label\":\"neg\"}",
            None,
            LabelKind::Class,
        )
        .unwrap();
        let c = Classes::from_rows(&rows).unwrap();
        assert_eq!(c, Classes::Named(vec!["neg".into(), "pos".into()]));
        assert_eq!(c.id(rows[0].label.as_ref()).unwrap(), 1);
        assert_eq!(c.describe(), "neg=0, pos=1");
        let ints = parse_jsonl(
            "{\"text\":\"a\",\"label\":2}\n{\"text\":\"b\",\"label\":0}",
            None,
            LabelKind::Class,
        )
        .unwrap();
        assert_eq!(
            Classes::from_rows(&ints).unwrap(),
            Classes::Ids { count: 3 }
        );
        let mixed = parse_jsonl(
            "{\"text\":\"a\",\"label\":2}\n{\"text\":\"b\",\"label\":\"x\"}",
            None,
            LabelKind::Class,
        )
        .unwrap();
        assert!(Classes::from_rows(&mixed).is_err());
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let a = shuffled(50, 7, 0);
        assert_eq!(a, shuffled(50, 7, 0));
        assert_ne!(a, shuffled(50, 7, 1));
        let mut s = a.clone();
        s.sort_unstable();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }
}
