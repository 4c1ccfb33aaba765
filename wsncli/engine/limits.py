"""Names and hard limits that options, task data and files are all checked against."""

METHODS = ("wsn", "finetune")
MAX_TASK_ID = 1_000_000
MAX_CLASSES = 100_000
MAX_INPUTS = 1 << 24  # values per input sample
MAX_SEED = 2**32  # |seed| below this: seed-derived torch seeds stay in range
MAX_NODES = 1_000_000  # containers + scalars in meta
MAX_DEPTH = 32
MAX_STR = 1 << 16  # characters of one string in meta
