"""Write tests/fixtures/logging/golden_small.wandb with W&B's own protobuf classes (wandb==0.31.0) and zlib's CRC-32,
independently of the Rust writer: a run record, one history row, one summary update and an exit record.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/wandb_golden.py
"""

import pathlib
import struct
import zlib

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768


def frame(offset: int, payload: bytes) -> bytes:
    """LevelDB log framing as W&B uses it (records here are small: one FULL chunk each)."""
    assert BLOCK - offset % BLOCK >= 7 + len(payload)
    kind = 1
    crc = zlib.crc32(payload, zlib.crc32(bytes([kind])))
    return struct.pack("<IHB", crc, len(payload), kind) + payload


def main() -> None:
    records = []
    r = pb.Record()
    r.run.run_id = "abc12345"
    r.run.project = "p"
    records.append(r)
    r = pb.Record()
    for key, value in [("_step", "0"), ("loss", "0.5")]:
        item = r.history.item.add()
        item.key = key
        item.value_json = value
    r.history.step.SetInParent()
    records.append(r)
    r = pb.Record()
    item = r.summary.update.add()
    item.key = "loss"
    item.value_json = "0.5"
    records.append(r)
    r = pb.Record()
    r.exit.SetInParent()
    records.append(r)

    out = bytearray(b":W&B" + struct.pack("<H", 0xBEE1) + b"\x00")
    for rec in records:
        out += frame(len(out), rec.SerializeToString())
    path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "logging" / "golden_small.wandb"
    path.write_bytes(bytes(out))
    print(f"wrote {path} ({len(out)} bytes)")


if __name__ == "__main__":
    main()
