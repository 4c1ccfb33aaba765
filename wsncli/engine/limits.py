"""Names and hard limits that options, task data and files are all checked against (nothing heavy is
imported, so the command line can offer the names without loading numpy or torch)."""

import os

METHODS = ("wsn", "finetune")
BENCHMARKS = (
    "split-digits",
    "pmnist",
    "split-mnist",
    "split-fashion",
    "split-cifar10",
    "split-cifar100",
    "split-tinyimagenet",
    "multi-dataset",
    "npz",
    "image-folder",
)
ARCHS = ("mlp", "conv", "resnet18", "lenet", "conv4")
CUSTOM_ARCH = "custom"  # meta.model.arch of a network built by --arch-module (nn.user)
DEVICES = ("auto", "cpu", "cuda")
PACK_CODECS = (
    "auto",
    "context",
    "ascii7",
    "ascii7-huffman",
    "paper-huffman",
    "packbits",
)  # formats' names (a test keeps them equal)
MAX_TASK_ID = 1_000_000
MAX_CLASSES = 100_000
MAX_INPUTS = 1 << 24  # values per input sample
MAX_SEED = 2**32  # |seed| below this: seed-derived torch seeds stay in range
MAX_NODES = 1_000_000  # containers + scalars in meta
MAX_DEPTH = 32
MAX_STR = 1 << 16  # characters of one string in meta
MAX_INPUT_DIMS = 3  # a sample is features, or channels x height x width
MAX_INPUT_DIM = 65536
MAX_LABEL_CHARS = 256
MAX_WEIGHTS = 1 << 27  # masked weights of a network (x2 with scores, x4 bytes: 1 GiB)
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 1 << 24
MAX_LR = 1e3
MAX_THREADS = 4096
MAX_TRAIN_LIMIT = 1 << 40  # --train-limit: training samples of a task
MAX_WIDTH = 1024  # resnet18's base width nf (--width; meta.model.width)
MAX_HIDDEN = 65536  # an mlp hidden layer's size (--hidden; meta.model.hidden)
MAX_IMAGE_SIZE = 4096  # --image-size; meta.image_size


def env_limit(var: str, default, unit: str, error: type[Exception]):
    """A limit an environment variable may raise: its positive integer value, else `default`."""
    text = os.environ.get(var, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise error(f"{var} must be a positive number of {unit}, got {text[:40]!r}")
    return value
