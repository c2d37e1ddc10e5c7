"""LabDCT denoising core, pure numpy: background, training-data synthesis, standard routine, spot metrics."""
