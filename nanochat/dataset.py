"""Pretraining data on disk: FineWeb-EDU shard download (parallel, retried, atomic) and the offline demo corpus.

Both produce `$NANOCHAT_BASE_DIR/base_data/shard_{i:05d}.parquet` files with one `text` column in row groups of
1024 documents. Shard 1822 is always the validation shard; every other shard is training data.

    python -m nanochat.dataset -n 8 [-w 4] [--base-url URL]   # train shards 0..7 + the validation shard 1822
    python -m nanochat.dataset --demo [--force] [--max-mb MB] # offline corpus from local Python docstrings
    python -m nanochat.dataset --identity                     # upstream's identity conversations (mid/SFT data)
"""
import ast
import functools
import hashlib
import inspect
import json
import os
import random
import re
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from nanochat.common import ArgumentParser, UsageError, get_base_dir, run_main

# FineWeb-EDU 100B tokens, pre-shuffled, as published by Karpathy for nanochat.
DEFAULT_BASE_URL = "https://huggingface.co/datasets/karpathy/fineweb-edu-100b-shuffle/resolve/main"
# upstream's 1,000 synthetic identity conversations (2.3 MB), mixed into midtraining (twice) and SFT
IDENTITY_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/identity_conversations.jsonl"
IDENTITY_URL_ENV = "NANOCHAT_IDENTITY_URL"
NUM_SHARDS = 1823                  # shard_00000 .. shard_01822
VAL_SHARD_INDEX = NUM_SHARDS - 1   # pinned validation shard, for FineWeb-EDU and the demo corpus alike
SHARD_DISK_BYTES = 100_000_000     # one FineWeb-EDU shard on disk (about 100 MB: 240 shards ~ 24 GB; disk planning)
ROW_GROUP_SIZE = 1024              # documents per parquet row group
DATA_SUBDIR = "base_data"
DEMO_MARKER = "demo_corpus.json"   # written last by --demo: the commit marker of a complete demo corpus
DEMO_SEED = 1337
DEMO_VERSION = 1


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def shard_index(filename: str):
    """The shard number of `shard_00042.parquet`, or None for any other name."""
    base = os.path.basename(filename)
    if not (base.startswith("shard_") and base.endswith(".parquet")):
        return None
    digits = base[len("shard_"):-len(".parquet")]
    return int(digits) if digits.isdigit() else None


def get_data_dir() -> str:
    return os.path.join(get_base_dir(), DATA_SUBDIR)


def _fix_hint() -> str:
    return "download shards with `python -m nanochat.dataset -n 8` or build the offline corpus with " \
           "`python -m nanochat.dataset --demo`"


def list_train_shards(data_dir: str = None) -> list:
    """Sorted paths of the training shards in data_dir (every shard except the pinned validation shard)."""
    data_dir = data_dir or get_data_dir()
    if not os.path.isdir(data_dir):
        return []
    found = []
    for name in os.listdir(data_dir):
        index = shard_index(name)
        if index is not None and index != VAL_SHARD_INDEX:
            found.append((index, os.path.join(data_dir, name)))
    return [path for _, path in sorted(found)]


def val_shard_path(data_dir: str = None) -> str:
    return os.path.join(data_dir or get_data_dir(), shard_name(VAL_SHARD_INDEX))


