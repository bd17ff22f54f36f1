"""Read a TensorBoard log directory with TensorBoard's own EventAccumulator and print what it found as JSON:
{"scalars": {tag: [[step, value], ...]}, "text": {tag: [[step, text], ...]}}. Non-finite values are printed as the
strings "NaN", "Infinity", "-Infinity" so the output is standard JSON.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/tensorboard_read.py LOGDIR   (needs tensorboard==2.21.0)
"""

import json
import math
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def number(x: float):
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def main() -> None:
    # size_guidance 0 keeps every event (the default samples 10000 scalars per tag).
    acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    out = {"scalars": {}, "text": {}}
    for tag in tags.get("scalars", []):
        out["scalars"][tag] = [[e.step, number(e.value)] for e in acc.Scalars(tag)]
    for tag in tags.get("tensors", []):
        events = acc.Tensors(tag)
        texts = []
        for e in events:
            if e.tensor_proto.dtype == 7:  # DT_STRING
                texts.append([e.step, e.tensor_proto.string_val[0].decode("utf-8")])
        if texts:
            out["text"][tag] = texts
    print(json.dumps(out))


if __name__ == "__main__":
    main()
