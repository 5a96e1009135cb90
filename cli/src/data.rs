//! Labelled text data for `train` and `eval`: JSON lines `{"text": ..., "label": ...}`, the
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

/// A row's label as the file gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawLabel {
    /// A class name.
    Name(String),
    /// A class id.
    Id(u64),
}

/// One row of a data file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The text to classify.
    pub text: String,
    /// Its label.
    pub label: RawLabel,
}

/// Reads the JSON-lines file at `path`, keeping the first `limit` rows when given. Blank lines
/// are skipped; anything else that is not `{"text": string, "label": string | integer}` is an
/// error naming the line.
pub fn read_jsonl(path: &Path, limit: Option<usize>) -> Result<Vec<Row>> {
    let content = std::fs::read_to_string(path).map_err(|source| CliError::Io {
        action: "cannot read",
        path: path.to_owned(),
        source,
    })?;
    let rows = parse_jsonl(&content, limit)
        .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
    if rows.is_empty() {
        return Err(CliError::Usage(format!("{} holds no rows", path.display())));
    }
    Ok(rows)
}

/// [`read_jsonl`] on text; the error is `line N: reason`.
pub fn parse_jsonl(content: &str, limit: Option<usize>) -> std::result::Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let row = parse_row(line).map_err(|reason| format!("line {}: {reason}", i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

fn parse_row(line: &str) -> std::result::Result<Row, String> {
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
    let label = match obj.get("label") {
        Some(serde_json::Value::String(s)) => RawLabel::Name(s.clone()),
        Some(serde_json::Value::Number(n)) => RawLabel::Id(
            n.as_u64()
                .ok_or_else(|| format!("label {n} is not a non-negative integer"))?,
        ),
        Some(other) => return Err(format!("label {other} is neither a string nor an integer")),
        None => return Err("no `label` field".into()),
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
                RawLabel::Name(n) => Some(n.as_str()),
                RawLabel::Id(_) => None,
            })
            .collect();
        let max_id = rows
            .iter()
            .filter_map(|r| match r.label {
                RawLabel::Id(i) => Some(i),
                RawLabel::Name(_) => None,
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
    pub fn id(&self, label: &RawLabel) -> Result<usize> {
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

/// Rows tokenized once, with their class ids.
pub struct Encoded {
    /// One encoding per row.
    pub encodings: Vec<Encoding>,
    /// One class id per row.
    pub labels: Vec<usize>,
}

impl Encoded {
    /// Tokenizes `rows` with `tok` and maps their labels with `classes`.
    pub fn new(rows: &[Row], tok: &TextTokenizer, classes: &Classes) -> Result<Encoded> {
        let encodings = rows
            .iter()
            .map(|r| tok.encode(&r.text))
            .collect::<Result<Vec<_>>>()?;
        let labels = rows
            .iter()
            .map(|r| classes.id(&r.label))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoded { encodings, labels })
    }

    /// The rows.
    pub fn len(&self) -> usize {
        self.labels.len()
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
                Ok(Batch {
                    inputs: inputs.into_iter().map(|(n, t)| (n.to_owned(), t)).collect(),
                    labels: members.iter().map(|&i| self.labels[i]).collect(),
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
        let rows = parse_jsonl(ok, None).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(parse_jsonl(ok, Some(1)).unwrap().len(), 1);
        let bad = "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\"}\n";
        assert_eq!(
            parse_jsonl(bad, None).unwrap_err(),
            "line 2: no `label` field"
        );
        assert!(parse_jsonl("{oops", None)
            .unwrap_err()
            .starts_with("line 1: not valid JSON"));
        assert!(parse_jsonl("{\"text\": \"a\", \"label\": -1}", None).is_err());
    }

    #[test]
    fn string_labels_map_in_sorted_order() {
        let rows = parse_jsonl(
            "{\"text\":\"a\",\"label\":\"pos\"}\n{\"text\":\"b\",\"label\":\"neg\"}",
            None,
        )
        .unwrap();
        let c = Classes::from_rows(&rows).unwrap();
        assert_eq!(c, Classes::Named(vec!["neg".into(), "pos".into()]));
        assert_eq!(c.id(&rows[0].label).unwrap(), 1);
        assert_eq!(c.describe(), "neg=0, pos=1");
        let ints = parse_jsonl(
            "{\"text\":\"a\",\"label\":2}\n{\"text\":\"b\",\"label\":0}",
            None,
        )
        .unwrap();
        assert_eq!(
            Classes::from_rows(&ints).unwrap(),
            Classes::Ids { count: 3 }
        );
        let mixed = parse_jsonl(
            "{\"text\":\"a\",\"label\":2}\n{\"text\":\"b\",\"label\":\"x\"}",
            None,
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
