import os
import sys

SENTENCE = "the hermetic build tokenizes a sentence"


def main() -> int:
    prefix = sys.prefix if os.path.isdir(os.path.join(sys.prefix, "conda-meta")) else None
    here = os.path.dirname(os.path.abspath(__file__))
    prefix = prefix or here.split("/lib/python")[0]
    with open(os.path.join(prefix, "share", "hb-vocab", "vocab.txt")) as f:
        vocab = {line.strip() for line in f}
    words = " ".join(sys.argv[1:]).split()
    known = sum(1 for w in words if w in vocab)
    print(f"tokens={len(words)} known={known} vocab={len(vocab)} prefix={prefix}")
    return bpe(here, " ".join(sys.argv[1:]) or SENTENCE)


def bpe(here: str, text: str) -> int:
    """Train a tiny BPE tokenizer (PyPI `tokenizers`) on the bundled corpus, encode `text`, and
    summarise the ids with PyPI `numpy`: both come from the environment's pip section."""
    try:
        import numpy as np
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError as exc:
        print(f"bpe: unavailable ({exc.name} is not installed in this environment)")
        return 0
    with open(os.path.join(here, "corpus.txt")) as f:
        lines = [line.strip() for line in f if line.strip()]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"],
                                                              show_progress=False))
    encoding = tokenizer.encode(text)
    ids = np.array(encoding.ids, dtype=np.int64)
    print(f"bpe vocab={tokenizer.get_vocab_size()} tokens={encoding.tokens} ids={encoding.ids}")
    print(f"numpy {np.__version__} mean_id={ids.mean():.3f} max_id={int(ids.max())}")
    return 0
