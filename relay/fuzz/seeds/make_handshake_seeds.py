#!/usr/bin/env python3
"""Seeds for the handshake fuzz target: handshakes with a valid mac1 for the
target's fixed keys, as records [sender][10 ms steps][len][bytes]."""
import hashlib, os

GW = bytes(range(1, 33))
CL = bytes(range(101, 133))


def mac1(to, msg, offset):
    key = hashlib.blake2s(b"mac1----" + to).digest()
    return hashlib.blake2s(msg[:offset], key=key, digest_size=16).digest()


def message(kind, sender, receiver, to):
    length, offset = (148, 116) if kind == 1 else (92, 60)
    m = bytearray(length)
    m[0] = kind
    m[4:8] = sender.to_bytes(4, "little")
    if kind == 2:
        m[8:12] = receiver.to_bytes(4, "little")
    m[offset:offset + 16] = mac1(to, bytes(m), offset)
    return bytes(m)


def record(sender, step, msg):
    return bytes([sender, step, len(msg)]) + msg


transport = bytes([4, 0, 0, 0]) + bytes(60)
seeds = {
    "bind_and_forward": record(0, 1, message(1, 1, 0, GW))
    + record(1, 1, message(1, 2, 0, CL))
    + record(0, 1, message(2, 3, 2, GW))
    + record(0, 1, transport)
    + record(1, 1, transport)
    + record(2, 1, transport),
    "roam": record(0, 1, message(1, 1, 0, GW))
    + record(1, 1, message(1, 2, 0, CL))
    + record(0, 1, message(2, 3, 2, GW))
    + record(3, 1, message(1, 4, 0, GW))
    + record(1, 1, message(2, 5, 4, CL))
    + record(3, 1, transport),
}
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handshake")
os.makedirs(here, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)
