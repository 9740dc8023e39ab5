//! NumPy `.npy` reader and writer. The header is parsed and checked against the configured
//! limits and the bytes actually present before any feature memory is allocated.

use super::{Features, Limits, Problem};
use std::io::{Read, Write};

const MAGIC: &[u8; 6] = b"\x93NUMPY";
/// NumPy itself never writes headers this long; a larger claim is a corrupt or hostile file.
const MAX_HEADER_LEN: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    F16,
    F32,
    F64,
}

impl Dtype {
    fn size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

#[derive(Debug, PartialEq)]
struct Header {
    dtype: Dtype,
    big_endian: bool,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Reads one array. `available` is the number of bytes the source holds (file or zip entry
/// size), so a header that promises more data than exists is refused before allocating.
pub fn read(mut source: impl Read, available: u64, limits: &Limits) -> Result<Features, Problem> {
    let (header, header_bytes) = read_header(&mut source)?;
    let (frames, dim) = squeeze_to_matrix(&header.shape)?;
    limits.check(frames, dim, header.dtype.size())?;
    let payload = (frames * dim * header.dtype.size()) as u64;
    let present = available.saturating_sub(header_bytes as u64);
    if present < payload {
        return Err(Problem::Truncated {
            expected: payload,
            found: present,
        });
    }
    // `available` is what a file system or a zip directory claims, so it only refuses early;
    // the bytes are read as they come and a source that ends short is truncated, whatever it
    // claimed. An allocation that fails is an error, never an abort.
    let mut raw = Vec::new();
    raw.try_reserve_exact(payload as usize)
        .map_err(|_| Problem::OutOfMemory { bytes: payload })?;
    source.take(payload).read_to_end(&mut raw)?;
    if (raw.len() as u64) < payload {
        return Err(Problem::Truncated {
            expected: payload,
            found: raw.len() as u64,
        });
    }
    let values = decode(&raw, header.dtype, header.big_endian);
    let data = if header.fortran_order && frames > 1 && dim > 1 {
        transpose(&values, dim, frames)
    } else {
        values
    };
    Ok(Features { frames, dim, data })
}

fn read_header(source: &mut impl Read) -> Result<(Header, usize), Problem> {
    let mut preamble = [0u8; 8];
    read_prefix(source, &mut preamble)?;
    if &preamble[..6] != MAGIC {
        return Err(Problem::BadMagic);
    }
    let (len_bytes, header_len) = match preamble[6] {
        1 => {
            let mut len = [0u8; 2];
            read_prefix(source, &mut len)?;
            (2, u16::from_le_bytes(len) as usize)
        }
        2 | 3 => {
            let mut len = [0u8; 4];
            read_prefix(source, &mut len)?;
            (4, u32::from_le_bytes(len) as usize)
        }
        v => {
            return Err(Problem::BadHeader(format!(
                "unknown .npy format version {v}"
            )))
        }
    };
    if header_len > MAX_HEADER_LEN {
        return Err(Problem::BadHeader(format!(
            "header length {header_len} exceeds {MAX_HEADER_LEN} bytes"
        )));
    }
    let mut text = vec![0u8; header_len];
    read_prefix(source, &mut text)?;
    let text =
        String::from_utf8(text).map_err(|_| Problem::BadHeader("header is not text".into()))?;
    Ok((parse_header(&text)?, 8 + len_bytes + header_len))
}

fn read_prefix(source: &mut impl Read, buf: &mut [u8]) -> Result<(), Problem> {
    source.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Problem::Truncated {
            expected: buf.len() as u64,
            found: 0,
        },
        _ => Problem::Io(e),
    })
}

/// Parses the Python dict literal `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }`.
fn parse_header(text: &str) -> Result<Header, Problem> {
    let bad = |what: &str| Problem::BadHeader(format!("{what} in header {:?}", text.trim()));
    let value_after = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'"))?;
        let rest = &text[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = value_after("descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| bad("no 'descr'"))?;
    let (order, kind) = descr.split_at(descr.len().min(1));
    let big_endian = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return Err(Problem::UnsupportedDtype(descr.to_string())),
    };
    let dtype = match kind {
        "f2" | "e" => Dtype::F16,
        "f4" => Dtype::F32,
        "f8" => Dtype::F64,
        _ => return Err(Problem::UnsupportedDtype(descr.to_string())),
    };
    let fortran_order = match value_after("fortran_order") {
        Some(v) if v.starts_with("True") => true,
        Some(v) if v.starts_with("False") => false,
        _ => return Err(bad("no 'fortran_order'")),
    };
    let shape_text = value_after("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| bad("no 'shape'"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("unreadable 'shape'"))?;
    Ok(Header {
        dtype,
        big_endian,
        fortran_order,
        shape,
    })
}

/// Drops length-1 axes (as PSVL's `np.load().squeeze()`) until the array is a matrix.
pub(super) fn squeeze_to_matrix(shape: &[usize]) -> Result<(usize, usize), Problem> {
    let mut kept: Vec<usize> = shape.to_vec();
    while kept.len() > 2 {
        match kept.iter().position(|&n| n == 1) {
            Some(i) => {
                kept.remove(i);
            }
            None => break,
        }
    }
    match kept[..] {
        [frames, dim] => Ok((frames, dim)),
        _ => Err(Problem::Rank {
            shape: shape.to_vec(),
        }),
    }
}

fn decode(raw: &[u8], dtype: Dtype, big_endian: bool) -> Vec<f32> {
    match (dtype, big_endian) {
        (Dtype::F32, false) => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        (Dtype::F32, true) => raw
            .chunks_exact(4)
            .map(|b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        (Dtype::F16, big) => raw
            .chunks_exact(2)
            .map(|b| {
                let bits = if big {
                    u16::from_be_bytes([b[0], b[1]])
                } else {
                    u16::from_le_bytes([b[0], b[1]])
                };
                half::f16::from_bits(bits).to_f32()
            })
            .collect(),
        (Dtype::F64, big) => raw
            .chunks_exact(8)
            .map(|b| {
                let bytes = [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
                (if big {
                    f64::from_be_bytes(bytes)
                } else {
                    f64::from_le_bytes(bytes)
                }) as f32
            })
            .collect(),
    }
}

/// Column-major `rows × cols` (stored as `cols` runs of `rows`) to row-major.
fn transpose(values: &[f32], cols: usize, rows: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for c in 0..cols {
        for r in 0..rows {
            out[r * cols + c] = values[c * rows + r];
        }
    }
    out
}

/// Writes a C-order float32 `.npy` (format 1.0), padded so the data starts 64-byte aligned.
pub fn write(mut sink: impl Write, features: &Features) -> std::io::Result<()> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        features.frames, features.dim
    );
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    let padding = (64 - unpadded % 64) % 64;
    let header = format!("{dict}{}\n", " ".repeat(padding));
    sink.write_all(MAGIC)?;
    sink.write_all(&[1, 0])?;
    sink.write_all(&(header.len() as u16).to_le_bytes())?;
    sink.write_all(header.as_bytes())?;
    let mut bytes = Vec::with_capacity(features.data.len() * 4);
    for v in &features.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    sink.write_all(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_frames: 1000,
            max_dim: 1000,
            max_bytes: u64::MAX,
        }
    }

    fn npy_bytes(descr: &str, fortran: bool, shape: &str, payload: &[u8]) -> Vec<u8> {
        let dict = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}\n",
            if fortran { "True" } else { "False" }
        );
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn read_bytes(bytes: &[u8]) -> Result<Features, Problem> {
        read(bytes, bytes.len() as u64, &limits())
    }

    #[test]
    fn round_trips_what_it_writes() {
        let f = Features {
            frames: 3,
            dim: 2,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5],
        };
        let mut bytes = Vec::new();
        write(&mut bytes, &f).unwrap();
        assert_eq!((bytes.len() - 6 * 4) % 64, 0);
        assert_eq!(read_bytes(&bytes).unwrap(), f);
    }

