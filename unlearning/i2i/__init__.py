"""Image-to-image (I2I) encoder unlearning (Li et al., ICLR 2024): models that complete an image
from a masked view, the masks and noise the method needs, the method itself and its metrics.

Plain torch: nothing here imports the service or Celery.
"""
