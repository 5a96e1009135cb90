//! External tensor data: resolved only inside the model's own folder.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use super::proto::TensorProto;
use crate::error::{Error, Result};

/// Reads the bytes an external-data tensor points at.
///
/// `dir` is the folder of the model file; `None` (a model loaded from bytes) refuses every
/// external reference. The location must be relative, without `..`, and — after symlinks are
/// resolved — still inside `dir`; it must name a regular file with a single link (on Unix, where
/// the link count is known), so a model cannot read arbitrary files of the device through a
/// hard link either.
pub fn read_external(t: &TensorProto, dir: Option<&Path>) -> Result<Vec<u8>> {
    let get = |k: &str| t.external_data.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let location = get("location").unwrap_or("");
    let fail = |reason: &str| Error::ExternalData {
        tensor: t.name.clone(),
        location: location.to_owned(),
        reason: reason.to_owned(),
    };
    let dir = dir.ok_or_else(|| fail("a model loaded from bytes cannot use external data"))?;
    if location.is_empty() {
        return Err(fail("no location given"));
    }
    let rel = Path::new(location);
    if rel.is_absolute() || location.starts_with('/') || location.starts_with('\\') {
        return Err(fail("absolute paths are refused"));
    }
    if rel.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(fail("`..` and prefixes are refused"));
    }
    let root = dir.canonicalize().map_err(|e| fail(&format!("model folder: {e}")))?;
    let path = root.join(rel).canonicalize().map_err(|e| fail(&format!("cannot open: {e}")))?;
    if !path.starts_with(&root) {
        return Err(fail("resolves outside the model's folder"));
    }
    let parse = |k: &str| -> Result<Option<u64>> {
        get(k).map(|v| v.parse::<u64>().map_err(|_| fail(&format!("bad {k} `{v}`")))).transpose()
    };
    let offset = parse("offset")?.unwrap_or(0);
    let mut f = std::fs::File::open(&path).map_err(|e| fail(&format!("cannot open: {e}")))?;
    let meta = f.metadata().map_err(|e| fail(&e.to_string()))?;
    if !meta.is_file() {
        // A FIFO or a device would block or never end.
        return Err(fail("not a regular file"));
    }
    // A hard link has no "target" to resolve: the same file may also be reachable from
    // anywhere else on the volume, e.g. an app's private data linked into a downloaded
    // model's folder. Where the platform tells the link count, a file with more than one
    // link is refused; a model's own data never needs a second name.
    #[cfg(unix)]
    if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
        return Err(fail("the file has other hard links, which may lie outside the model's folder"));
    }
    let file_len = meta.len();
    let length = match parse("length")? {
        Some(l) => l,
        None => file_len.checked_sub(offset).ok_or_else(|| fail("offset past the end of the file"))?,
    };
    if offset.checked_add(length).is_none_or(|end| end > file_len) {
        return Err(fail("offset + length past the end of the file"));
    }
    let length = usize::try_from(length).map_err(|_| fail("length does not fit in memory"))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| fail(&e.to_string()))?;
    let mut buf = vec![0u8; length];
    f.read_exact(&mut buf).map_err(|e| fail(&e.to_string()))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(location: &str) -> TensorProto {
        TensorProto {
            name: "w".into(),
            external_data: vec![("location".into(), location.into())],
            data_location: 1,
            ..Default::default()
        }
    }

    #[test]
    fn refuses_paths_that_leave_the_model_folder() {
        let root = std::env::temp_dir().join(format!("kt-ext-{}", std::process::id()));
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(root.join("secret.bin"), [1u8; 8]).unwrap();
        std::fs::write(dir.join("ok.bin"), [7u8; 8]).unwrap();
        assert_eq!(read_external(&tensor("ok.bin"), Some(&dir)).unwrap(), vec![7u8; 8]);
        for bad in ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", ""] {
            let e = read_external(&tensor(bad), Some(&dir)).unwrap_err();
            assert!(matches!(e, Error::ExternalData { .. }), "{bad}: {e}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.join("secret.bin"), dir.join("link.bin")).unwrap();
            let e = read_external(&tensor("link.bin"), Some(&dir)).unwrap_err();
            assert!(e.to_string().contains("outside"), "{e}");
        }
        assert!(read_external(&tensor("ok.bin"), None).is_err());
        let mut t = tensor("ok.bin");
        t.external_data.push(("offset".into(), "4".into()));
        t.external_data.push(("length".into(), "8".into()));
        assert!(read_external(&t, Some(&dir)).unwrap_err().to_string().contains("past the end"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