def require_shards(split: str, data_dir: str = None) -> list:
    """The shard paths of a split ("train" or "val"); UsageError naming the fix when there are none."""
    data_dir = data_dir or get_data_dir()
    if split == "train":
        paths = list_train_shards(data_dir)
        if not paths:
            raise UsageError(f"no training shards in {data_dir}; {_fix_hint()}")
        return paths
    if split == "val":
        path = val_shard_path(data_dir)
        if not os.path.isfile(path):
            raise UsageError(f"validation shard {path} is missing; {_fix_hint()}")
        return [path]
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def is_complete_parquet(path: str) -> bool:
    """True when path is a readable parquet file (footer and metadata intact) with a `text` column."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
        return meta.num_rows >= 0 and "text" in meta.schema.names
    except Exception:
        return False


def iter_documents(paths, doc_cap: int = None):
    """Yield the texts of the given shards in order, one row group at a time (optionally capped per doc)."""
    import pyarrow.parquet as pq

    for path in paths:
        pf = pq.ParquetFile(path)
        for rg in range(pf.num_row_groups):
            for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
                yield text if doc_cap is None else text[:doc_cap]


# ===================================================================================================================
# Download

class DownloadFailure(Exception):
    """A shard could not be downloaded; the message is one line naming the shard and the reason."""


def _atomic_write_stream(response, final_path: str, chunk_size: int = 1 << 20) -> int:
    """Stream a response to `<final>.tmp-<pid>`, check size and parquet footer, fsync, rename. Returns bytes."""
    tmp_path = f"{final_path}.tmp-{os.getpid()}-{threading.get_ident()}"
    written = 0
    try:
        with open(tmp_path, "wb") as f:
            for chunk in response.iter_content(chunk_size=chunk_size):
                if chunk:
                    f.write(chunk)
                    written += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) != written:
            raise IOError(f"connection closed after {written:,} of {int(expected):,} bytes")
        if not is_complete_parquet(tmp_path):
            raise IOError(f"received {written:,} bytes that are not a complete parquet file")
        os.replace(tmp_path, final_path)
        dir_fd = os.open(os.path.dirname(final_path), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return written
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def download_shard(index: int, data_dir: str, base_url: str, attempts: int = 5, backoff: float = 2.0,
                   timeout: float = 60.0, log=print):
    """Download one shard to data_dir unless a complete copy is there. Returns ("skipped"|"downloaded", bytes).

    Retries connection errors, truncated bodies and HTTP 5xx/408/429 with exponential back-off (backoff, 2x, 4x,
    ...); any other HTTP error (404 above all) fails at once. Raises DownloadFailure with a one-line reason.
    """
    import requests

    name = shard_name(index)
    final_path = os.path.join(data_dir, name)
    if os.path.exists(final_path) and is_complete_parquet(final_path):
        return "skipped", os.path.getsize(final_path)
    url = f"{base_url.rstrip('/')}/{name}"
    last_reason = "no attempt made"
    for attempt in range(1, attempts + 1):
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                status = response.status_code
                if status != 200:
                    reason = f"HTTP {status} {response.reason or ''}".strip()
                    if status in (408, 429) or status >= 500:
                        raise IOError(reason)
                    hint = " (no such file on the server; check --base-url / NANOCHAT_DATA_URL)" if status == 404 else ""
                    raise DownloadFailure(f"{name}: {reason} from {url}{hint}")
                size = _atomic_write_stream(response, final_path)
                return "downloaded", size
        except DownloadFailure:
            raise
        except (IOError, requests.RequestException) as exc:
            last_reason = " ".join(str(exc).split()) or type(exc).__name__
            if len(last_reason) > 200:
                last_reason = last_reason[:200] + "..."
        if attempt < attempts:
            delay = backoff * (2 ** (attempt - 1))
            log(f"retry {name}: attempt {attempt}/{attempts} failed ({last_reason}); retrying in {delay:.1f}s")
            time.sleep(delay)
    raise DownloadFailure(f"{name}: gave up after {attempts} attempts; last error: {last_reason}")


def download_shards(indices, data_dir: str, base_url: str, workers: int = 4, attempts: int = 5,
                    backoff: float = 2.0, timeout: float = 60.0) -> int:
    """Download the given shard indices in parallel with progress lines. Returns the number that failed."""
    os.makedirs(data_dir, exist_ok=True)
    lock = threading.Lock()
    done = {"n": 0, "bytes": 0, "downloaded": 0, "skipped": 0}
    failures = []
    total = len(indices)
    start = time.time()

    def log(message, stream=sys.stdout):
        with lock:
            print(message, file=stream, flush=True)

    def work(index):
        t0 = time.time()
        try:
            outcome, size = download_shard(index, data_dir, base_url, attempts, backoff, timeout, log=log)
        except DownloadFailure as exc:
            with lock:
                failures.append((index, str(exc)))
                done["n"] += 1
            log(f"FAILED {exc}", sys.stderr)
            return
        with lock:
            done["n"] += 1
            done[outcome] += 1
            if outcome == "downloaded":
                done["bytes"] += size
            n = done["n"]
        what = "already complete" if outcome == "skipped" else f"downloaded {size / 1e6:.1f} MB in {time.time() - t0:.1f}s"
        log(f"[{n}/{total}] {shard_name(index)} {what}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(work, indices))

    elapsed = time.time() - start
    rate = done["bytes"] / 1e6 / elapsed if elapsed > 0 else 0.0
    print(f"Done in {elapsed:.1f}s: {done['downloaded']} downloaded ({done['bytes'] / 1e6:.1f} MB, {rate:.1f} MB/s), "
          f"{done['skipped']} already complete, {len(failures)} failed -> {data_dir}", flush=True)
    if failures:
        names = ", ".join(shard_name(i) for i, _ in sorted(failures))
        print(f"FAILED: {len(failures)} of {total} shards could not be downloaded: {names}; rerun the same command "
              f"to retry (complete shards are kept)", file=sys.stderr, flush=True)
    return len(failures)


def _valid_identity_file(path: str) -> int:
    """Number of conversations in a complete identity JSONL file; ValueError naming the first bad line."""
    from nanochat.tasks.identity import parse_conversation
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    parse_conversation(line)
                except ValueError as exc:
                    raise ValueError(f"line {lineno}: {exc}") from None
                n += 1
    if n == 0:
        raise ValueError("no conversation in it")
    return n


def download_identity(dest: str, url: str, attempts: int = 5, backoff: float = 2.0, timeout: float = 60.0,
                      log=print) -> int:
    """Download the identity conversations JSONL to dest (atomically, every line checked) unless a valid copy is
    there. Retries like the shards; raises DownloadFailure with a one-line reason. Returns the conversation count."""
    import requests

    if os.path.exists(dest):
        try:
            return _valid_identity_file(dest)
        except (ValueError, UnicodeDecodeError):
            pass  # an incomplete or foreign file: fetch it again
    last_reason = "no attempt made"
    for attempt in range(1, attempts + 1):
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            with requests.get(url, stream=True, timeout=timeout) as response:
                if response.status_code != 200:
                    reason = f"HTTP {response.status_code} {response.reason or ''}".strip()
                    if response.status_code in (408, 429) or response.status_code >= 500:
                        raise IOError(reason)
                    raise DownloadFailure(f"identity conversations: {reason} from {url} (set {IDENTITY_URL_ENV} "
                                          f"to another address, or NANOCHAT_IDENTITY_FILE to your own file)")
                with open(tmp, "wb") as f:
                    for chunk in response.iter_content(chunk_size=1 << 20):
                        f.write(chunk)
            try:
                n = _valid_identity_file(tmp)
            except (ValueError, UnicodeDecodeError) as exc:
                raise IOError(f"the file received is not identity conversations JSONL ({exc})")
            os.replace(tmp, dest)
            return n
        except DownloadFailure:
            raise
        except (IOError, requests.RequestException) as exc:
            last_reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if attempt < attempts:
            delay = backoff * (2 ** (attempt - 1))
            log(f"retry identity conversations: attempt {attempt}/{attempts} failed ({last_reason}); "
                f"retrying in {delay:.1f}s")
            time.sleep(delay)
    raise DownloadFailure(f"identity conversations: gave up after {attempts} attempts; last error: {last_reason}")


# ===================================================================================================================
# Offline demo corpus: the docstrings and text docs of the installed Python standard library and packages

MIN_DOC_CHARS = 200
MAX_DOC_CHARS = 8000               # longer text files are split at paragraph boundaries
DEFAULT_DEMO_MAX_MB = 64.0
DOCS_PER_TRAIN_SHARD = 8 * ROW_GROUP_SIZE
MAX_VAL_DOCS = 2 * ROW_GROUP_SIZE


# Not descended into: caches, and other installations' packages below the stdlib directory (only what this
# interpreter imports is used).
SKIP_DIRS = {"__pycache__", "site-packages", "dist-packages"}


def _source_roots() -> list:
    """The stdlib and site-packages directories (never the current directory or this repository)."""
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[key]) for key in ("stdlib", "purelib", "platlib") if paths.get(key)}
    return sorted(r for r in roots if os.path.isdir(r))


@functools.lru_cache(maxsize=1)
def _source_files() -> tuple:
    """(kind, path) for every .py and prose doc file under the roots, in a deterministic order."""
    roots = _source_roots()
    files, seen = [], set()
    for root in roots:
        nested = [r for r in roots if r != root and r.startswith(root + os.sep)]
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and os.path.join(dirpath, d) not in nested)
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if name.endswith(".py"):
                    kind = "py"
                elif name.endswith((".rst", ".md", ".txt")) or (name == "METADATA" and dirpath.endswith(".dist-info")):
                    kind = "text"
                else:
                    continue
                real = os.path.realpath(path)
                if real not in seen:
                    seen.add(real)
                    files.append((kind, path))
    # Python files first (the bulk, most English prose), then docs.
    return tuple([f for f in files if f[0] == "py"] + [f for f in files if f[0] == "text"])


def _split_long(text: str) -> list:
    """Split text at blank lines into pieces of at most MAX_DOC_CHARS (paragraphs longer than that are cut)."""
    if len(text) <= MAX_DOC_CHARS:
        return [text]
    pieces, current = [], ""
    for para in text.split("\n\n"):
        while len(para) > MAX_DOC_CHARS:
            pieces.append(para[:MAX_DOC_CHARS])
            para = para[MAX_DOC_CHARS:]
        if current and len(current) + 2 + len(para) > MAX_DOC_CHARS:
            pieces.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        pieces.append(current)
    return pieces


def _looks_like_prose(text: str) -> bool:
    """Mostly letters and spaces (drops RECORD-like lists, hashes, data tables)."""
    sample = text[:4000]
    letters = sum(c.isalpha() or c.isspace() for c in sample)
    return letters >= 0.8 * len(sample) and sample.count(" ") >= len(sample) / 12


# A triple-quoted string at the very start of a file or right after a line ending in ':' (a def/class header):
# where docstrings live. Locating them by regex and evaluating only the literal is ~3-10x faster than ast.parse
# on whole files; files that mix both quote styles (where a regex could pair quotes wrongly) go through ast.
_DOCSTRING_START = re.compile(r"(?:\A|:[ \t]*(?:#[^\n]*)?\n)(?:[ \t]*(?:#[^\n]*)?\n)*[ \t]*([rRuU]?)(\"\"\"|''')")
MAX_SOURCE_BYTES = 1_000_000       # bigger .py files are generated tables, not prose


def _docstrings_by_regex(source: str) -> list:
    found, pos = [], 0
    while True:
        match = _DOCSTRING_START.search(source, pos)
        if not match:
            return found
        prefix, quote = match.group(1), match.group(2)
        body_start = search_from = match.end()
        while True:  # the closing quote is the first one not escaped by an odd number of backslashes
            end = source.find(quote, search_from)
            if end < 0:
                return found
            backslashes = 0
            while end - backslashes > body_start and source[end - backslashes - 1] == "\\":
                backslashes += 1
            if backslashes % 2 == 0:
                break
            search_from = end + 1
        pos = end + 3
        try:
            value = ast.literal_eval(prefix + quote + source[body_start:end] + quote)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
        if isinstance(value, str):
            found.append(inspect.cleandoc(value))


def _docstrings_by_ast(source: str) -> list:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return []
    return [doc for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and (doc := ast.get_docstring(node, clean=True))]


def _extract_documents(item) -> list:
    """Documents (>= MIN_DOC_CHARS) from one file: module/class/function docstrings of .py, prose of doc files."""
    kind, path = item
    try:
        if os.path.getsize(path) > MAX_SOURCE_BYTES:
            return []
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    docs = []
    if kind == "py":
        mixed_quotes = '"""' in text and "'''" in text
        for doc in (_docstrings_by_ast(text) if mixed_quotes else _docstrings_by_regex(text)):
            if len(doc) >= MIN_DOC_CHARS:
                docs.extend(_split_long(doc))
    else:
        if os.path.basename(path) == "METADATA":   # keep the long description after the header block
            _, _, text = text.partition("\n\n")
        text = inspect.cleandoc(text.replace("\r\n", "\n"))
        if len(text) >= MIN_DOC_CHARS and _looks_like_prose(text):
            docs.extend(_split_long(text))
    return [d for d in docs if len(d) >= MIN_DOC_CHARS and "\x00" not in d]


