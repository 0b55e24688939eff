"""Datasets: offline MNIST from IDX files, image datasets through tensorflow-datasets
and the Tiny-ImageNet folder, augmentations, generated data, mini-batching."""

from ._augment import (
    ImageAugmentation as ImageAugmentation,
    random_crop as random_crop,
    random_erasing as random_erasing,
    random_flip as random_flip,
)
from ._batches import iterate_batches as iterate_batches
from ._lorenz63 import (
    default_lorenz63_dir as default_lorenz63_dir,
    generate_lorenz63 as generate_lorenz63,
    load_lorenz63 as load_lorenz63,
)
from ._mnist import (
    default_mnist_dir as default_mnist_dir,
    load_mnist_idx as load_mnist_idx,
    MNIST_MEAN as MNIST_MEAN,
    mnist_offline_split as mnist_offline_split,
    MNIST_STD as MNIST_STD,
    read_idx as read_idx,
)
from ._paths import cache_dir as cache_dir
from ._physical import (
    default_cache_dir as default_cache_dir,
    generate_pendulum_chain as generate_pendulum_chain,
    pendulum_chain_energy as pendulum_chain_energy,
    pendulum_chain_vector_field as pendulum_chain_vector_field,
)
from ._physionet import (
    generate_physionet as generate_physionet,
    load_physionet as load_physionet,
    PHYSIONET_FEATURES as PHYSIONET_FEATURES,
    physionet_files as physionet_files,
    read_physionet_record as read_physionet_record,
)
from ._synthetic import synthetic_digits as synthetic_digits
from ._tfds import (
    channel_statistics as channel_statistics,
    image_dataset_info as image_dataset_info,
    IMAGE_DATASETS as IMAGE_DATASETS,
    ImageDatasetInfo as ImageDatasetInfo,
    load_image_dataset as load_image_dataset,
    load_tfds_split as load_tfds_split,
    normalize_images as normalize_images,
)
from ._tiny_imagenet import (
    default_tiny_imagenet_dir as default_tiny_imagenet_dir,
    load_tiny_imagenet_split as load_tiny_imagenet_split,
    tiny_imagenet_classes as tiny_imagenet_classes,
)
