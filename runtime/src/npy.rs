//! NumPy `.npy` / `.npz` files to and from [`Tensor`]s (feature `npy`).
//!
//! Used by the CLI (`ferrite infer --input x=x.npy --output out.npz`), the tests and golden
//! files. Headers are checked against the file's size before anything is allocated, and
//! `.npz` files are written atomically (temp file + rename). Not part of firmware builds.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use npyz::{NpyFile, WriterBuilder};

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor, TensorData, element_count};

fn bad(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{}: {why}", path.display()))
}

fn dtype_of(path: &Path, descr: &str) -> Result<DType> {
    Ok(match descr {
        "<f4" => DType::F32,
        "<f2" => DType::F16,
        "<i8" => DType::I64,
        "<i4" => DType::I32,
        "|u1" | "<u1" => DType::U8,
        "|i1" | "<i1" => DType::I8,
        other => {
            return Err(bad(path, format!("unsupported .npy dtype `{other}` (f32, f16, i64, i32, u8, i8)")));
        }
    })
}

fn read_array<R: Read>(path: &Path, npy: NpyFile<R>, available: u64) -> Result<Tensor> {
    if npy.order() != npyz::Order::C {
        return Err(bad(path, "Fortran-ordered arrays are not supported; save with np.ascontiguousarray"));
    }
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        _ => return Err(bad(path, "structured or object arrays are not supported")),
    };
    let dtype = dtype_of(path, &descr)?;
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(path, "dimension too large")))
        .collect::<Result<_>>()?;
    let count = element_count(&shape)?;
    // A header may claim any shape: refuse before allocating when the bytes cannot be there.
    let needed = (count as u64).saturating_mul(dtype.size() as u64);
    if needed > available {
        return Err(bad(
            path,
            format!("header declares {needed} bytes of data but the file holds at most {available}"),
        ));
    }
    let io = |e: std::io::Error| bad(path, e);
    let data = match dtype {
        DType::F32 => TensorData::F32(npy.into_vec().map_err(io)?),
        DType::F16 => TensorData::F16(npy.into_vec().map_err(io)?),
        DType::I64 => TensorData::I64(npy.into_vec().map_err(io)?),
        DType::I32 => TensorData::I32(npy.into_vec().map_err(io)?),
        DType::U8 => TensorData::U8(npy.into_vec().map_err(io)?),
        DType::I8 => TensorData::I8(npy.into_vec().map_err(io)?),
    };
    Tensor::from_data(shape, data)
}

/// Refuses a header whose declared length is past the end of the file: npyz allocates the
/// header's length before reading it (a version 2 header may claim 4 GiB in four bytes).
fn check_header_length(path: &Path, file: &File, size: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut prefix = [0u8; 12];
    let mut reader = file;
    let n = reader.read(&mut prefix).map_err(|e| Error::io(path, e))?;
    if n < 10 || &prefix[..6] != b"\x93NUMPY" {
        return Ok(()); // npyz reports a bad magic number itself
    }
    let (start, len) = match prefix[6] {
        1 => (10u64, u64::from(u16::from_le_bytes([prefix[8], prefix[9]]))),
        _ if n == 12 => (12, u64::from(u32::from_le_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]))),
        _ => return Err(bad(path, "truncated .npy header")),
    };
    if start + len > size {
        return Err(bad(path, format!("header of {len} bytes declared, the file holds {size}")));
    }
    // npyz's header parser takes exponential time on nested brackets (found by the bad-input
    // corpus: 64 bytes of `{` hang it): a real header is one dict with one shape tuple.
    let mut header = vec![0u8; len.min(1 << 16) as usize];
    let mut reader = file;
    reader.seek(SeekFrom::Start(start)).map_err(|e| Error::io(path, e))?;
    reader.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    reader.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let count = |c: u8| header.iter().filter(|&&b| b == c).count();
    if count(b'{') != 1 || count(b'}') != 1 || count(b'(') > 1 || count(b'[') > 1 {
        return Err(bad(path, "not a .npy header (one dict with one shape tuple expected)"));
    }
    Ok(())
}

/// Reads one `.npy` file.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    check_header_length(path, &file, size)?;
    // npyz multiplies a header's dims unchecked (found by the bad-input corpus): its panics are
    // a malformed file.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let npy =
            NpyFile::new(BufReader::new(file)).map_err(|e| bad(path, format!("not a .npy file ({e})")))?;
        read_array(path, npy, size)
    }))
    .unwrap_or_else(|_| Err(bad(path, "malformed .npy header")))
}

/// Reads every array of a `.npz` file, in archive order.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<(String, Tensor)>> {
    let path = path.as_ref();
    let mut archive =
        npyz::npz::NpzArchive::open(path).map_err(|e| bad(path, format!("not a .npz file ({e})")))?;
    // array_names() comes from a hash map; the zip's own index keeps the writer's order.
    let mut names = Vec::new();
    for i in 0..archive.zip_archive().len() {
        let entry = archive.zip_archive().by_index(i).map_err(|e| bad(path, e))?;
        if let Some(name) = npyz::npz::array_name_from_file_name(entry.name()) {
            names.push(name.to_owned());
        }
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let size = archive
            .zip_archive()
            .by_name(&npyz::npz::file_name_from_array_name(&name))
            .map_err(|e| bad(path, e))?
            .size();
        let npy = archive
            .by_name(&name)
            .map_err(|e| bad(path, e))?
            .ok_or_else(|| bad(path, format!("array `{name}` vanished")))?;
        out.push((name.clone(), read_array(path, npy, size)?));
    }
    Ok(out)
}

fn write_entry<W: std::io::Write + std::io::Seek>(
    npz: &mut npyz::npz::NpzWriter<W>,
    name: &str,
    t: &Tensor,
) -> std::io::Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    macro_rules! put {
        ($v:expr, $ty:ty) => {{
            let mut w =
                npz.array::<$ty>(name, Default::default())?.default_dtype().shape(&shape).begin_nd()?;
            w.extend($v.iter().copied())?;
            w.finish()
        }};
    }
    match t.data() {
        TensorData::F32(v) => put!(v, f32),
        TensorData::F16(v) => put!(v, half::f16),
        TensorData::I64(v) => put!(v, i64),
        TensorData::I32(v) => put!(v, i32),
        TensorData::U8(v) => put!(v, u8),
        TensorData::I8(v) => put!(v, i8),
    }
}

/// Writes named tensors as an uncompressed `.npz`, atomically: a reader sees the old file or
/// the complete new one, never a partial write.
pub fn write_npz<'a>(
    path: impl AsRef<Path>,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<()> {
    let path = path.as_ref();
    let tmp = path.with_extension("npz.tmp");
    let result = (|| -> std::io::Result<()> {
        let mut npz = npyz::npz::NpzWriter::new(BufWriter::new(File::create(&tmp)?));
        for (name, t) in tensors {
            write_entry(&mut npz, name, t)?;
        }
        let mut inner = npz.zip_writer().finish()?;
        std::io::Write::flush(&mut inner)?;
        inner.get_ref().sync_all()?;
        drop(inner);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_round_trip_keeps_names_dtypes_and_values() {
        let dir = std::env::temp_dir().join(format!("ferrite-npz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.npz");
        let a = Tensor::new(vec![2, 2], vec![1.5f32, -2.0, 3.25, 0.0]).unwrap();
        let b = Tensor::new(vec![3], vec![7i64, -1, 1 << 40]).unwrap();
        write_npz(&path, [("a", &a), ("b", &b)]).unwrap();
        let back = read_npz(&path).unwrap();
        assert_eq!(back, vec![("a".to_string(), a), ("b".to_string(), b)]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
