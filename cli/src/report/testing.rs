//! Test helpers of the report: a small XML well-formedness check and sample records.

use kilotune::train::trainer::Evaluation;
use plotters::style::RGBColor;

use super::{EpochRecord, RunConfig};

/// An element of a parsed document: its name, attributes and text (trimmed, without
/// that of its children).
pub(super) type Element = (String, Vec<(String, String)>, String);

/// Checks that `doc` is well-formed XML, as far as our charts use it: one root element,
/// every tag closed in order, attribute values quoted, `&` only in entities and no `<` in
/// text or attributes. Returns the elements in document order.
pub(super) fn parse_xml(doc: &str) -> std::result::Result<Vec<Element>, String> {
    fn entity_ok(s: &str) -> bool {
        s.split('&').skip(1).all(|rest| {
            let name = rest.split(';').next().unwrap_or("");
            rest.contains(';')
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '#')
        })
    }
    let mut elements: Vec<Element> = Vec::new();
    // The open elements, as indices into `elements`.
    let mut open: Vec<usize> = Vec::new();
    let mut roots = 0;
    let mut rest = doc.trim();
    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if !open.is_empty() || !rest.trim().is_empty() {
                return Err(format!("text outside the root: {rest:?}"));
            }
            break;
        };
        let text = &rest[..lt];
        if !entity_ok(text) || open.is_empty() && !text.trim().is_empty() {
            return Err(format!("bad text {text:?}"));
        }
        if let Some(&i) = open.last() {
            elements[i].2.push_str(text.trim());
        }
        rest = &rest[lt..];
        for (start, end) in [("<?", "?>"), ("<!--", "-->"), ("<!", ">")] {
            if rest.starts_with(start) {
                let at = rest.find(end).ok_or("an unclosed declaration")?;
                rest = &rest[at + end.len()..];
            }
        }
        if !rest.starts_with('<') {
            continue;
        }
        let gt = rest.find('>').ok_or("an unclosed tag")?;
        let tag = &rest[1..gt];
        rest = &rest[gt + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match open.pop() {
                Some(i) if elements[i].0 == name.trim() => continue,
                o => return Err(format!("</{name}> closes {:?}", o.map(|i| &elements[i].0))),
            }
        }
        let (tag, closed) = match tag.strip_suffix('/') {
            Some(t) => (t, true),
            None => (tag, false),
        };
        let name_end = tag.find(char::is_whitespace).unwrap_or(tag.len());
        let name = tag[..name_end].to_owned();
        if name.is_empty() || tag.contains('<') {
            return Err(format!("bad tag <{tag}>"));
        }
        let mut attrs = Vec::new();
        let mut a = tag[name_end..].trim_start();
        while !a.is_empty() {
            let eq = a
                .find('=')
                .ok_or(format!("attribute without value in <{tag}>"))?;
            let key = a[..eq].trim().to_owned();
            let quoted = a[eq + 1..].trim_start();
            let q = quoted.chars().next().filter(|&c| c == '"' || c == '\'');
            let q = q.ok_or(format!("unquoted attribute in <{tag}>"))?;
            let close = quoted[1..]
                .find(q)
                .ok_or(format!("unclosed value in <{tag}>"))?;
            let value = &quoted[1..1 + close];
            if !entity_ok(value) {
                return Err(format!("bad value {value:?}"));
            }
            attrs.push((key, value.to_owned()));
            a = quoted[close + 2..].trim_start();
        }
        if open.is_empty() {
            roots += 1;
        }
        if !closed {
            open.push(elements.len());
        }
        elements.push((name, attrs, String::new()));
    }
    match (open.is_empty(), roots) {
        (true, 1) => Ok(elements),
        _ => Err(format!("{roots} root elements, unclosed {open:?}")),
    }
}

fn attr<'a>(e: &'a Element, key: &str) -> Option<&'a str> {
    e.1.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The texts of the `<text>` elements.
pub(super) fn texts_of(elements: &[Element]) -> Vec<&str> {
    elements
        .iter()
        .filter(|e| e.0 == "text")
        .map(|e| e.2.as_str())
        .collect()
}

/// The number of points of each polyline drawn in `color` (`#RRGGBB`), in order.
pub(super) fn polylines(elements: &[Element], color: RGBColor) -> Vec<usize> {
    let hex = format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2);
    elements
        .iter()
        .filter(|e| {
            e.0 == "polyline" && attr(e, "stroke").is_some_and(|s| s.eq_ignore_ascii_case(&hex))
        })
        .map(|e| attr(e, "points").unwrap_or("").split_whitespace().count())
        .collect()
}

pub(super) fn evaluation(loss: f32, accuracy: Option<f32>, perplexity: Option<f32>) -> Evaluation {
    Evaluation {
        loss,
        rows: 10,
        accuracy,
        perplexity,
        tokens: None,
        mse: None,
    }
}

pub(super) fn epoch(train_loss: f64, eval: Option<Evaluation>) -> EpochRecord {
    EpochRecord {
        steps: 4,
        train_loss,
        rows_per_sec: 123.456,
        secs: 0.25,
        eval,
    }
}

pub(super) fn config() -> RunConfig {
    RunConfig {
        model: "models/<a & b>.onnx".into(),
        data: "train.jsonl".into(),
        eval_data: Some("test.jsonl".into()),
        task: "classify",
        method: "LoRA r=8 alpha=16 dropout=0 on query,value".into(),
        lr: 5e-4,
        epochs: 3,
        batch: 16,
        rows: 64,
        steps_per_epoch: 4,
        warmup_steps: 1,
        parameters: 1234,
        seed: 0,
        out: "user.ktd".into(),
        precision: "f32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_xml_check_rejects_what_it_should() {
        assert!(parse_xml("<svg><g></g></svg>").is_ok());
        assert!(parse_xml("<?xml version=\"1.0\"?>\n<svg a=\"1\"><p/></svg>").is_ok());
        for bad in [
            "<svg><g></svg>",
            "<svg></svg><svg></svg>",
            "<svg a=1></svg>",
            "<svg>a & b</svg>",
            "<svg a=\"x<y\"></svg>",
            "<svg>",
        ] {
            assert!(parse_xml(bad).is_err(), "accepted {bad}");
        }
    }
}
