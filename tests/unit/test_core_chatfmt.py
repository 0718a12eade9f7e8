"""core.chatfmt: a streamed reply split into text / calculator call / calculator result, also mid-stream."""
from nanotui.core.chatfmt import segments


def test_calls_and_results_become_their_own_segments():
    reply = "Sure. <|python_start|>12+30<|python_end|><|output_start|>42<|output_end|> so 42."
    assert segments(reply) == [("text", "Sure. "), ("calc", "12+30"), ("result", "42"), ("text", " so 42.")]


def test_unfinished_call_runs_to_the_end_and_stray_closers_vanish():
    assert segments("a<|python_start|>1+") == [("text", "a"), ("calc", "1+")]
    assert segments("a<|output_end|>b") == [("text", "ab")]
    assert segments("") == []
    assert segments("<|python_start|><|python_end|>x") == [("calc", ""), ("text", "x")]
