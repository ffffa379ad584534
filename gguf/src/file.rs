//! [`GgufFile`]: the header, metadata and tensor infos of one file, checked as a whole when it is
//! opened, and access to its tensors' bytes.

use std::collections::HashMap;
use std::path::Path;

use crate::cursor::Cursor;
use crate::dequant::{self, Block};
use crate::error::{Error, Result};
use crate::metadata::{self, Metadata};
use crate::tensor::{GgmlType, RawTensorInfo, TensorInfo};

/// The four bytes every GGUF file starts with.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// The alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file (version 2 or 3).
///
/// Opening reads and checks everything but the tensor data: the header, every metadata entry,
/// every tensor info, and that each tensor's bytes lie inside the file at an aligned offset. The
/// data stays in the memory map until a tensor is asked for.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and checks the file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |reason| Error::Io { path: path.to_path_buf(), reason };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::other("it is a directory")));
        }
        // SAFETY: the map is read-only and private to this process. A file truncated by another
        // process while mapped would fault on access; model files are written once and not
        // changed while a reader has them open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        log::debug!("mapped {} ({} bytes)", path.display(), map.len());
        GgufFile::parse(Bytes::Mapped(map))
    }

    /// Checks a file already in memory (tests, fuzzing, files received over a wire).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::parse(Bytes::Owned(bytes))
    }

    fn parse(bytes: Bytes) -> Result<GgufFile> {
        let data = bytes.as_slice();
        let len = data.len() as u64;
        let mut c = Cursor::new(data);
        let magic = data.get(..4).unwrap_or(data);
        if magic != &MAGIC[..magic.len()] {
            return Err(Error::BadMagic { found: magic.to_vec() });
        }
        c.take(4, &|| "the magic \"GGUF\"".into())?;
        let version = c.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { version });
        }
        let n_tensors = c.u64(&|| "the tensor count".into())?;
        let n_kv = c.u64(&|| "the metadata count".into())?;
        let metadata = Metadata::read(&mut c, n_kv)?;

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(_) => u64::from(metadata.get_u32("general.alignment")?),
        };
        if !alignment.is_power_of_two() {
            return Err(Error::BadAlignment { alignment });
        }

        let capacity = metadata::reserve(n_tensors, c.remaining(), RawTensorInfo::MIN_BYTES);
        let mut raw = Vec::with_capacity(capacity);
        let mut index = HashMap::with_capacity(capacity);
        for i in 0..n_tensors {
            let info = RawTensorInfo::read(&mut c, i)?;
            if index.insert(info.name().to_string(), raw.len()).is_some() {
                return Err(Error::DuplicateTensor { name: info.name().to_string() });
            }
            raw.push(info);
        }
        let data_offset =
            (c.position() as u64).checked_next_multiple_of(alignment).ok_or_else(|| Error::Overflow {
                what: "the data section's start".into(),
                detail: format!("aligned to {alignment}"),
            })?;
        let tensors =
            raw.into_iter().map(|t| t.place(data_offset, alignment, len)).collect::<Result<Vec<_>>>()?;
        log::debug!(
            "GGUF v{version}: {} metadata entries, {} tensors, data at {data_offset}",
            metadata.len(),
            tensors.len()
        );
        Ok(GgufFile { bytes, version, alignment, data_offset, metadata, tensors, index })
    }

    /// The GGUF version: 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The alignment of the data section and of every tensor's offset.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// `general.architecture` (`"llama"`, `"qwen2"`, ...).
    pub fn architecture(&self) -> Result<&str> {
        self.metadata.get_str("general.architecture")
    }

    /// Every tensor, in the order the file lists them.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, or [`Error::MissingTensor`].
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })
    }

    /// The raw bytes of `info`, which must come from this file's [`GgufFile::tensors`].
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let own = self.tensor(info.name())?;
        if own != info {
            return Err(Error::MissingTensor { name: info.name().to_string() });
        }
        let len = self.len();
        let range = own.byte_range();
        self.bytes.as_slice().get(range.clone()).ok_or(Error::OutOfBounds {
            name: own.name().to_string(),
            start: range.start as u64,
            end: range.end as u64,
            len,
        })
    }

    /// The tensor's values as f32, ne0 fastest (row-major for the shape [`TensorInfo::shape`]).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let ty = info.ggml_type();
        if !ty.can_dequantize() {
            return Err(Error::Unsupported { name: info.name().to_string(), ty });
        }
        let bytes = self.tensor_bytes(info)?;
        let mut out = Vec::new();
        // n_elements is bounded by the file: at most 32/17 values per byte of the tensor's data.
        let n = usize::try_from(info.n_elements()).ok().filter(|&n| out.try_reserve_exact(n).is_ok());
        if n.is_none() {
            return Err(Error::Overflow {
                what: format!("tensor {:?}", info.name()),
                detail: format!("{} f32 values do not fit in memory", info.n_elements()),
            });
        }
        if !dequant::dequantize(ty, bytes, &mut out) {
            return Err(Error::Unsupported { name: info.name().to_string(), ty });
        }
        Ok(out)
    }

    /// The tensor's raw blocks, for code that keeps ggml's codes (e.g. Q4_0 or Q8_0) as they are.
    pub fn blocks<B: Block>(&self, info: &TensorInfo) -> Result<impl Iterator<Item = B> + '_> {
        if info.ggml_type() != B::TYPE {
            return Err(Error::WrongTensorType {
                name: info.name().to_string(),
                expected: B::TYPE,
                found: info.ggml_type(),
            });
        }
        Ok(dequant::blocks::<B>(self.tensor_bytes(info)?))
    }

    /// Every tensor's bytes, summed by type, largest first.
    pub fn bytes_by_type(&self) -> Vec<(GgmlType, u64)> {
        let mut by: HashMap<GgmlType, u64> = HashMap::new();
        for t in &self.tensors {
            *by.entry(t.ggml_type()).or_default() += t.n_bytes() as u64;
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}
