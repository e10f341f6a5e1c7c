//! A tensor as a window onto a storage (offset, shape, strides), and copying it out.

use super::unpickle::StorageDtype;

/// Largest tensor, and largest total, in elements (1 Gi f32 = 4 GiB).
pub(super) const MAX_ELEMENTS: u64 = 1 << 30;

/// A tensor as the pickle describes it: a window onto a storage.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct TensorRef {
    pub(super) dtype: StorageDtype,
    pub(super) storage: String,
    pub(super) storage_numel: u64,
    pub(super) offset: u64,
    pub(super) shape: Vec<usize>,
    pub(super) stride: Vec<u64>,
}

/// Number of elements of a tensor of this shape, `None` if it overflows `u64`.
pub(super) fn element_count(shape: &[usize]) -> Option<u64> {
    shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Copies a tensor's elements out of its storage in row-major order, honouring offset and
/// strides (views, slices, transposes), after checking that every element lies inside the
/// storage. Integer tensors are checked but not converted (`num_batches_tracked` only).
pub(super) fn gather(t: &TensorRef, storage: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let elem = t.dtype.size();
    let stored = storage.len() as u64 / elem as u64;
    if stored < t.storage_numel {
        return Err(format!(
            "storage '{}' holds {stored} elements, the checkpoint declares {}",
            t.storage, t.storage_numel
        ));
    }
    let numel = element_count(&t.shape).unwrap_or(u64::MAX);
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The farthest element the view touches; strides are non-negative in PyTorch.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&d, &s)| {
            (d as u64 - 1)
                .checked_mul(s)
                .and_then(|x| acc.checked_add(x))
        })
        .unwrap_or(u64::MAX);
    if last >= t.storage_numel {
        return Err(format!(
            "shape {:?} with strides {:?} at offset {} reaches element {last}, but storage '{}' \
             has only {} elements",
            t.shape, t.stride, t.offset, t.storage, t.storage_numel
        ));
    }
    if t.dtype.to_f32(&[0; 8]).is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(numel as usize);
    let mut index = vec![0usize; t.shape.len()];
    let mut pos = t.offset;
    loop {
        let at = pos as usize * elem;
        out.push(t.dtype.to_f32(&storage[at..at + elem]).unwrap_or(f32::NAN));
        // Advance the multi-index like an odometer, innermost dimension first.
        let mut dim = t.shape.len();
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            index[dim] += 1;
            pos += t.stride[dim];
            if index[dim] < t.shape[dim] {
                break;
            }
            pos -= t.stride[dim] * t.shape[dim] as u64;
            index[dim] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_honours_strides_and_checks_bounds() {
        let storage: Vec<u8> = (0..6u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorRef {
            dtype: StorageDtype::F32,
            storage: "0".into(),
            storage_numel: 6,
            offset: 0,
            shape: vec![3, 2],
            stride: vec![1, 3],
        };
        assert_eq!(
            gather(&t, &storage).unwrap(),
            [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
        );
        let shifted = TensorRef {
            offset: 1,
            ..t.clone()
        };
        assert!(gather(&shifted, &storage)
            .unwrap_err()
            .contains("reaches element 6"));
        let short = TensorRef {
            storage_numel: 7,
            ..t
        };
        assert!(gather(&short, &storage)
            .unwrap_err()
            .contains("holds 6 elements"));
    }
}
