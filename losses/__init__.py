"""Training losses: landmark (L1 + velocity), perceptual (VGG19 + style), gan (LSGAN + feature matching)."""
