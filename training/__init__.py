"""Training and inference on encrypted datasets (torchrun DDP, timm models, adaptation networks)."""
