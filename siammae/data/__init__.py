"""Training data: the streaming loader of shards (:mod:`siammae.data.loader`), the views it draws from a
sample (:mod:`siammae.data.views`) and pixel conventions (:mod:`siammae.data.pixels`).

ImageNet's channel statistics live here, without torch, because propagation protocols name them too.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
