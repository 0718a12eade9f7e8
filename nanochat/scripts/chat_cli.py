"""Chat with a trained model in the terminal: `-p PROMPT` answers once, otherwise an interactive conversation
(`quit` or Ctrl-D leaves, `clear` starts over). Uses the KV-cache engine with the calculator tool."""
import sys

from nanochat.checkpoint import load_model
from nanochat.common import ArgumentParser, compute_init, run_main
from nanochat.engine import Engine


def build_parser():
    p = ArgumentParser(prog="python -m nanochat.scripts.chat_cli", description=__doc__)
    p.add_argument("-i", "--source", choices=["sft", "mid"], default="sft", help="which chat model")
    p.add_argument("-g", "--model_tag", "--model-tag", dest="model_tag", default=None)
    p.add_argument("-s", "--step", type=int, default=None)
    p.add_argument("-p", "--prompt", default="", help="answer this prompt once and exit")
    p.add_argument("-t", "--temperature", type=float, default=0.6)
    p.add_argument("-k", "--top_k", type=int, default=50)
    p.add_argument("--max_tokens", type=int, default=256)
    p.add_argument("--device_type", default="")
    return p


def reply(engine, tokenizer, conversation_ids, args) -> list:
    """Stream the assistant's reply to stdout; returns its token ids (ending with <|assistant_end|>)."""
    assistant_end = tokenizer.encode_special("<|assistant_end|>")
    out = []
    for column, _ in engine.generate(conversation_ids, num_samples=1, max_tokens=args.max_tokens,
                                     temperature=args.temperature, top_k=args.top_k):
        token = column[0]
        out.append(token)
        if token in (assistant_end, tokenizer.get_bos_token_id()):
            break
        print(tokenizer.decode([token]), end="", flush=True)
    print(flush=True)
    if not out or out[-1] != assistant_end:
        out.append(assistant_end)
    return out


def main(argv=None):
    args = build_parser().parse_args(argv)
    _, _, _, _, device = compute_init(args.device_type or None)
    model, tokenizer, meta = load_model(args.source, device, phase="eval", model_tag=args.model_tag, step=args.step)
    engine = Engine(model, tokenizer)
    sp = tokenizer.encode_special
    start = [tokenizer.get_bos_token_id()]

    def turn(ids, text):
        ids = ids + [sp("<|user_start|>"), *tokenizer.encode(text), sp("<|user_end|>"), sp("<|assistant_start|>")]
        return ids + reply(engine, tokenizer, ids, args)

    if args.prompt:
        turn(start, args.prompt)
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
        print("Assistant: ", end="", flush=True)
        ids = turn(ids, text)


if __name__ == "__main__":
    run_main(main)
