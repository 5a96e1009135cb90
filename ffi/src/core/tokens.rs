//! Token arrays as the bindings pass them (row-major `[rows, seq_len]`), turned into the named
//! inputs the base declares.

use kilotune::{Base, Tensor};

use crate::status::{Failure, Status};

/// One batch of tokenized text as plain arrays, `rows × seq_len` each, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Tokens<'a> {
    /// Rows (sequences) in the batch.
    pub rows: usize,
    /// Tokens per row, padding included.
    pub seq_len: usize,
    /// Token ids.
    pub input_ids: &'a [i64],
    /// 1 for a real token, 0 for padding.
    pub attention_mask: &'a [i64],
    /// Segment ids (BERT); `None` gives zeros to a model that declares them.
    pub token_type_ids: Option<&'a [i64]>,
}

impl Tokens<'_> {
    /// The element count every array must have.
    pub fn len(&self) -> Result<usize, Failure> {
        self.rows.checked_mul(self.seq_len).ok_or_else(|| Failure::invalid("rows × seq_len", "overflows"))
    }

    /// Whether the batch has no token at all.
    pub fn is_empty(&self) -> bool {
        self.rows == 0 || self.seq_len == 0
    }

    /// The inputs `base` declares, filled from these arrays. A declared input the bindings
    /// cannot fill (none other than the three above today) is an input error naming it.
    pub fn inputs(&self, base: &Base) -> Result<Vec<(String, Tensor)>, Failure> {
        let n = self.len()?;
        if self.is_empty() {
            return Err(Failure::new(Status::Input, "the batch is empty (rows or seq_len is 0)"));
        }
        let check = |name: &str, got: usize| {
            if got == n {
                Ok(())
            } else {
                Err(Failure::new(Status::Input, format!("`{name}` has {got} values, rows × seq_len is {n}")))
            }
        };
        check("input_ids", self.input_ids.len())?;
        check("attention_mask", self.attention_mask.len())?;
        if let Some(t) = self.token_type_ids {
            check("token_type_ids", t.len())?;
        }
        let shape = [self.rows, self.seq_len];
        let mut out = Vec::new();
        for name in base.input_names() {
            let data = match name {
                "input_ids" => self.input_ids.to_vec(),
                "attention_mask" => self.attention_mask.to_vec(),
                "token_type_ids" => self.token_type_ids.map_or_else(|| vec![0; n], <[i64]>::to_vec),
                other => {
                    return Err(Failure::new(
                        Status::Input,
                        format!("the model declares input `{other}`, which the bindings cannot fill (they give input_ids, attention_mask, token_type_ids)"),
                    ))
                }
            };
            out.push((name.to_owned(), Tensor::new(&shape, data)?));
        }
        Ok(out)
    }
}
