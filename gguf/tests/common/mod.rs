//! Builds GGUF files byte by byte, so tests can write what no well-behaved writer would.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A GGUF string: u64 length, then the bytes.
pub fn string(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// One metadata entry: key, value type code, value bytes.
pub fn kv(key: &[u8], ty: u32, value: &[u8]) -> Vec<u8> {
    let mut out = string(key);
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(value);
    out
}

pub fn kv_u32(key: &str, v: u32) -> Vec<u8> {
    kv(key.as_bytes(), 4, &v.to_le_bytes())
}

/// One tensor info: name, dims (ne0 first), ggml type code, data offset.
pub fn info(name: &[u8], dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut out = string(name);
    out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out
}

/// A version-3 file: header, `kvs`, `infos`, zero padding to `align`, then `data`.
pub fn file(kvs: &[Vec<u8>], infos: &[Vec<u8>], align: usize, data: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(infos.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for kv in kvs {
        out.extend_from_slice(kv);
    }
    for i in infos {
        out.extend_from_slice(i);
    }
    while !out.len().is_multiple_of(align) {
        out.push(0);
    }
    out.extend_from_slice(data);
    out
}

/// A valid file with one F32 tensor `t` of `n` values (all 1.0) and one u32 metadata entry.
pub fn one_f32(n: u64) -> Vec<u8> {
    let data: Vec<u8> = (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect();
    file(&[kv_u32("test.n", 1)], &[info(b"t", &[n], 0, 0)], 32, &data)
}
