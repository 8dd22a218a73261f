"""Pictures: boxes drawn on images, dataset grids, PR curves, error breakdowns, training
curves, and the report folder of a scored split."""
