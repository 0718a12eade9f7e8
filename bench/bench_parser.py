"""Benchmark: log-parser throughput (step lines/s) on a generated 250,000-step log, fed in 64 KiB chunks."""
import statistics
import sys
import time

from nanotui.core.logparse import LogParser

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 250_000


def make_log(steps: int) -> str:
    head = "Total batch size 524,288 => gradient accumulation steps: 128\n"
    return head + "".join(
        f"step {i:05d}/{steps} ({100 * i / steps:.2f}%) | loss: 3.456789 | lrm: 1.00 | dt: 1234.56ms"
        f" | tok/sec: 424,672 | mfu: 45.67 | total time: 12.34m\n"
        for i in range(steps)
    )


def main() -> None:
    text = make_log(STEPS)
    rates = []
    for _ in range(5):
        parser = LogParser(kind="base")
        t0 = time.perf_counter()
        n = sum(len(parser.feed(text[o:o + 65536])) for o in range(0, len(text), 65536))
        rates.append((n - 1) / (time.perf_counter() - t0))
    print(f"parser: {STEPS:,} step lines, 5 runs, median {statistics.median(rates):,.0f} lines/s "
          f"(min {min(rates):,.0f}, max {max(rates):,.0f})")


if __name__ == "__main__":
    main()