def collect_demo_documents(max_bytes: int, workers: int = None) -> list:
    """Unique documents from the local Python installation, at most ~max_bytes of UTF-8, in a seeded order."""
    import multiprocessing

    files = _source_files()
    workers = workers or min(4, os.cpu_count() or 1)
    seen, docs, total = set(), [], 0
    with multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
        for file_docs in pool.imap(_extract_documents, files, chunksize=32):
            for doc in file_docs:
                key = hashlib.sha1(doc.encode("utf-8", "replace")).digest()
                if key in seen:
                    continue
                seen.add(key)
                docs.append(doc)
                total += len(doc.encode("utf-8", "replace"))
            if total >= max_bytes:
                pool.terminate()
                break
    docs.sort()
    random.Random(DEMO_SEED).shuffle(docs)
    return docs


def _write_parquet(texts: list, path: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = f"{path}.tmp-{os.getpid()}"
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_demo_marker(data_dir: str):
    try:
        with open(os.path.join(data_dir, DEMO_MARKER), "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _demo_is_complete(data_dir: str, marker) -> bool:
    if not marker or marker.get("version") != DEMO_VERSION:
        return False
    return all(is_complete_parquet(os.path.join(data_dir, name)) for name in marker.get("shards", []))


def build_demo_corpus(data_dir: str, max_mb: float = DEFAULT_DEMO_MAX_MB, force: bool = False, workers: int = None):
    """Build (or reuse) the demo corpus in data_dir. Returns the summary dict stored in demo_corpus.json."""
    marker = _read_demo_marker(data_dir)
    if not force and _demo_is_complete(data_dir, marker):
        marker["reused"] = True
        return marker
    existing = [n for n in (os.listdir(data_dir) if os.path.isdir(data_dir) else []) if shard_index(n) is not None]
    if existing and marker is None:
        raise UsageError(f"{data_dir} already holds {len(existing)} downloaded shard(s) that --demo would overwrite; "
                         f"point NANOCHAT_BASE_DIR at another directory for the demo corpus")
    start = time.time()
    docs = collect_demo_documents(int(max_mb * 1e6), workers=workers)
    if len(docs) < 2:
        raise UsageError("found too little text in the local Python installation to build a demo corpus")

    n_val = min(MAX_VAL_DOCS, max(1, len(docs) // 20))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    os.makedirs(data_dir, exist_ok=True)
    marker_path = os.path.join(data_dir, DEMO_MARKER)
    if os.path.exists(marker_path):
        os.remove(marker_path)       # the corpus is incomplete until the new marker is written
    for name in existing:            # only ever the shards of a previous demo corpus (checked above)
        os.remove(os.path.join(data_dir, name))
    shards = []
    for i in range(0, len(train_docs), DOCS_PER_TRAIN_SHARD):
        name = shard_name(len(shards))
        _write_parquet(train_docs[i:i + DOCS_PER_TRAIN_SHARD], os.path.join(data_dir, name))
        shards.append(name)
    _write_parquet(val_docs, val_shard_path(data_dir))
    shards.append(shard_name(VAL_SHARD_INDEX))

    summary = {
        "kind": "demo",
        "version": DEMO_VERSION,
        "seed": DEMO_SEED,
        "docs": len(docs),
        "train_docs": len(train_docs),
        "val_docs": len(val_docs),
        "text_bytes": sum(len(d.encode("utf-8", "replace")) for d in docs),
        "disk_bytes": sum(os.path.getsize(os.path.join(data_dir, n)) for n in shards),
        "shards": shards,
        "build_seconds": round(time.time() - start, 2),
        "sources": _source_roots(),
    }
    tmp = f"{marker_path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker_path)
    summary["reused"] = False
    return summary


# ===================================================================================================================
# CLI

def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not a number")


def build_parser():
    parser = ArgumentParser(prog="python -m nanochat.dataset",
                            description="Download FineWeb-EDU shards or build the offline demo corpus.")
    parser.add_argument("-n", "--num-files", "--num_files", type=int, default=None,
                        help=f"download the first N training shards (plus validation shard {VAL_SHARD_INDEX}); -1 = all")
    parser.add_argument("-w", "--num-workers", "--num_workers", type=int, default=4, help="parallel downloads")
    parser.add_argument("--base-url", "--base_url", default=None,
                        help="where shards are fetched from (default: $NANOCHAT_DATA_URL or the FineWeb-EDU repo)")
    parser.add_argument("--attempts", type=int, default=5, help="tries per shard before giving up")
    parser.add_argument("--demo", action="store_true", help="build the offline demo corpus instead of downloading")
    parser.add_argument("--identity", action="store_true",
                        help=f"download upstream's identity conversations to $NANOCHAT_BASE_DIR (URL: "
                             f"${IDENTITY_URL_ENV} or upstream's); alone or with -n")
    parser.add_argument("--force", action="store_true", help="with --demo: rebuild even if already built")
    parser.add_argument("--max-mb", "--max_mb", type=float, default=None,
                        help=f"with --demo: cap on corpus text in MB (default $NANOCHAT_DEMO_MAX_MB or {DEFAULT_DEMO_MAX_MB:g})")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    data_dir = get_data_dir()

    if args.demo:
        if args.num_files is not None:
            raise UsageError("use either --demo or -n N, not both")
        max_mb = args.max_mb if args.max_mb is not None else _env_float("NANOCHAT_DEMO_MAX_MB", DEFAULT_DEMO_MAX_MB)
        if max_mb <= 0:
            raise UsageError(f"--max-mb must be positive, got {max_mb:g}")
        summary = build_demo_corpus(data_dir, max_mb=max_mb, force=args.force)
        verb = "already built" if summary["reused"] else f"built in {summary['build_seconds']:.1f}s"
        n_train = len(summary["shards"]) - 1
        print(f"Demo corpus {verb}: {summary['docs']:,} docs, {summary['text_bytes'] / 1e6:.1f} MB of text "
              f"({summary['disk_bytes'] / 1e6:.1f} MB on disk), {n_train} train shard(s) + validation shard "
              f"{shard_name(VAL_SHARD_INDEX)} in {data_dir}", flush=True)
        return 0

    if args.identity:
        if args.demo:
            raise UsageError("use either --demo (offline, bundled identity set) or --identity, not both")
        rc = _download_identity_cli(args)
        if rc or args.num_files is None:
            return rc
    if args.num_files is None:
        raise UsageError("say how many shards to download with -n N (e.g. -n 8), or build the offline corpus with --demo")
    n = args.num_files
    if n == -1:
        n = VAL_SHARD_INDEX
    if not 1 <= n <= VAL_SHARD_INDEX:
        raise UsageError(f"-n must be between 1 and {VAL_SHARD_INDEX} training shards, or -1 for all; got {args.num_files}")
    if args.num_workers < 1:
        raise UsageError(f"-w must be at least 1, got {args.num_workers}")
    if args.attempts < 1:
        raise UsageError(f"--attempts must be at least 1, got {args.attempts}")
    base_url = args.base_url or os.environ.get("NANOCHAT_DATA_URL") or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise UsageError(f"base URL must start with http:// or https://, got {base_url!r}")
    backoff = _env_float("NANOCHAT_DOWNLOAD_BACKOFF", 2.0)
    timeout = _env_float("NANOCHAT_DOWNLOAD_TIMEOUT", 60.0)
    indices = list(range(n)) + [VAL_SHARD_INDEX]
    print(f"Downloading {n} training shard(s) shard_00000..{shard_name(n - 1)} and validation shard "
          f"{shard_name(VAL_SHARD_INDEX)} from {base_url} to {data_dir} with {args.num_workers} worker(s)", flush=True)
    failed = download_shards(indices, data_dir, base_url, workers=args.num_workers, attempts=args.attempts,
                             backoff=backoff, timeout=timeout)
    return 1 if failed else 0


def _download_identity_cli(args) -> int:
    from nanochat.tasks.identity import downloaded_identity_file
    if args.attempts < 1:
        raise UsageError(f"--attempts must be at least 1, got {args.attempts}")
    url = os.environ.get(IDENTITY_URL_ENV) or IDENTITY_URL
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"{IDENTITY_URL_ENV} must start with http:// or https://, got {url!r}")
    dest = downloaded_identity_file()
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        n = download_identity(dest, url, attempts=args.attempts, backoff=_env_float("NANOCHAT_DOWNLOAD_BACKOFF", 2.0),
                              timeout=_env_float("NANOCHAT_DOWNLOAD_TIMEOUT", 60.0))
    except DownloadFailure as exc:
        print(f"FAILED {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"Identity conversations: {n:,} in {dest}", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
