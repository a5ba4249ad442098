"""The encoder (Qwen3-VL vision tower + projection head), its loading and export, and metric-learning training."""
