"""Tokenizer throughput: evaclip's CLIPTokenizer vs the reference (open_clip's copy of the OpenAI tokenizer).

Both tokenize the same 20,000 synthetic captions (seeded; ~85% plain ASCII English, ~15% with accents, curly
quotes, emoji, CJK or HTML entities) into a [20000, 77] LongTensor. Prints texts/s for each (median over
repeats, caches warm after the first pass), the first cold pass, and the ratio. The reference is loaded from
the installed open_clip_torch wheel by file path (its package __init__ would import torchvision).

    .venv/bin/python benchmarks/tokenizer.py [--n 20000] [--repeats 5]
"""
import argparse
import importlib.util
import random
import statistics
import time

import torch

from evaclip.tokenizer import CLIPTokenizer

SUBJECTS = ["dog", "cat", "man", "woman", "child", "car", "bird", "horse", "train", "pizza", "laptop", "bicycle",
            "boat", "giraffe", "elephant", "kitchen", "street", "beach", "mountain", "building", "tree", "table"]
ADJECTIVES = ["small", "large", "red", "blue", "old", "young", "happy", "wooden", "shiny", "dark", "bright",
              "busy", "empty", "colorful", "black and white", "vintage", "modern", "snowy", "sunny"]
VERBS = ["sitting on", "standing next to", "running across", "looking at", "parked near", "lying under",
         "flying over", "holding", "riding", "eating", "walking down", "in front of"]
PLACES = ["the grass", "a wooden table", "the road", "a city street", "the beach", "a snowy field", "the sofa",
          "a kitchen counter", "the river", "a parking lot", "the park", "an old building"]
STARTS = ["A photo of", "An image of", "", "Close-up of", "Picture of", "Stock photo:", "There is"]
EXTRAS = ["café", "naïve", "“quoted”", "it’s", "🐶", "🌅", "東京", "北京の夜", "&amp; more", "Zoë's", "½ price",
          "résumé", "Ünïcödé", "😀😀", "São Paulo", "ﬁne", "Ｗｉｄｅ"]


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Deterministic, varied image captions (some with non-ASCII text)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(STARTS), rng.choice(["a", "the", "two", "some"]), rng.choice(ADJECTIVES),
                 rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(PLACES)]
        if rng.random() < 0.3:
            words += ["with", rng.choice(["a", "its"]), rng.choice(ADJECTIVES), rng.choice(SUBJECTS)]
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words) + 1), rng.choice(EXTRAS))
        if rng.random() < 0.2:
            words.append(f"in {rng.randint(1950, 2024)}")
        caption = " ".join(w for w in words if w) + rng.choice(["", ".", "!", " ..."])
        out.append(caption)
    return out


def load_reference():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("open_clip_torch is not installed: pip install --no-deps open_clip_torch==3.3.0")
    path = f"{list(spec.submodule_search_locations)[0]}/tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_reference_clip_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def measure(fn, captions: list[str], repeats: int) -> tuple[float, float, torch.Tensor]:
    """(cold texts/s, median warm texts/s, output)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = fn(captions, context_length=77)
        times.append(time.perf_counter() - start)
    n = len(captions)
    return n / times[0], n / statistics.median(times[1:]), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    captions = make_captions(args.n)
    non_ascii = sum(not c.isascii() for c in captions)
    print(f"{len(captions)} captions ({non_ascii} with non-ASCII characters), context length 77")
    ref_cold, ref_warm, ref_out = measure(load_reference(), captions, args.repeats)
    our_cold, our_warm, our_out = measure(CLIPTokenizer(), captions, args.repeats)
    if not torch.equal(ref_out, our_out):
        raise SystemExit("outputs differ from the reference: the benchmark is void")
    print(f"reference (open_clip): {ref_warm:10.0f} texts/s warm (median of {args.repeats}), {ref_cold:10.0f} cold")
    print(f"evaclip:               {our_warm:10.0f} texts/s warm (median of {args.repeats}), {our_cold:10.0f} cold")
    print(f"speed-up: {our_warm / ref_warm:.2f}x warm, {our_cold / ref_cold:.2f}x cold (identical outputs)")
    # Where the gain comes from: plain ASCII text skips ftfy (provably a no-op there); other text pays for it.
    for label, subset in [("ASCII-only", [c for c in captions if c.isascii()]),
                          ("non-ASCII", [c for c in captions if not c.isascii()])]:
        _, ref_rate, _ = measure(load_reference(), subset, args.repeats)
        _, our_rate, _ = measure(CLIPTokenizer(), subset, args.repeats)
        print(f"  {label:10s} captions: evaclip {our_rate:9.0f}/s, reference {ref_rate:9.0f}/s, "
              f"{our_rate / ref_rate:.2f}x")


if __name__ == "__main__":
    main()
