"""Backbone trunks: VGG16 (reduced, atrous), ResNet-18/34/50, EfficientNet-Lite0..4."""
