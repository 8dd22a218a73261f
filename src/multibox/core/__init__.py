"""Pure tensor SSD math: boxes, priors, matching, losses, NMS, the detection-output stage
and test-time views. Nothing here knows about files, models or training loops."""
