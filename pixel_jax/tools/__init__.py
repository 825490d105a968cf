"""Visual operations (zoom-in crop, select frames) executed on device inside the rollout, and the
tool-call protocols that expose them to the model."""
