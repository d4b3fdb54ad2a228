"""The decoder itself: its configuration (`config`) and the dense MLX forward pass (`decoder`)."""
