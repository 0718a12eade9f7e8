"""Hugging Face Hub parquet download (plain HTTP via requests + pyarrow), cached under $BASE/hf_cache."""
from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import requests

from nanochat.common import UsageError, get_base_dir, one_line

DEFAULT_ENDPOINT = "https://huggingface.co"


class DatasetUnavailable(UsageError):
    """A dataset could not be downloaded (offline, or the Hub refused); one clear line with the way out."""
    def __init__(self, dataset: str, reason: str):
        super().__init__(f"cannot download {dataset}: {one_line(reason)}; run with --demo for offline synthetic "
                         f"data, or connect to the network")


def hub_endpoint() -> str:
    return os.environ.get("NANOCHAT_HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def _reason(exc: Exception) -> str:
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"HTTP {exc.response.status_code} from {exc.response.url}"
    if isinstance(exc, requests.ConnectionError):
        return "no connection to the server"
    if isinstance(exc, requests.Timeout):
        return "the server did not answer in time"
    return f"{type(exc).__name__}: {exc}"


def _download(url: str, dest: str, dataset: str):
    tmp = dest + ".part"
    try:
        with requests.get(url, stream=True, timeout=60) as r:
            r.raise_for_status()
            with open(tmp, "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)
    except (requests.RequestException, OSError) as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise DatasetUnavailable(dataset, _reason(exc)) from None
    os.replace(tmp, dest)


def cache_dir(repo: str, config: str, split: str) -> str:
    return os.path.join(get_base_dir(), "hf_cache", repo.replace("/", "__"), config, split)


def parquet_files(repo: str, config: str, split: str) -> list[str]:
    """Local parquet files of one (repo, config, split); downloaded once through the Hub's parquet listing API
    `{endpoint}/api/datasets/{repo}/parquet/{config}/{split}` (a JSON list of file URLs)."""
    directory = cache_dir(repo, config, split)
    manifest = os.path.join(directory, "files.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            names = json.load(f)
        paths = [os.path.join(directory, n) for n in names]
        if all(os.path.exists(p) for p in paths):
            return paths
    dataset = f"{repo} ({config}/{split})"
    api = f"{hub_endpoint()}/api/datasets/{repo}/parquet/{config}/{split}"
    try:
        r = requests.get(api, timeout=30)
        r.raise_for_status()
        urls = r.json()
    except (requests.RequestException, ValueError) as exc:
        raise DatasetUnavailable(dataset, _reason(exc)) from None
    if not isinstance(urls, list) or not urls:
        raise DatasetUnavailable(dataset, f"no parquet files listed at {api}")
    os.makedirs(directory, exist_ok=True)
    names = []
    for i, url in enumerate(urls):
        name = f"{i:04d}.parquet"
        _download(url, os.path.join(directory, name), dataset)
        names.append(name)
    with open(manifest + ".tmp", "w") as f:
        json.dump(names, f)
    os.replace(manifest + ".tmp", manifest)
    return [os.path.join(directory, n) for n in names]


def load_rows(repo: str, config: str, split: str, shuffle_seed: int | None = None) -> list[dict]:
    """All rows of one (repo, config, split) in file order, or shuffled as upstream's `load_dataset(...).shuffle(
    seed=shuffle_seed)` orders them (see `shuffled`)."""
    rows = []
    for path in parquet_files(repo, config, split):
        rows.extend(pq.read_table(path).to_pylist())
    return rows if shuffle_seed is None else shuffled(rows, shuffle_seed)


UPSTREAM_SHUFFLE_SEED = 42  # upstream shuffles every hub task with this seed before any slicing


def shuffled(rows: list, seed: int) -> list:
    """rows in the order of Hugging Face `datasets.Dataset.shuffle(seed=seed)`: the permutation drawn by numpy's
    `default_rng(seed).permutation(len(rows))`, row k of the result being rows[permutation[k]]."""
    import numpy as np
    return [rows[i] for i in np.random.default_rng(seed).permutation(len(rows)).tolist()]


def cached_file(url: str, name: str, dataset: str) -> str:
    """A plain file (e.g. a word list) downloaded once into $BASE/hf_cache/files/."""
    directory = os.path.join(get_base_dir(), "hf_cache", "files")
    os.makedirs(directory, exist_ok=True)
    dest = os.path.join(directory, name)
    if not os.path.exists(dest):
        _download(url, dest, dataset)
    return dest
