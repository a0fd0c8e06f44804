import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics.image import psnr, ssim


def test_psnr_and_ssim_agree_with_scikit_image_on_real_frames(records):
    from data import load_clip

    faces = np.asarray(load_clip(records / "talk_a").faces[[10, 70]]).astype(np.float64) / 255
    noisy = np.clip(faces + np.random.default_rng(0).normal(0, 0.05, faces.shape), 0, 1)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2)
    y = torch.from_numpy(noisy).permute(0, 3, 1, 2)
    ours_psnr, ours_ssim = psnr(y, x), ssim(y, x)
    for i in range(2):
        assert abs(ours_psnr[i].item() - peak_signal_noise_ratio(faces[i], noisy[i], data_range=1.0)) < 1e-3
        expected = structural_similarity(faces[i], noisy[i], gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert abs(ours_ssim[i].item() - expected) < 1e-3
    assert torch.isinf(psnr(x, x)).all() and torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    assert (ssim(blurred, x) < 1).all() and (psnr(blurred, x) < 60).all()
