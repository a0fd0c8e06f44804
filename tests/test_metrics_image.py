import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics.image import PSNR_EPS, piq_downsample, psnr, ssim


def test_psnr_and_ssim_agree_with_scikit_image_on_real_frames(records):
    from data.records import load_clip

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


def _gaussian_2d(size=11, sigma=1.5):
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :])[None, None]


def _tensor(frames):
    return torch.from_numpy(np.stack(frames).astype(np.float64) / 255).permute(0, 3, 1, 2)


def test_frame_psnr_and_ssim_agree_with_scikit_image_on_real_frames(talk_a_frames):
    # talk_a is 844x844, so piq (and this module) first average-pool by round(844 / 256) = 3.
    real = [talk_a_frames[5], talk_a_frames[30]]
    noisy = [np.clip(f + np.random.default_rng(i).normal(0, 6, f.shape), 0, 255).astype(np.uint8)
             for i, f in enumerate(real)]
    x, y = _tensor(noisy), _tensor(real)
    ours_psnr, ours_ssim = psnr(x, y, PSNR_EPS), ssim(x, y, downsample=True)
    pooled_x = piq_downsample(x).permute(0, 2, 3, 1).numpy()
    pooled_y = piq_downsample(y).permute(0, 2, 3, 1).numpy()
    assert pooled_x.shape[1:3] == (281, 281)
    for i in range(2):
        expected_psnr = peak_signal_noise_ratio(y[i].numpy(), x[i].numpy(), data_range=1.0)
        expected_ssim = structural_similarity(pooled_y[i], pooled_x[i], gaussian_weights=True, sigma=1.5,
                                              use_sample_covariance=False, data_range=1.0, channel_axis=2)
        assert abs(ours_psnr[i].item() - expected_psnr) < 1e-3
        assert abs(ours_ssim[i].item() - expected_ssim) < 1e-3
        assert ours_ssim[i].item() < 0.99


def test_identical_frames_give_capped_psnr_and_ssim_one(talk_a_frames):
    x = _tensor(talk_a_frames[:2])
    assert torch.allclose(psnr(x, x, PSNR_EPS), torch.full((2,), 80.0, dtype=torch.float64))  # -10 log10(1e-8)
    assert torch.allclose(ssim(x, x, downsample=True), torch.ones(2, dtype=torch.float64))
    shifted = torch.roll(x, 4, dims=3)
    assert (psnr(shifted, x, PSNR_EPS) < 40).all() and (ssim(shifted, x, downsample=True) < 0.99).all()


def test_separable_ssim_equals_the_2d_gaussian_formula():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(size=(2, 3, 160, 160)))
    y = (x + torch.from_numpy(rng.normal(0, 0.1, size=x.shape))).clamp(0, 1)
    window = _gaussian_2d().expand(3, 1, -1, -1)

    def blur(t):
        return torch.nn.functional.conv2d(t, window, groups=3)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y, cov = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2, blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    slow = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    assert torch.allclose(ssim(x, y, downsample=True), slow.flatten(1).mean(dim=1), atol=1e-12, rtol=0)
    assert torch.allclose(ssim(x, y), ssim(x, y, downsample=True))  # 160x160: piq pools by 1
