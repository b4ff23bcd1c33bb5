//! Turning u8 CHW images into the f32 NHWC batches the models read.

use candle_core::{Device, Tensor};

use crate::{InputShape, Result};

/// The images at `indices` of `images` (CHW u8, `shape.len()` bytes each) as an f32 tensor
/// `[n, height, width, channels]` scaled to [0, 1].
///
/// Channels-last keeps each 3×3 patch row contiguous for the convolution's im2col; the flatten
/// order the dense layers see follows from it and is the same on every device.
pub(crate) fn batch(images: &[u8], shape: InputShape, indices: &[usize], device: &Device) -> Result<Tensor> {
    let (c, hw) = (shape.channels, shape.height * shape.width);
    let len = shape.len();
    let mut out = vec![0f32; indices.len() * len];
    for (dst, &i) in out.chunks_exact_mut(len).zip(indices) {
        let src = &images[i * len..(i + 1) * len];
        for (p, px) in dst.chunks_exact_mut(c).enumerate() {
            for (ch, v) in px.iter_mut().enumerate() {
                *v = f32::from(src[ch * hw + p]) / 255.0;
            }
        }
    }
    Ok(Tensor::from_vec(out, (indices.len(), shape.height, shape.width, c), device)?)
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
    fn batch_reorders_chw_to_hwc_and_scales() {
        let shape = InputShape { channels: 3, height: 1, width: 2 };
        // Image 0: R = [0, 255], G = [51, 102], B = [0, 0]; image 1 all 255.
        let images = [0, 255, 51, 102, 0, 0, 255, 255, 255, 255, 255, 255];
        let t = batch(&images, shape, &[1, 0], &Device::Cpu).expect("batch");
        assert_eq!(t.dims(), &[2, 1, 2, 3]);
        let v: Vec<f32> = t.flatten_all().expect("flat").to_vec1().expect("vec");
        assert_eq!(&v[..6], &[1.0; 6]);
        assert_eq!(&v[6..], &[0.0, 0.2, 0.0, 1.0, 0.4, 0.0]);
    }
}
