"""Chat with a trained model in the terminal: `-p PROMPT` answers once, otherwise an interactive conversation
(`quit` or Ctrl-D leaves, `clear` starts over). Uses the KV-cache engine with the calculator tool."""

from nanochat.checkpoint import check_run_id, load_model, run_id_from
from nanochat.common import ArgumentParser, UsageError, compute_init, eval_autocast, run_main, terminal_text
from nanochat.engine import Engine, context_limit
from nanochat.tokenizer import TextStream
from nanochat.trainer import nonnegative_float, nonnegative_int, positive_int


def build_parser():
    p = ArgumentParser(prog="python -m nanochat.scripts.chat_cli", description=__doc__)
    p.add_argument("-i", "--source", choices=["sft", "mid"], default="sft", help="which chat model")
    p.add_argument("-g", "--model_tag", "--model-tag", dest="model_tag", default=None)
    p.add_argument("-s", "--step", type=nonnegative_int, default=None)
    p.add_argument("--run_id", type=check_run_id, default=None,
                   help="chat with this run's newest checkpoint (default: $NANOCHAT_RUN_ID; unset: the newest of any)")
    p.add_argument("-p", "--prompt", default=None, help="answer this prompt once and exit")
    p.add_argument("-t", "--temperature", type=nonnegative_float, default=0.6, help="0 = greedy")
    p.add_argument("-k", "--top_k", type=positive_int, default=50)
    p.add_argument("--max_tokens", type=positive_int, default=256)
    p.add_argument("--device_type", default="")
    return p


def reply(engine, tokenizer, conversation_ids, args, max_tokens=None) -> list:
    """Stream the assistant's reply to stdout, whole characters only and no terminal control character; returns its
    token ids (ending with <|assistant_end|>)."""
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    out = []
    text = TextStream(tokenizer)
    for column, _ in engine.generate(conversation_ids, num_samples=1, max_tokens=max_tokens or args.max_tokens,
                                     temperature=args.temperature, top_k=args.top_k):
        token = column[0]
        out.append(token)
        if token in (assistant_end, tokenizer.get_bos_token_id()):
            break
        piece = text.push(token)
        if piece:
            print(terminal_text(piece), end="", flush=True)
    print(flush=True)
    if not out or out[-1] != assistant_end:
        out.append(assistant_end)
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("-p needs a non-empty prompt, e.g. -p 'Why is the sky blue?' (leave -p out to chat)")
    _, _, _, _, device = compute_init(args.device_type or None)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step,
                                        run_id=run_id_from(args.run_id))
    engine = Engine(model, tokenizer)
    sp = tokenizer.encode_special
    start = [tokenizer.get_bos_token_id()]

    limit = context_limit(model)

    def turn(ids, text, label=""):
        """The conversation after one exchange, or None when the message does not fit in the context."""
        ids = ids + [sp("<|user_start|>"), *tokenizer.encode(text), sp("<|user_end|>"), sp("<|assistant_start|>")]
        room = limit - len(ids)
        if room < 1:
            return None
        print(label, end="", flush=True)
        with eval_autocast(device):
            return ids + reply(engine, tokenizer, ids, args, max_tokens=min(args.max_tokens, room))

    if args.prompt is not None:
        try:
            done = turn(start, args.prompt)
        except KeyboardInterrupt:
            print(flush=True)
            return 130
        if done is None:
            raise UsageError(f"the prompt is longer than this model's context of {limit} tokens; shorten it")
        return 0
    print(f"nanochat ({args.source}, step {meta.get('step')}) — type 'quit' to leave, 'clear' to start over")
    ids = list(start)
    while True:
        try:
            text = input("\nUser: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text.lower() in ("quit", "exit"):
            return 0
        if text.lower() == "clear":
            ids = list(start)
            continue
        if not text:
            continue
        try:
            after = turn(ids, text, label="Assistant: ")
        except KeyboardInterrupt:  # Ctrl-C stops this reply; the conversation goes on without it
            print("\n(reply interrupted)", flush=True)
            continue
        if after is None:
            print(f"(that does not fit in the model's context of {limit} tokens; type 'clear' to start over "
                  f"or write less)", flush=True)
            continue
        ids = after


if __name__ == "__main__":
    run_main(main)
