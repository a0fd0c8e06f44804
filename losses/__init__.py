"""Training losses: landmark (L1 + velocity)."""
