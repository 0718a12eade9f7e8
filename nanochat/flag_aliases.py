"""The seed's setting names as aliases of the trainer's flags, and "did you mean --x?" for unknown flags.

    --ckpt_every=N   = --save_every=N
    --resume_step=S  = --resume_from_step=S; -1 = the newest checkpoint of this run (`latest`: none -> fresh start)
    --resume_tag=T   = --model_tag=T (the checkpoint directory to resume from) and, without a resume step,
                       --resume_from_step=latest; an empty T means "the stage's own tag" and changes nothing

An alias applies only where the parser has its target flag (base_train, mid_train, chat_sft). An alias next to its
target with a different value is a UsageError (one line), as is an unknown flag, which names the closest known one.
"""
from __future__ import annotations

import difflib
import re

from nanochat.common import UsageError

ALIASES = {"ckpt_every": "save_every", "resume_step": "resume_from_step", "resume_tag": "model_tag"}


def _known(parser) -> set:
    return {s[2:] for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _split(argv: list) -> list:
    """[(name|None, value|None, token_count, original tokens)] over normalised argv (`--a_b=1`, `--a_b 1`)."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok[2:].partition("=")
            if eq:
                out.append((name, value, [tok]))
            elif name in ALIASES and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                out.append((name, argv[i + 1], argv[i:i + 2]))
                i += 1
            else:
                out.append((name, None, [tok]))
        else:
            out.append((None, None, [tok]))
        i += 1
    return out


def apply(argv: list, parser) -> list:
    """argv (already normalised to underscores) with every alias the parser supports rewritten to its target."""
    known = _known(parser)
    items = _split(list(argv))
    given = {name: value for name, value, _ in items if name}
    out = []
    for name, value, toks in items:
        target = ALIASES.get(name) if name and name not in known else None
        if target is None or target not in known:
            out.extend(toks)
            continue
        if value is None:
            raise UsageError(f"--{name} needs a value (--{name}=VALUE)")
        value = value.strip()
        if name == "resume_step":
            value = "latest" if value == "-1" else value
        if name == "resume_tag":
            if value == "":
                continue  # the seed's resume_tag="" = the stage's own tag
            if "resume_from_step" not in given and "resume_step" not in given:
                out.append("--resume_from_step=latest")
        theirs = given.get(target)
        if theirs is not None and theirs.strip() != value:
            raise UsageError(f"--{name}={value} and --{target}={theirs} disagree; give one of them")
        out.append(f"--{target}={value}")
    return out


def did_you_mean(message: str, parser) -> str:
    """argparse's error message with the closest known flag named for the first unrecognized one."""
    m = re.search(r"unrecognized arguments: (\S+)", message)
    if not m or not m.group(1).startswith("--"):
        return message
    name = m.group(1)[2:].split("=", 1)[0].replace("-", "_")
    candidates = sorted(_known(parser) | {a for a, t in ALIASES.items() if t in _known(parser)})
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if not close:
        return message
    return f"{message}; did you mean --{close[0]}?"
