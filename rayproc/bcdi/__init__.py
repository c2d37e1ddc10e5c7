"""BCDI gap inpainting core, pure numpy/torch: portions, gap masks, metrics."""
