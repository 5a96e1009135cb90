//! NumPy `.npy` files (format versions 1–3, C order, little-endian), for the CLI's inputs and
//! outputs and for reference data in tests.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};
use crate::tensor::{Data, Tensor};

fn bad(msg: impl Into<String>) -> Error {
    Error::Npy(msg.into())
}

/// Parses `.npy` bytes.
pub fn from_bytes(b: &[u8]) -> Result<Tensor> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("not an .npy file (bad magic)"));
    }
    let (hlen, start) = match b[6] {
        1 => (usize::from(u16::from_le_bytes([b[8], b[9]])), 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported .npy version {v}"))),
    };
    let header = b.get(start..start + hlen).ok_or_else(|| bad("truncated header"))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text"))?;
    let field = |key: &str| -> Result<&str> {
        let i = header.find(key).ok_or_else(|| bad(format!("header lacks {key}")))?;
        Ok(header[i + key.len()..].trim_start_matches([' ', ':']))
    };
    let descr = field("'descr'")?;
    let descr = descr.trim_start_matches(['\'', '"']);
    let descr = &descr[..descr.find(['\'', '"']).ok_or_else(|| bad("bad descr"))?];
    if field("'fortran_order'")?.starts_with("True") {
        return Err(bad("Fortran-ordered arrays are not supported"));
    }
    let shape_txt = field("'shape'")?;
    let shape_txt = &shape_txt[1..shape_txt.find(')').ok_or_else(|| bad("bad shape"))?];
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| bad(format!("bad dim `{s}`"))))
        .collect::<Result<_>>()?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("shape overflows"))?;
    let body = &b[start + hlen..];
    let need = |size: usize| -> Result<&[u8]> {
        let len = n.checked_mul(size).ok_or_else(|| bad("size overflows"))?;
        if body.len() != len {
            return Err(bad(format!("expected {len} data bytes, found {}", body.len())));
        }
        Ok(body)
    };
    match descr {
        "<f4" => Tensor::new(&shape, need(4)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        "<f8" => Tensor::new(&shape, need(8)?.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32).collect()),
        "<i8" => Tensor::new(&shape, need(8)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        "<i4" => Tensor::new(&shape, need(4)?.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        "|i1" => Tensor::new(&shape, need(1)?.iter().map(|&v| v as i8).collect()),
        "|u1" => Tensor::new(&shape, need(1)?.to_vec()),
        "|b1" => Tensor::new(&shape, need(1)?.iter().map(|&v| v != 0).collect()),
        other => Err(bad(format!("unsupported dtype `{other}`"))),
    }
}

/// Reads a `.npy` file.
pub fn read(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let b = std::fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    from_bytes(&b)
}

/// Encodes a tensor as `.npy` (version 1) bytes.
pub fn to_bytes(t: &Tensor) -> Vec<u8> {
    let (descr, body): (&str, Vec<u8>) = match t.data() {
        Data::F32(v) => ("<f4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I64(v) => ("<i8", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I32(v) => ("<i4", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Data::I8(v) => ("|i1", v.iter().map(|&x| x as u8).collect()),
        Data::U8(v) => ("|u1", v.to_vec()),
        Data::Bool(v) => ("|b1", v.iter().map(|&x| u8::from(x)).collect()),
    };
    let dims: Vec<String> = t.shape().iter().map(ToString::to_string).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so the data starts on a 64-byte boundary, newline-terminated, as NumPy does.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + body.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

/// Writes a tensor to a `.npy` file (through a temporary file and a rename, so a reader never
/// sees half a file).
pub fn write(path: impl AsRef<Path>, t: &Tensor) -> Result<()> {
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.to_owned(), source };
    let tmp = path.with_extension("npy.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&to_bytes(t)).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        let ts = [
            Tensor::new(&[2, 3], vec![1.5f32, -2., 0., 3., 4., 5.]).unwrap(),
            Tensor::new(&[3], vec![1i64, -2, 1 << 40]).unwrap(),
            Tensor::new(&[1, 2], vec![true, false]).unwrap(),
            Tensor::scalar(7i32),
        ];
        for t in ts {
            let b = to_bytes(&t);
            let r = from_bytes(&b).unwrap();
            assert_eq!(r.shape(), t.shape());
            assert_eq!(r.to_f32_vec(), t.to_f32_vec());
            assert_eq!(r.dtype(), t.dtype());
        }
    }

    #[test]
    fn rejects_truncation_and_bad_magic() {
        let b = to_bytes(&Tensor::new(&[4], vec![1f32; 4]).unwrap());
        assert!(from_bytes(&b[..b.len() - 1]).is_err());
        assert!(from_bytes(b"NOTNUMPY..").is_err());
    }
}
