import os
import sys


def main() -> int:
    prefix = sys.prefix if os.path.isdir(os.path.join(sys.prefix, "conda-meta")) else None
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = prefix or here.split("/lib/python")[0]
    with open(os.path.join(prefix, "share", "hb-vocab", "vocab.txt")) as f:
        vocab = {line.strip() for line in f}
    words = " ".join(sys.argv[1:]).split()
    known = sum(1 for w in words if w in vocab)
    print(f"tokens={len(words)} known={known} vocab={len(vocab)} prefix={prefix}")
    return 0
