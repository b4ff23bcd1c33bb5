//! Turning u8 CHW images into the f32 NCHW batches the models read.

use candle_core::{Device, Tensor};

use crate::{InputShape, Result};

/// The images at `indices` of `images` (CHW u8, `shape.len()` bytes each) as an f32 tensor
/// `[n, channels, height, width]` scaled to [0, 1].
pub(crate) fn batch(images: &[u8], shape: InputShape, indices: &[usize], device: &Device) -> Result<Tensor> {
    let len = shape.len();
    let mut out = Vec::with_capacity(indices.len() * len);
    for &i in indices {
        out.extend(images[i * len..(i + 1) * len].iter().map(|&v| f32::from(v) / 255.0));
    }
    Ok(Tensor::from_vec(out, (indices.len(), shape.channels, shape.height, shape.width), device)?)
}

/// Class indices as a u32 tensor `[n]`.
pub(crate) fn labels(labels: &[u32], indices: &[usize], device: &Device) -> Result<Tensor> {
    let picked: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
    Ok(Tensor::from_vec(picked, indices.len(), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_picks_images_in_order_and_scales() {
        let shape = InputShape { channels: 3, height: 1, width: 2 };
        let images = [0, 255, 51, 102, 0, 0, 255, 255, 255, 255, 255, 255];
        let t = batch(&images, shape, &[1, 0], &Device::Cpu).expect("batch");
        assert_eq!(t.dims(), &[2, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(&v[..6], &[1.0; 6]);
        assert_eq!(&v[6..], &[0.0, 1.0, 0.2, 0.4, 0.0, 0.0]);
    }
}