    #[test]
    fn reads_every_float_width_both_orders_and_squeezes() {
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let f64_le: Vec<u8> = values
            .iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .collect();
        let f16_le: Vec<u8> = values
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let f32_be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        for bytes in [
            npy_bytes("<f8", false, "(1, 2, 3)", &f64_le),
            npy_bytes("<f2", false, "(2, 3)", &f16_le),
            npy_bytes(">f4", false, "(2, 1, 3)", &f32_be),
        ] {
            let f = read_bytes(&bytes).unwrap();
            assert_eq!((f.frames, f.dim), (2, 3));
            assert_eq!(f.data, values);
        }
        // Fortran order stores columns: element (t, d) at d * T + t.
        let fortran: Vec<u8> = [1.0f32, 4.0, 2.0, 5.0, 3.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f = read_bytes(&npy_bytes("<f4", true, "(2, 3)", &fortran)).unwrap();
        assert_eq!(f.data, values);
    }

    #[test]
    fn refuses_bad_files_with_the_reason() {
        let payload: Vec<u8> = [1.0f32; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"PK\x03\x04 not numpy".to_vec(), "not a .npy"),
            (
                npy_bytes("<f4", false, "(2, 3)", &payload[..10]),
                "truncated",
            ),
            (
                npy_bytes("<i8", false, "(2, 3)", &payload),
                "unsupported dtype",
            ),
            (npy_bytes("<f4", false, "(6,)", &payload), "rank"),
            (npy_bytes("<f4", false, "(2, 3, 4)", &payload), "rank"),
            (
                npy_bytes("<f4", false, "(4000000000, 4000000000)", &payload),
                "exceeds",
            ),
            (MAGIC[..4].to_vec(), "truncated"),
        ];
        for (bytes, expected) in cases {
            let err = read_bytes(&bytes).unwrap_err().to_string();
            assert!(err.contains(expected), "expected '{expected}' in '{err}'");
        }
    }

    /// A zip directory (or a sparse file) may claim 26 GB behind a header of a shape inside
    /// the per-axis limits; the budget refuses it from the header, before any allocation.
    #[test]
    fn a_claimed_size_never_decides_an_allocation() {
        let hostile = npy_bytes("<f8", false, "(200000, 16384)", &[0u8; 64]);
        let budget = Limits {
            max_frames: 200_000,
            max_dim: 16_384,
            max_bytes: 1 << 30,
        };
        let claimed = 26_000_000_000;
        assert!(matches!(
            read(hostile.as_slice(), claimed, &budget),
            Err(Problem::OverBudget { max_bytes, .. }) if max_bytes == 1 << 30
        ));
        // Within the budget, a source that ends before what it claimed is truncated, found
        // for what it really held.
        let short = npy_bytes("<f4", false, "(100, 10)", &[0u8; 40]);
        match read(short.as_slice(), 1 << 40, &limits()) {
            Err(Problem::Truncated { expected, found }) => {
                assert_eq!((expected, found), (4000, 40))
            }
            other => panic!("{other:?}"),
        }
    }
}
