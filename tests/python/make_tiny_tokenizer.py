"""Writes a tiny HuggingFace tokenizer (tokenizer.json, tokenizer_config.json,
special_tokens_map.json) into a HuggingFace cache, as the cached snapshot of the repo
`dujiang/tiny-tokenizer`, so that with HF_HOME=THAT_DIR and HF_HUB_OFFLINE=1
`AutoTokenizer.from_pretrained("dujiang/tiny-tokenizer")` loads it without any network.

AIPerf (tests/aiperf.rs) needs a HuggingFace tokenizer to synthesize prompts and count
tokens, and nothing may be downloaded while the tests run, so the test writes this one itself
with the `tokenizers` package (which AIPerf's own dependencies bring), as the llama.cpp test
writes its own GGUF model. It is a byte-level BPE (GPT-2's shape: any text encodes, decoding
gives the text back) trained on a fixed built-in text, so the same directory comes out every
time. That text repeats the words a simulated dujiang backend streams (src/serve/stream.rs:
" the", " river", ",", ...) often enough that each of them is one token: AIPerf's own count
of a stream's output tokens then equals the tokens dujiang sent.

It goes into a cache rather than a plain directory because AIPerf 0.13.0 in offline mode
looks every tokenizer name up as a cached repo (`snapshot_download(local_files_only=True)`),
which refuses a filesystem path; and offline mode is what makes a hidden download fail at
once instead of hanging.

Usage: make_tiny_tokenizer.py HF_HOME
"""

import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS = "<|endoftext|>"

REPO = "dujiang/tiny-tokenizer"
# The snapshot's revision: any 40 hex digits, fixed so the same cache comes out every time.
REVISION = "0" * 40

# The simulated backends' word cycle, as src/serve/stream.rs streams it.
STREAM = " the river splits into two channels at the weir, and water flows on evenly."

# Some ordinary English besides, so prompts synthesized from AIPerf's corpus are words and
# byte pieces, not only single bytes.
ENGLISH = (
    "Why does the Dujiangyan weir split the river in two? The inner river feeds the "
    "fields of the plain and the outer river carries the flood away. In spring the fish "
    "mouth divides the water, and in summer the flying sand spillway returns the excess. "
    "Thou art more lovely and more temperate; rough winds do shake the darling buds of "
    "May, and summer's lease hath all too short a date. What is your name, my lord, and "
    "what do you say of this? I will go with you to the king, for he shall know it all. "
)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    repo_dir = os.path.join(sys.argv[1], "hub", "models--" + REPO.replace("/", "--"))
    out = os.path.join(repo_dir, "snapshots", REVISION)
    os.makedirs(out, exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(REVISION)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        min_frequency=2,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([STREAM * 50, ENGLISH * 20], trainer=trainer)

    # The property the test relies on: one token per streamed word.
    words = [" the", " river", " splits", " into", " two", " channels", " at", " weir", ","]
    words += [" and", " water", " flows", " on", " evenly", "."]
    for w in words:
        ids = tok.encode(w).ids
        if len(ids) != 1:
            print(f"make_tiny_tokenizer.py: {w!r} is {len(ids)} tokens, not 1", file=sys.stderr)
            return 1
    if len(tok.encode(STREAM * 3).ids) != 48:
        print("make_tiny_tokenizer.py: three word cycles are not 48 tokens", file=sys.stderr)
        return 1

    tok.save(os.path.join(out, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "model_max_length": 1 << 20,
        "clean_up_tokenization_spaces": False,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}, f, indent=2)
    print(REPO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
