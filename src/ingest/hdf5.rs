//! HDF5 files holding many videos, ActivityNet's layout `h5[vid][dataset]` (or `h5[vid]` as
//! the dataset itself). Each video is read on its own so a bad entry never hides the others
//! and a multi-gigabyte file is never held in memory at once.

use super::{npy::squeeze_to_matrix, Features, Limits, Problem};
use hdf5::LocationType;
use std::path::Path;

fn problem(source: hdf5::Error) -> Problem {
    Problem::Hdf5 {
        what: String::new(),
        source,
    }
}

/// The video ids (top-level members) of a file.
pub fn list(path: &Path) -> Result<Vec<String>, Problem> {
    // The HDF5 library opens the file itself; refuse what is no regular file first.
    drop(super::open_input(path)?);
    let file = hdf5::File::open(path).map_err(problem)?;
    file.member_names().map_err(problem)
}

pub fn read(path: &Path, key: &str, dataset: &str, limits: &Limits) -> Result<Features, Problem> {
    drop(super::open_input(path)?);
    let file = hdf5::File::open(path).map_err(problem)?;
    let data = match file.loc_type_by_name(key).map_err(problem)? {
        LocationType::Dataset => file.dataset(key),
        _ => file.group(key).and_then(|g| g.dataset(dataset)),
    }
    .map_err(|source| Problem::Hdf5 {
        what: format!(" '{key}/{dataset}'"),
        source,
    })?;
    let shape = data.shape();
    let (frames, dim) = squeeze_to_matrix(&shape)?;
    // Read as f32 whatever the stored type: the budget counts what is decoded.
    limits.check(frames, dim, 4)?;
    let values = data.read_raw::<f32>().map_err(problem)?;
    Ok(Features {
        frames,
        dim,
        data: values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_activitynet_layout_and_flat_datasets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c3d.h5");
        {
            let file = hdf5::File::create(&path).unwrap();
            let group = file.create_group("v_abc").unwrap();
            let a = ndarray::Array2::<f64>::from_shape_fn((3, 2), |(i, j)| (i * 2 + j) as f64);
            group
                .new_dataset_builder()
                .with_data(&a)
                .create("c3d_features")
                .unwrap();
            let b = ndarray::Array3::<f32>::from_elem((1, 4, 2), 0.5);
            file.new_dataset_builder()
                .with_data(&b)
                .create("v_flat")
                .unwrap();
        }
        let limits = Limits {
            max_frames: 100,
            max_dim: 100,
            max_bytes: u64::MAX,
        };
        let mut ids = list(&path).unwrap();
        ids.sort();
        assert_eq!(ids, ["v_abc", "v_flat"]);
        let f = read(&path, "v_abc", "c3d_features", &limits).unwrap();
        assert_eq!((f.frames, f.dim), (3, 2));
        assert_eq!(f.data, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let flat = read(&path, "v_flat", "c3d_features", &limits).unwrap();
        assert_eq!((flat.frames, flat.dim), (4, 2));
        let small = Limits {
            max_frames: 2,
            max_dim: 100,
            max_bytes: u64::MAX,
        };
        assert!(matches!(
            read(&path, "v_abc", "c3d_features", &small),
            Err(Problem::TooLarge { .. })
        ));
        let missing = read(&path, "v_abc", "i3d", &limits)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("v_abc/i3d"), "{missing}");
    }
}
