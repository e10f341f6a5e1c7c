//! Model inputs from files: images (decoded and preprocessed) or `.npy` tensors that are already
//! preprocessed (so anyone can feed exactly PyTorch's input and compare).

use crate::decode::{decode_image_file, DecodeOptions};
use crate::error::{Error, Result};
use crate::preprocess::preprocess;
use ndarray::{Array3, ArrayD, Ix3};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use std::path::Path;

/// Whether a path names a `.npy` file (by extension, case-insensitive).
pub fn is_npy(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Loads one network input `[3, 224, 224]`: a `.npy` as is, anything else as an image.
pub fn load_input(path: &Path, opts: &DecodeOptions) -> Result<Array3<f32>> {
    if is_npy(path) {
        read_npy_input(path)
    } else {
        Ok(preprocess(&decode_image_file(path, opts)?.rgb))
    }
}

/// Reads a preprocessed float32 tensor of shape `[3, 224, 224]` or `[1, 3, 224, 224]`.
pub fn read_npy_input(path: &Path) -> Result<Array3<f32>> {
    let err = |reason: String| Error::Npy {
        path: path.display().to_string(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "cannot read", e))?;
    let array = ArrayD::<f32>::read_npy(std::io::BufReader::new(file)).map_err(|e| {
        err(format!(
            "{e} (expected a little-endian float32 array, as numpy.save writes)"
        ))
    })?;
    let shape = array.shape().to_vec();
    let array = match shape.as_slice() {
        [3, 224, 224] => array,
        [1, 3, 224, 224] => array.index_axis_move(ndarray::Axis(0), 0),
        _ => {
            return Err(err(format!(
                "shape {shape:?}, expected [3, 224, 224] or [1, 3, 224, 224]"
            )))
        }
    };
    if array.iter().any(|v| !v.is_finite()) {
        return Err(err("holds NaN or infinite values".into()));
    }
    Ok(array
        .into_dimensionality::<Ix3>()
        .expect("shape checked above")
        .as_standard_layout()
        .into_owned())
}

/// Writes a float32 array of any rank as a `.npy` (C order): an input batch
/// `[N, 3, 224, 224]`, or a layer's output for `resnet trace --dump`.
pub fn write_npy<D: ndarray::Dimension>(
    path: &Path,
    batch: &ndarray::ArrayView<'_, f32, D>,
) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, "cannot write", e))?;
    batch
        .write_npy(std::io::BufWriter::new(file))
        .map_err(|e| Error::Io {
            path: path.display().to_string(),
            action: "cannot write",
            source: std::io::Error::other(e.to_string()),
        })
}
