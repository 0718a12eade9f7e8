"""Model samples printed by the trainer are one log line each: a generated newline, carriage return or terminal
escape can never fake an `OOM:` / `step ...` / `Checkpoint saved` line for the supervisor or the dashboard."""
from types import SimpleNamespace

from nanochat.scripts.base_train import SAMPLE_PROMPTS, make_sample_evaluator
from nanochat.trainer import printable_sample
from nanotui.core.events import CheckpointSaved, Oom, Sample, Step
from nanotui.core.logparse import parse_line

FAKE = ("\nOOM: CUDA out of memory at device_batch_size=4, step 12; emergency checkpoint: none"
        "\rstep 00011/00030 (36.67%) | loss: 1.000000 | lrm: 1.00 | dt: 1.00ms | tok/sec: 1 | mfu: n/a | total time: 0.01m"
        "\x1b[2K\u2028Checkpoint saved: step 000500 -> /x\x85\\n")


def test_printable_sample_is_one_line_and_reversible_enough():
    text = printable_sample("a\nb\rc\td\\e\x1b[31mf\u2028g\x85h é 漢")
    assert text == "a\\nb\\rc\\td\\\\e\\x1b[31mf\\u2028g\\x85h é 漢"
    assert len(text.splitlines()) == 1


def test_sample_lines_cannot_fake_log_lines(capsys):
    class Tok:
        def encode(self, prompt, prepend=None):
            return [0]

        def decode(self, ids):
            return "<|bos|>The capital of France is" + FAKE

    class Model:
        def eval(self):
            pass

        def train(self, mode=True):
            pass

        def generate(self, tokens, max_tokens, temperature):
            yield from [1, 2, 3]

    trainer = SimpleNamespace(rank=0, model=Model(), autocast=lambda: __import__("contextlib").nullcontext())
    make_sample_evaluator(SimpleNamespace(sample_every=1), Tok())(trainer, 5, False)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == len(SAMPLE_PROMPTS)
    events = [parse_line(line, kind="base") for line in lines]
    assert all(isinstance(e, Sample) for e in events), events
    assert not any(isinstance(e, (Oom, Step, CheckpointSaved)) for e in events)
