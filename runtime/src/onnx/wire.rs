//! Protocol-buffer wire format: a bounded, zero-copy reader.
//!
//! ONNX files can be hostile (they arrive from servers and app storage), so every length is
//! checked against the bytes that remain before anything is sliced or allocated.

use crate::error::{Error, Result};

/// Wire types of the protobuf encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireType {
    /// A base-128 varint.
    Varint,
    /// 8 little-endian bytes.
    Fixed64,
    /// A length-prefixed byte run (strings, bytes, sub-messages, packed repeated fields).
    Len,
    /// 4 little-endian bytes.
    Fixed32,
}

/// One decoded field: its number and its raw value.
#[derive(Clone, Copy, Debug)]
pub enum Field<'a> {
    /// A varint value.
    Varint(u64),
    /// A fixed 64-bit value.
    Fixed64(u64),
    /// A length-delimited payload.
    Len(&'a [u8]),
    /// A fixed 32-bit value.
    Fixed32(u32),
}

/// Reads fields one after another from a message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

fn err(msg: impl Into<String>) -> Error {
    Error::Protobuf(msg.into())
}

impl<'a> Reader<'a> {
    /// A reader over one message's bytes.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = *self.buf.get(self.pos).ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            if i == 9 && b > 1 {
                return Err(err("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or_else(|| {
            err(format!("field of {n} bytes runs past the end ({} left)", self.buf.len() - self.pos))
        })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// The next field, or `None` at the end of the message.
    pub fn next_field(&mut self) -> Result<Option<(u32, Field<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| err("field number out of range"))?;
        if number == 0 {
            return Err(err("field number 0"));
        }
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                let b = self.take(8)?;
                Field::Fixed64(u64::from_le_bytes(b.try_into().expect("take(8) returns 8 bytes")))
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| err("length does not fit in memory"))?;
                Field::Len(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32(u32::from_le_bytes(b.try_into().expect("take(4) returns 4 bytes")))
            }
            w => return Err(err(format!("unsupported wire type {w} (field {number})"))),
        };
        Ok(Some((number, field)))
    }
}

impl<'a> Field<'a> {
    /// The value as a signed 64-bit integer (`int64`/`int32` fields).
    pub fn int(self, what: &str) -> Result<i64> {
        match self {
            Field::Varint(v) => Ok(v as i64),
            _ => Err(err(format!("{what}: expected a varint"))),
        }
    }

    /// The payload of a length-delimited field.
    pub fn bytes(self, what: &str) -> Result<&'a [u8]> {
        match self {
            Field::Len(b) => Ok(b),
            _ => Err(err(format!("{what}: expected a length-delimited field"))),
        }
    }

    /// The payload as UTF-8 text.
    pub fn string(self, what: &str) -> Result<String> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| err(format!("{what}: not UTF-8")))
    }

    /// A `float` field.
    pub fn float(self, what: &str) -> Result<f32> {
        match self {
            Field::Fixed32(v) => Ok(f32::from_bits(v)),
            _ => Err(err(format!("{what}: expected a fixed32 float"))),
        }
    }

    /// Appends a repeated varint field's values, packed or not.
    pub fn push_ints(self, out: &mut Vec<i64>, what: &str) -> Result<()> {
        match self {
            Field::Varint(v) => out.push(v as i64),
            Field::Len(b) => {
                let mut r = Reader::new(b);
                while r.pos < b.len() {
                    out.push(r.varint()? as i64);
                }
            }
            _ => return Err(err(format!("{what}: expected varints"))),
        }
        Ok(())
    }

    /// Appends a repeated `float` field's values, packed or not.
    pub fn push_floats(self, out: &mut Vec<f32>, what: &str) -> Result<()> {
        match self {
            Field::Fixed32(v) => out.push(f32::from_bits(v)),
            Field::Len(b) => {
                if b.len() % 4 != 0 {
                    return Err(err(format!("{what}: packed floats not a multiple of 4 bytes")));
                }
                out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            }
            _ => return Err(err(format!("{what}: expected floats"))),
        }
        Ok(())
    }

    /// Appends a repeated `double` field's values, packed or not.
    pub fn push_doubles(self, out: &mut Vec<f64>, what: &str) -> Result<()> {
        match self {
            Field::Fixed64(v) => out.push(f64::from_bits(v)),
            Field::Len(b) => {
                if b.len() % 8 != 0 {
                    return Err(err(format!("{what}: packed doubles not a multiple of 8 bytes")));
                }
                out.extend(b.chunks_exact(8).map(|c| {
                    f64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes"))
                }));
            }
            _ => return Err(err(format!("{what}: expected doubles"))),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_varint_len_and_fixed_fields() {
        // field 1 varint 150; field 2 "hi"; field 3 fixed32 1.0f
        let mut buf = vec![0x08, 0x96, 0x01, 0x12, 0x02, b'h', b'i', 0x1d];
        buf.extend(1.0f32.to_le_bytes());
        let mut r = Reader::new(&buf);
        let (n, f) = r.next_field().unwrap().unwrap();
        assert_eq!((n, f.int("x").unwrap()), (1, 150));
        let (n, f) = r.next_field().unwrap().unwrap();
        assert_eq!((n, f.string("x").unwrap().as_str()), (2, "hi"));
        let (n, f) = r.next_field().unwrap().unwrap();
        assert_eq!((n, f.float("x").unwrap()), (3, 1.0));
        assert!(r.next_field().unwrap().is_none());
    }

    #[test]
    fn rejects_lengths_past_the_end_and_long_varints() {
        assert!(matches!(Reader::new(&[0x12, 0x05, b'a']).next_field(), Err(Error::Protobuf(_))));
        let long = [0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(Reader::new(&long).next_field(), Err(Error::Protobuf(_))));
        assert!(matches!(Reader::new(&[0x0b]).next_field(), Err(Error::Protobuf(_))));
        // u64::MAX length
        let huge = [0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(matches!(Reader::new(&huge).next_field(), Err(Error::Protobuf(_))));
    }
}
