"""Datasets: offline MNIST from IDX files, generated data, mini-batching."""

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
from ._synthetic import synthetic_digits as synthetic_digits
