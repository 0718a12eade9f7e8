"""chat_server without a server: upstream's validation order and messages, and how a conversation is tokenized
(the calculator markers of an assistant turn become special tokens again; a user's never do)."""
import json
import sys
from pathlib import Path

import pytest

from nanochat.chat_server import BadRequest, conversation_tokens, parse_request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from pipeline_fixtures import make_tokenizer  # noqa: E402


def test_parse_accepts_upstream_requests():
    req = parse_request(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "hello"},
                                                 {"role": "user", "content": "2+2?"}],
                                    "temperature": 0, "top_k": 200, "max_tokens": 4096, "extra": 1}).encode())
    assert req.messages[-1] == ("user", "2+2?") and (req.temperature, req.top_k, req.max_tokens) == (0.0, 200, 4096)
    assert parse_request(b'{"messages": [{"role": "user", "content": "x"}]}').temperature is None


def test_upstream_check_order():
    # empty content is reported before a bad role, as upstream does
    with pytest.raises(BadRequest, match="Message 1 has empty content") as e:
        parse_request(json.dumps({"messages": [{"role": "system", "content": "x"},
                                               {"role": "user", "content": ""}]}).encode())
    assert e.value.status == 400


def test_tool_markers_are_special_only_in_assistant_turns(tmp_path):
    tok = make_tokenizer(tmp_path)
    sp = tok.encode_special
    marked = "<|python_start|>12+30<|python_end|><|output_start|>42<|output_end|>"
    ids = conversation_tokens(tok, [("user", marked), ("assistant", "ok " + marked)])
    user_part = ids[ids.index(sp("<|user_start|>")): ids.index(sp("<|user_end|>"))]
    assert sp("<|python_start|>") not in user_part and tok.decode(user_part[1:]) == marked
    reply = ids[ids.index(sp("<|assistant_start|>")) + 1: ids.index(sp("<|assistant_end|>"))]
    assert [t for t in reply if t in (sp("<|python_start|>"), sp("<|python_end|>"), sp("<|output_start|>"),
                                       sp("<|output_end|>"))] == [sp("<|python_start|>"), sp("<|python_end|>"),
                                                                  sp("<|output_start|>"), sp("<|output_end|>")]
    assert tok.decode(reply) == "ok " + marked
    assert ids[0] == tok.get_bos_token_id() and ids[-1] == sp("<|assistant_start|>")
