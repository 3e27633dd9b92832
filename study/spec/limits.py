"""What a spec may ask for, in one place (docs/study-specs.md, "Limits").

A spec is a page of YAML; the paper's longest runs are 750,000 updates; results-DB integers are
64-bit. Each limit is checked where the value is read: the file's size and depth by the reader
(study/spec/reader.py), counts by the model (study/spec/model.py, params.py), training sizes by
the config check (study/spec/expand.py).
"""

from __future__ import annotations

MAX_SPEC_BYTES = 1 << 20
MAX_DEPTH = 20
MAX_TRIALS = 100_000
# Values of one categorical or grid parameter: Optuna stores a categorical's whole list of choices
# with every trial's value of it (trial_params.distribution_json), so 100,000 choices would put
# gigabytes in the results DB; a grid's size (the product over its parameters) is MAX_TRIALS.
MAX_CHOICES = 1_000
MAX_REPEATS = 1024
MAX_MEMBERS = 4096
MAX_UPDATES = 10_000_000
# Sizes no study of these models needs (the paper: minibatches of 100 and 200, T <= 200, at most
# 103,500 training cases); whether a size that passes fits the machine is study/plan/sizing.py's check.
MAX_SIZES = {"batch_size": 1_000_000, "eval_cases": 10_000_000, "train_cases": 10_000_000, "seq_length": 100_000}
MAX_INT = 2**63 - 1
