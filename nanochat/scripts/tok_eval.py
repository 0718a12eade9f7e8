"""Compare our tokenizer's compression (bytes per token) with GPT-2's and GPT-4's on sample texts and our shards.

    python -m nanochat.scripts.tok_eval

The reference encodings are used only when tiktoken already has them cached (machines here are offline); a
missing one is skipped with a note.
"""
import hashlib
import os
import tempfile

from nanochat.common import ArgumentParser, print0, run_main
from nanochat.dataset import get_data_dir, iter_documents, list_train_shards, val_shard_path
from nanochat.tokenizer import get_tokenizer

SAMPLE_CHARS = 20_000   # characters taken from each shard sample

NEWS_TEXT = """\
City council approves budget for new light-rail line

After three hours of public comment on Tuesday night, the city council voted 7-2 to fund the first phase of a
light-rail line linking the riverside district with the university campus. The $412 million plan, which still
needs state approval, would add nine stations and is expected to carry about 18,000 riders a day by 2031.
Supporters said the line would ease traffic on the bridge corridor; opponents questioned the ridership figures
and asked for an independent review. Construction could begin as early as next spring, officials said.
"""

CODE_TEXT = """\
def merge_intervals(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    \"\"\"Merge overlapping closed intervals, returning them sorted by start.\"\"\"
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            prev_start, prev_end = merged[-1]
            merged[-1] = (prev_start, max(prev_end, end))
        else:
            merged.append((start, end))
    return merged


if __name__ == "__main__":
    print(merge_intervals([(1, 3), (2, 6), (8, 10), (15, 18)]))  # [(1, 6), (8, 10), (15, 18)]
"""

MATH_TEXT = r"""
Let $f(x) = \sum_{n=0}^{\infty} \frac{x^n}{n!}$. Then $f'(x) = f(x)$ and $f(0) = 1$, so $f(x) = e^x$.
For the integral, $\int_0^1 x^2 \, dx = \left[ \frac{x^3}{3} \right]_0^1 = \frac{1}{3}$.
Theorem 2.1. If $a, b \in \mathbb{Z}$ and $\gcd(a, b) = 1$, there exist $u, v$ with $au + bv = 1$.
Proof. Consider the set $S = \{ax + by > 0 : x, y \in \mathbb{Z}\}$ and its least element $d$. $\blacksquare$
Numerically, 2^10 = 1024, 3.14159 * 2 = 6.28318, and 1/7 = 0.142857142857...
"""

SCIENCE_TEXT = """\
Photosynthesis converts light energy into chemical energy stored in glucose. In the light-dependent reactions,
chlorophyll in the thylakoid membranes absorbs photons, splitting water molecules and releasing oxygen. The
resulting ATP and NADPH drive the Calvin cycle in the stroma, where the enzyme RuBisCO fixes carbon dioxide into
three-carbon sugars. Although RuBisCO is the most abundant protein on Earth, it is slow, catalysing only a few
reactions per second, and it sometimes binds oxygen instead of CO2, a wasteful process called photorespiration.
"""

KOREAN_TEXT = """\
한국어는 교착어로서 조사와 어미가 발달한 언어이다. 세종대왕은 1443년에 훈민정음을 창제하였고, 1446년에 이를
반포하였다. 한글은 자음 14자와 모음 10자로 이루어져 있으며, 소리를 체계적으로 나타내는 문자로 평가받는다.
오늘날 약 8천만 명이 한국어를 사용하고 있다.
"""

SAMPLE_TEXTS = [("news", NEWS_TEXT), ("code", CODE_TEXT), ("math", MATH_TEXT), ("science", SCIENCE_TEXT),
                ("korean", KOREAN_TEXT)]

# The files tiktoken would download for each reference encoding (it caches them under the sha1 of the URL).
REFERENCE_BLOBS = {
    "gpt2": ["https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
             "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"],
    "cl100k_base": ["https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"],
}
REFERENCE_LABELS = {"gpt2": "GPT-2", "cl100k_base": "GPT-4"}


def tiktoken_cache_dir():
    """Where tiktoken looks for downloaded encodings ('' means caching is disabled)."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def load_reference_encoding(name: str):
    """(encoding, None) when tiktoken has it cached locally, else (None, reason). Never downloads."""
    cache = tiktoken_cache_dir()
    missing = [url for url in REFERENCE_BLOBS[name]
               if not cache or not os.path.isfile(os.path.join(cache, hashlib.sha1(url.encode()).hexdigest()))]
    if missing:
        return None, f"not in tiktoken's cache ({cache or 'caching disabled'}); it would need a download"
    try:
        import tiktoken

        return tiktoken.get_encoding(name), None
    except Exception as exc:
        return None, f"could not load it ({' '.join(str(exc).split())[:120]})"


def shard_sample(path: str) -> str:
    """The first documents of a shard, about SAMPLE_CHARS characters."""
    parts, total = [], 0
    for text in iter_documents([path]):
        parts.append(text)
        total += len(text)
        if total >= SAMPLE_CHARS:
            break
    return "\n".join(parts)[:SAMPLE_CHARS]


def collect_texts():
    texts = list(SAMPLE_TEXTS)
    data_dir = get_data_dir()
    train = list_train_shards(data_dir)
    if train:
        texts.append(("train", shard_sample(train[0])))
    if os.path.isfile(val_shard_path(data_dir)):
        texts.append(("val", shard_sample(val_shard_path(data_dir))))
    return texts


def build_parser():
    return ArgumentParser(prog="python -m nanochat.scripts.tok_eval", description=__doc__.splitlines()[0])


def main(argv=None):
    build_parser().parse_args(argv)
    ours = get_tokenizer()
    encoders = [("ours", ours.encode)]
    for name in ("gpt2", "cl100k_base"):
        enc, reason = load_reference_encoding(name)
        if enc is None:
            print0(f"note: skipping {REFERENCE_LABELS[name]} ({name}): {reason}")
        else:
            encoders.append((REFERENCE_LABELS[name], enc.encode_ordinary))

    texts = collect_texts()
    if len(texts) == len(SAMPLE_TEXTS):
        print0("note: no data shards found; comparing on the built-in samples only")

    header = f"{'text':<10} {'bytes':>8}" + "".join(f" | {label + ' tok':>11} {'ratio':>6}" for label, _ in encoders)
    print0(f"Compression ratio (bytes per token), vocab {ours.get_vocab_size():,}:")
    print0(header)
    print0("-" * len(header))
    results = {}
    for name, text in texts:
        n_bytes = len(text.encode("utf-8"))
        row = f"{name:<10} {n_bytes:>8,}"
        for label, encode in encoders:
            n_tokens = len(encode(text))
            ratio = n_bytes / max(1, n_tokens)
            results[f"{name}/{label}"] = round(ratio, 3)
            row += f" | {n_tokens:>11,} {ratio:>6.2f}"
        if ours.decode(ours.encode(text)) != text:
            row += "  (round-trip FAILED)"
        print0(row)
    try:
        from nanochat.report import get_report

        get_report().log(section="Tokenizer evaluation", data=[{"vocab_size": ours.get_vocab_size()}, results])
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    run_main(main)
