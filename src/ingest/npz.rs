//! NumPy `.npz`: a zip archive of `.npy` arrays, one stream per member (`np.savez`, stored or
//! deflated).

use super::{npy, Features, Limits, Problem, Stream};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// Every float member of the archive as a stream, each checked against `limits`.
pub fn read(path: &Path, limits: &Limits) -> Result<Vec<Stream>, Problem> {
    read_from(std::io::BufReader::new(super::open_input(path)?), limits)
}

/// [`read`] from any source: the members of one budget, `limits.max_bytes`, all together.
pub fn read_from(source: impl Read + Seek, limits: &Limits) -> Result<Vec<Stream>, Problem> {
    let mut archive = zip::ZipArchive::new(source).map_err(archive_problem)?;
    let mut streams = Vec::with_capacity(archive.len());
    // One budget for the whole file: each member may take what the earlier ones left.
    let mut budget = *limits;
    for index in 0..archive.len() {
        let entry = archive.by_index(index).map_err(archive_problem)?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        let size = entry.size();
        let features = npy::read(entry, size, &budget).map_err(|problem| match problem {
            Problem::Io(e) => Problem::Archive(format!("member '{name}.npy': {e}")),
            budget @ (Problem::TooLarge { .. }
            | Problem::OverBudget { .. }
            | Problem::OutOfMemory { .. }) => budget,
            other => Problem::BadHeader(format!("member '{name}.npy': {other}")),
        })?;
        budget.max_bytes = budget
            .max_bytes
            .saturating_sub(features.data.len() as u64 * 4);
        streams.push(Stream { name, features });
    }
    if streams.is_empty() {
        return Err(Problem::Archive("no .npy members".into()));
    }
    Ok(streams)
}

fn archive_problem(e: zip::result::ZipError) -> Problem {
    match e {
        zip::result::ZipError::Io(io) => Problem::Io(io),
        other => Problem::Archive(other.to_string()),
    }
}

/// Writes named float32 streams as an uncompressed `.npz` (what `np.savez` produces).
pub fn write(sink: impl Write + Seek, streams: &[(&str, &Features)]) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new(sink);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, features) in streams {
        zip.start_file(format!("{name}.npy"), options)
            .map_err(std::io::Error::other)?;
        npy::write(&mut zip, features)?;
    }
    zip.finish().map_err(std::io::Error::other)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_named_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.npz");
        let a = Features {
            frames: 2,
            dim: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let b = Features {
            frames: 2,
            dim: 1,
            data: vec![7.0, 8.0],
        };
        write(
            std::fs::File::create(&path).unwrap(),
            &[("clip", &a), ("i3d", &b)],
        )
        .unwrap();
        let limits = Limits {
            max_frames: 10,
            max_dim: 10,
            max_bytes: u64::MAX,
        };
        let streams = read(&path, &limits).unwrap();
        assert_eq!(streams.len(), 2);
        assert_eq!(
            (streams[0].name.as_str(), &streams[0].features),
            ("clip", &a)
        );
        assert_eq!(
            (streams[1].name.as_str(), &streams[1].features),
            ("i3d", &b)
        );
    }

    #[test]
    fn a_broken_archive_is_a_clear_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npz");
        std::fs::write(&path, b"PK\x03\x04garbage").unwrap();
        let limits = Limits {
            max_frames: 10,
            max_dim: 10,
            max_bytes: u64::MAX,
        };
        let err = read(&path, &limits).unwrap_err().to_string();
        assert!(err.contains("archive"), "{err}");
    }
}
