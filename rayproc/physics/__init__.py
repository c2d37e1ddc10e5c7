"""Forward physics, pure numpy: BCDI crystals and diffraction, LabDCT polycrystals and projections."""
