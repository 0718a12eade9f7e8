"""Train the BPE tokenizer on the training shards and save tokenizer.json + token_bytes.pt to $BASE/tokenizer.

    python -m nanochat.scripts.tok_train [--max_chars=10000000000] [--doc_cap=10000] [--vocab_size=65536]

Defaults are upstream nanochat's (its speedrun passes --max_chars=2000000000). Text comes from the training
shards only, never from the pinned validation shard.
"""
import os
import time

from nanochat.common import ArgumentParser, UsageError, print0, run_main
from nanochat.dataset import get_data_dir, iter_documents, require_shards
from nanochat.tokenizer import SPECIAL_TOKENS, Tokenizer, get_tokenizer_dir


def text_iterator(paths, max_chars: int, doc_cap: int, stats: dict):
    """Documents capped at doc_cap characters, until max_chars characters have been yielded."""
    for text in iter_documents(paths, doc_cap=doc_cap):
        stats["docs"] += 1
        stats["chars"] += len(text)
        yield text
        if stats["chars"] >= max_chars:
            return


def parse_args(argv=None):
    parser = ArgumentParser(prog="python -m nanochat.scripts.tok_train", description=__doc__.splitlines()[0])
    parser.add_argument("--max_chars", "--max-chars", type=int, default=10_000_000_000,
                        help="stop after this many characters of training text (default: 10B, as upstream)")
    parser.add_argument("--doc_cap", "--doc-cap", type=int, default=10_000, help="characters kept per document")
    parser.add_argument("--vocab_size", "--vocab-size", type=int, default=65_536,
                        help="vocabulary size including the 9 special tokens")
    args = parser.parse_args(argv)
    for name in ("max_chars", "doc_cap"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    min_vocab = 256 + len(SPECIAL_TOKENS)
    if not min_vocab <= args.vocab_size <= 2 ** 20:
        raise UsageError(f"--vocab_size must be between {min_vocab} and {2 ** 20}, got {args.vocab_size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    paths = require_shards("train", get_data_dir())
    print0(f"Training a {args.vocab_size:,}-token tokenizer on up to {args.max_chars:,} characters "
           f"(documents capped at {args.doc_cap:,}) from {len(paths)} training shard(s)")

    stats = {"docs": 0, "chars": 0}
    start = time.time()
    tokenizer = Tokenizer.train_from_iterator(text_iterator(paths, args.max_chars, args.doc_cap, stats),
                                              args.vocab_size)
    train_time = time.time() - start
    vocab_size = tokenizer.get_vocab_size()
    print0(f"Training time: {train_time:.2f}s ({stats['docs']:,} documents, {stats['chars']:,} characters)")
    if vocab_size != args.vocab_size:
        print0(f"warning: the text allowed only {vocab_size - len(SPECIAL_TOKENS) - 256:,} merges; vocabulary is "
               f"{vocab_size:,}, not {args.vocab_size:,} (use more text: raise --max_chars or add shards)")

    out_dir = get_tokenizer_dir()
    tokenizer.save(out_dir)
    tokenizer.save_token_bytes(out_dir)
    print0(f"Saved tokenizer to {os.path.join(out_dir, 'tokenizer.json')} and token bytes to "
           f"{os.path.join(out_dir, 'token_bytes.pt')}")

    # sanity checks and a short report
    sample = "Hello world! The year 2025 has 365 days; 3.14159 is pi.\n<|bos|> stays plain text. Ünïcødé ✓"
    if tokenizer.decode(tokenizer.encode(sample)) != sample:
        raise RuntimeError("the trained tokenizer does not round-trip text; this is a bug")
    lengths = [n for n in tokenizer.token_byte_lengths() if n > 0]
    mean_bytes = sum(lengths) / len(lengths)
    print0(f"Vocab size: {vocab_size:,}")
    print0(f"Token bytes: min {min(lengths)}, max {max(lengths)}, mean {mean_bytes:.2f} "
           f"({len(SPECIAL_TOKENS)} special tokens with 0 bytes)")
    try:
        from nanochat.report import get_report

        get_report().log(section="Tokenizer training", data=[
            vars(args),
            {"train_time": round(train_time, 2), "num_docs": stats["docs"], "num_chars": stats["chars"],
             "vocab_size": vocab_size, "num_special_tokens": len(SPECIAL_TOKENS),
             "token_bytes_min": min(lengths), "token_bytes_max": max(lengths),
             "token_bytes_mean": round(mean_bytes, 4)},
        ])
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    run_main(main)
